"""Euler–Maruyama on the reverse VE SDE (Song et al. 2021's reverse-diffusion predictor), one call per level."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from lightning_gcd.samplers.torus_base import NoiseFunction, ScoreFunction, TorusSampler

if TYPE_CHECKING:
    from lightning_gcd.diffusion.torus import TorusDiffusion

__all__ = ["TorusEulerMaruyama"]


class TorusEulerMaruyama(TorusSampler):
    """``f ← f + (σ² − σ'²) s(f, σ) + sqrt(σ² − σ'²) z`` per level (no noise after the last level)."""

    name = "em"
    evaluations_per_level = 1

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
        frac, s = score(frac, t, sigma)
        var = (sigma * sigma - sigma_next * sigma_next)[:, None, None]
        frac = frac + var * s
        return frac if last else frac + var.sqrt() * noise()
