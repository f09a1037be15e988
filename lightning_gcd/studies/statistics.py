"""Confidence intervals of the rates the studies report (success fractions out of a number of tries)."""

from __future__ import annotations

import math

__all__ = ["wilson_interval"]


def wilson_interval(successes: int, trials: int, z: float = 1.959964) -> tuple[float, float]:
    """The Wilson score interval (default 95%) of a binomial fraction ``successes / trials``; ``(nan, nan)`` for no
    trials. Unlike the normal approximation it stays inside [0, 1] and is informative at 0 or ``trials`` successes,
    which is where rare-hit searches sit."""
    if trials <= 0:
        return float("nan"), float("nan")
    if not 0 <= successes <= trials:
        raise ValueError(f"successes must lie in [0, {trials}], got {successes}")
    p = successes / trials
    z2 = z * z
    centre = (p + z2 / (2 * trials)) / (1 + z2 / trials)
    half = z * math.sqrt(p * (1 - p) / trials + z2 / (4 * trials * trials)) / (1 + z2 / trials)
    return max(0.0, centre - half), min(1.0, centre + half)
