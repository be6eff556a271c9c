"""Learning-rate schedules tied to the training budget.

The papers' schedules count steps (Instant-NGP: decay from step 10,000 on; vanilla NeRF: a
tenfold fall over 250,000 steps), which a CPU run of a few minutes never reaches: the rate then
stays at its peak to the end, and the last minutes are spent bouncing around a minimum. A
budget schedule expresses warm-up and decay as fractions of the budget instead: with
``--max-minutes`` the fraction of the training time spent, with ``--max-steps`` the fraction of
the steps done (the larger of the two when both are given).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class BudgetSchedule:
    """factor(progress) for progress in [0, 1]: a linear warm-up from ``start`` to 1 over the
    first ``warmup`` of the budget, the full rate until ``decay_start``, then an exponential fall
    to ``final`` at the end of the budget.

    Measured on lego (Instant-NGP, 1.5 min, one core): an exponential fall over the whole budget
    to 0.05 gave 17.6 dB where the constant rate gave 22.1 dB: a few-minute CPU run is still in
    its fast phase, so the rate may only fall at the end."""

    warmup: float = 0.02
    """fraction of the budget over which the rate rises linearly"""
    decay_start: float = 0.6
    """fraction of the budget after which the rate falls"""
    final: float = 0.1
    """factor of the base rate when the budget is spent"""
    start: float = 0.01
    """factor at progress 0"""

    def __post_init__(self):
        if not (0.0 <= self.warmup <= self.decay_start < 1.0 and 0.0 < self.final <= 1.0 and 0.0 < self.start <= 1.0):
            raise ValueError(f"invalid budget schedule {self}")

    def __call__(self, progress: float) -> float:
        p = min(max(progress, 0.0), 1.0)
        if p < self.warmup:
            return self.start + (1.0 - self.start) * p / self.warmup
        if p < self.decay_start:
            return 1.0
        return math.exp(math.log(self.final) * (p - self.decay_start) / (1.0 - self.decay_start))

    def describe(self) -> dict:
        return {"kind": "budget", **asdict(self)}


def budget_progress(step: int, seconds: float, max_steps: float, max_seconds: float) -> float:
    """The fraction of the budget spent: the larger of steps / max_steps and seconds / max_seconds
    (an infinite budget counts as 0)."""
    by_steps = step / max_steps if math.isfinite(max_steps) and max_steps > 0 else 0.0
    by_time = seconds / max_seconds if math.isfinite(max_seconds) and max_seconds > 0 else 0.0
    return max(by_steps, by_time)
