"""All the quality numbers of one rendered image against its ground truth, in one place."""

from __future__ import annotations

from torch import Tensor

from turbonerf.eval.lpips import LpipsScorer
from turbonerf.eval.metrics import psnr, ssim

SCORE_KEYS = ("psnr", "ssim", "lpips", "lpips_alex", "lpips_vgg")
"""``lpips`` is LPIPS-Alex (v0.1), the common default in papers; ``lpips_vgg`` is None when not asked for"""


def image_scores(pred: Tensor, target: Tensor, lpips: LpipsScorer, vgg: bool = True) -> dict[str, float | None]:
    """PSNR, SSIM, LPIPS-Alex (as ``lpips`` and ``lpips_alex``) and, with ``vgg``, LPIPS-VGG of
    ``pred`` against ``target`` ([H, W, 3] in [0, 1]); an LPIPS value is None when the weights
    are missing (``lpips.reason`` says why)."""
    alex = lpips.score_alex(pred, target)
    return {
        "psnr": psnr(pred, target),
        "ssim": ssim(pred, target),
        "lpips": alex,
        "lpips_alex": alex,
        "lpips_vgg": lpips.score_vgg(pred, target) if vgg else None,
    }


def mean_scores(rows: list[dict]) -> dict[str, float | None]:
    """Mean of each score over ``rows`` (None when any row lacks it)."""
    out = {}
    for key in SCORE_KEYS:
        vals = [r.get(key) for r in rows]
        out[key] = sum(vals) / len(vals) if vals and all(v is not None for v in vals) else None
    return out
