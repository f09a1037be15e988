"""Torus samplers by name, as configs and the command line give them."""

from __future__ import annotations

from lightning_gcd.samplers.base import TorusSampler
from lightning_gcd.samplers.torus_em import TorusEulerMaruyama
from lightning_gcd.samplers.torus_pc import TorusPredictorCorrector

__all__ = ["TORUS_SAMPLERS", "torus_sampler"]

TORUS_SAMPLERS = ("pc", "em")


def torus_sampler(name: str, steps: int, step_lr: float = 1e-5) -> TorusSampler:
    """The sampler called ``name`` ("pc": predictor–corrector, "em": Euler–Maruyama) with ``steps`` levels."""
    if name == "em":
        return TorusEulerMaruyama(steps)
    if name == "pc":
        return TorusPredictorCorrector(steps, step_lr=step_lr)
    raise ValueError(f"unknown torus sampler {name!r}; use 'em' or 'pc'")
