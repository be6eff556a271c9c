"""Checks of command-line options, each failing with one line that names the option."""

from __future__ import annotations

import math

from turbonerf.errors import TurboNerfError


def require_positive(name: str, value: float) -> None:
    """``value`` must be a finite number > 0."""
    if value is None or not math.isfinite(value) or value <= 0:
        raise TurboNerfError(f"{name} must be a positive number, got {value}")


def require_at_least(name: str, value: float, low: float) -> None:
    """``value`` must be a finite number >= ``low``."""
    if value is None or not math.isfinite(value) or value < low:
        raise TurboNerfError(f"{name} must be at least {low:g}, got {value}")
