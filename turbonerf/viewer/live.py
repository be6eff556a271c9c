"""The live viewer of a training run: a training-loop callback (:class:`turbonerf.engine.loop.Callback`)
that renders the model between steps, with a bounded share of the time.

Budget: after each step the callback earns ``share / (1 - share)`` seconds of rendering per
second of training since it last rendered (capped at ``max_credit``) and spends it in
:meth:`ViewerServer.render_for`; a chunk may overshoot, and the debt is paid back before the next
render. Over a run, rendering takes at most about ``share`` of the wall time (10% by default).
Frames in progress continue over several steps, so the model may move on between chunks of one
frame (a live view, not an evaluation).
"""

from __future__ import annotations

import math
import time

from turbonerf.engine.loop import StepOutput, mse_to_psnr
from turbonerf.viewer.server import ViewerServer


class LiveViewer:
    """Training-loop callback showing the model in ``viewer`` as it trains.

    Args:
        viewer: a server in driven mode (``ViewerOptions(threaded=False)``).
        share: the largest fraction of wall time that rendering may take.
        refresh_seconds: re-render a still camera this often (the model changed).
        max_credit: rendering seconds that may be saved up.
    """

    def __init__(self, viewer: ViewerServer, share: float = 0.1, refresh_seconds: float = 2.0, max_credit: float = 0.5):
        if not 0.0 < share < 1.0:
            raise ValueError(f"share must be in (0, 1), got {share}")
        self.viewer = viewer
        self.share = share
        self.refresh_seconds = refresh_seconds
        self.max_credit = max_credit
        self.credit = 0.0
        self.render_seconds = 0.0
        self.started = time.perf_counter()
        self.last_end = self.started
        self.last_refresh = self.started
        self.last_text = 0.0

    def before_step(self, step: int) -> None:
        pass

    def after_step(self, step: int, output: StepOutput) -> None:
        now = time.perf_counter()
        self.credit = min(self.credit + (now - self.last_end) * self.share / (1.0 - self.share), self.max_credit)
        if now - self.last_text >= 0.25:
            self.last_text = now
            loss = float(output.loss.detach())
            psnr = mse_to_psnr(output.stats["mse"]) if "mse" in output.stats else math.nan
            self.viewer.set_training_text(f"**step** {step + 1}  \n**loss** {loss:.4f}  \n**PSNR** {psnr:.2f} dB")
        if now - self.last_refresh >= self.refresh_seconds:
            self.last_refresh = now
            self.viewer.refresh_all()
        if self.credit > 0:
            spent = self.viewer.render_for(self.credit)
            self.credit -= spent
            self.render_seconds += spent
        self.last_end = time.perf_counter()

    def render_share(self) -> float:
        """Fraction of the wall time since the start that went to rendering."""
        return self.render_seconds / max(time.perf_counter() - self.started, 1e-9)
