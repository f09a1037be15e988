"""Euler–Maruyama on the reverse VE SDE of Cartesian positions (Song et al. 2021's reverse-diffusion predictor)."""

from __future__ import annotations

import math

import torch

from lightning_gcd.samplers.cartesian_base import CartesianDenoiser, CartesianRun, CartesianSampler

__all__ = ["CartesianEulerMaruyama"]


class CartesianEulerMaruyama(CartesianSampler):
    """``x ← wrap(x + (σ² − σ'²) s + sqrt(σ² − σ'²) z)`` per level with ``s = −eps / σ`` (exact variance
    increments; no noise after the last level)."""

    name = "em"
    evaluations_per_level = 1

    def step(
        self,
        frac: torch.Tensor,
        denoise: CartesianDenoiser,
        prior: CartesianDenoiser,
        t: float,
        sigma: float,
        sigma_next: float,
        last: bool,
        run: CartesianRun,
    ) -> torch.Tensor:
        eps = denoise(frac, t, sigma)
        var = sigma * sigma - sigma_next * sigma_next
        dx = var * (-eps / sigma)
        if not last:
            dx = dx + math.sqrt(var) * run.noise()
        return run.move(frac, dx)
