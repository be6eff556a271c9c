"""Method name -> (config dataclass, model class). ``turbonerf train --method NAME``."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from turbonerf.methods.r2l import R2L, R2LConfig
from turbonerf.errors import TurboNerfError
from turbonerf.methods.hybrid import Hybrid, HybridConfig
from turbonerf.methods.mobile_r2l import MobileR2L, MobileR2LConfig
from turbonerf.methods.pose2image import Pose2Image, Pose2ImageConfig
from turbonerf.methods.shared_backbone import SharedBackbone, SharedBackboneConfig
from turbonerf.methods.efficient_nerf import EfficientNeRF, EfficientNeRFConfig
from turbonerf.methods.instant_ngp import InstantNGP, InstantNGPConfig
from turbonerf.methods.nerfacto import Nerfacto, NerfactoConfig
from turbonerf.methods.mip_nerf import MipNeRF, MipNeRFConfig
from turbonerf.methods.pixelnerf import PixelNeRF, PixelNeRFConfig
from turbonerf.methods.vanilla_nerf import VanillaNeRF, VanillaNeRFConfig

METHODS: dict[str, tuple[type, type]] = {
    "efficient-nerf": (EfficientNeRFConfig, EfficientNeRF),
    "vanilla-nerf": (VanillaNeRFConfig, VanillaNeRF),
    "instant-ngp": (InstantNGPConfig, InstantNGP),
    "mip-nerf": (MipNeRFConfig, MipNeRF),
    "r2l": (R2LConfig, R2L),
    "nerfacto": (NerfactoConfig, Nerfacto),
    "pixelnerf": (PixelNeRFConfig, PixelNeRF),
    "pose2image": (Pose2ImageConfig, Pose2Image),
    "hybrid": (HybridConfig, Hybrid),
    "shared-backbone": (SharedBackboneConfig, SharedBackbone),
    "mobile-r2l": (MobileR2LConfig, MobileR2L),
}

STUDENT_METHODS = ("r2l", "pose2image", "hybrid", "shared-backbone", "mobile-r2l")
"""methods that only ``turbonerf distill`` trains (from a teacher run), not ``turbonerf train``"""


def method_names() -> list[str]:
    return sorted(METHODS)


def get_method(name: str) -> tuple[type, type]:
    """(ConfigClass, ModelClass) for a method name, or TurboNerfError naming the valid ones."""
    if name not in METHODS:
        raise TurboNerfError(f"unknown method '{name}' (available: {', '.join(method_names())})")
    return METHODS[name]


def config_from_dict(name: str, values: dict[str, Any]):
    """Build the method's config from a dict (e.g. a run's saved config), rejecting unknown keys."""
    cfg_cls, _ = get_method(name)
    known = {f.name for f in dataclasses.fields(cfg_cls)}
    unknown = set(values) - known
    if unknown:
        raise TurboNerfError(f"unknown option(s) for {name}: {', '.join(sorted(unknown))}")
    defaults = cfg_cls()
    for key, value in values.items():
        expected = type(getattr(defaults, key))
        ok = isinstance(value, expected) and not (expected is not bool and isinstance(value, bool))
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            ok = True
        if not ok:
            raise TurboNerfError(f"option '{key}' of {name} must be a {expected.__name__}, got {value!r}")
    return cfg_cls(**values)


def apply_overrides(config, overrides: list[str]):
    """Return ``config`` with ``key=value`` strings applied, each converted to the field's type."""
    fields = {f.name: f for f in dataclasses.fields(config)}
    changes = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in fields:
            raise TurboNerfError(
                f"bad --set '{item}': expected KEY=VALUE with KEY one of {', '.join(sorted(fields))}"
            )
        typ = type(getattr(config, key))
        try:
            if typ is bool:
                if raw.lower() not in ("true", "false", "1", "0"):
                    raise ValueError(raw)
                value = raw.lower() in ("true", "1")
            else:
                value = typ(raw)
        except ValueError:
            raise TurboNerfError(f"bad --set '{item}': '{raw}' is not a valid {typ.__name__}") from None
        if typ in (int, float):
            default = getattr(config, key)
            if not math.isfinite(value):
                raise TurboNerfError(f"bad --set '{item}': must be a finite number")
            if value < 0 <= default:
                raise TurboNerfError(f"bad --set '{item}': must not be negative")
        changes[key] = value
    return dataclasses.replace(config, **changes)
