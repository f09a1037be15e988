"""DiffCSP's predictor–corrector: a Langevin corrector step, then an ancestral predictor step, per level."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from lightning_gcd.samplers.torus_base import NoiseFunction, ScoreFunction, TorusSampler

if TYPE_CHECKING:
    from lightning_gcd.diffusion.torus import TorusDiffusion

__all__ = ["TorusPredictorCorrector"]


class TorusPredictorCorrector(TorusSampler):
    """Per level (Jiao et al. 2023, their sampler with the Langevin corrector first):

    * corrector: ``f ← f + ε s(f, σ) + sqrt(2ε) z`` with ``ε = step_lr (σ / σ_min)²``;
    * predictor: ``f ← f + (σ² − σ'²) s(f, σ) + sqrt(σ'² (σ² − σ'²) / σ²) z``, the variance of the
      Gaussian posterior of the level below.

    No noise at the last level. Two network calls per level. ``step_lr``: DiffCSP uses 1e-5 (5e-7 for
    some data sets).
    """

    name = "pc"
    evaluations_per_level = 2

    def __init__(self, steps: int, step_lr: float = 1e-5) -> None:
        super().__init__(steps)
        if step_lr < 0:
            raise ValueError(f"step_lr must be >= 0, got {step_lr}")
        self.step_lr = float(step_lr)

    def step(
        self,
        frac: torch.Tensor,
        score: ScoreFunction,
        t: float,
        sigma: torch.Tensor,
        sigma_next: torch.Tensor,
        noise: NoiseFunction,
        diffusion: TorusDiffusion,
        last: bool,
    ) -> torch.Tensor:
        size = (self.step_lr * (sigma / diffusion.sigma_min) ** 2)[:, None, None]
        frac, s = score(frac, t, sigma)
        frac = frac + size * s
        if not last:
            frac = frac + (2.0 * size).sqrt() * noise()
        frac, s = score(frac, t, sigma)
        s2, n2 = (sigma * sigma)[:, None, None], (sigma_next * sigma_next)[:, None, None]
        frac = frac + (s2 - n2) * s
        return frac if last else frac + (n2 * (s2 - n2) / s2).sqrt() * noise()
