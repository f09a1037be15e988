"""Predictor–corrector for Cartesian positions: Langevin corrector steps, then the Euler–Maruyama predictor."""

from __future__ import annotations

import torch

from lightning_gcd.samplers.cartesian_base import CartesianDenoiser, CartesianRun
from lightning_gcd.samplers.cartesian_em import CartesianEulerMaruyama

__all__ = ["CartesianPredictorCorrector"]


class CartesianPredictorCorrector(CartesianEulerMaruyama):
    """Per level (Song et al. 2021): ``corrector_steps`` Langevin steps ``x ← x + ε s + sqrt(2ε) z`` on the
    network alone (guidance applies to the predictor), with the signal-to-noise step rule
    ``ε = 2 (snr |z| / |s|)²`` per structure capped at ``σ²``; the hooks impose again; then the predictor.

    Args:
        steps: noise levels.
        snr: the corrector's signal-to-noise ratio.
        corrector_steps: Langevin steps per level.
    """

    name = "pc"

    def __init__(self, steps: int, snr: float = 0.16, corrector_steps: int = 1) -> None:
        super().__init__(steps)
        if corrector_steps < 0:
            raise ValueError(f"corrector_steps must be >= 0, got {corrector_steps}")
        self.snr = float(snr)
        self.corrector_steps = int(corrector_steps)
        self.evaluations_per_level = 1 + self.corrector_steps

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
        for _ in range(self.corrector_steps):
            score = -prior(frac, t, sigma) / sigma
            z = run.noise()
            grad_norm = score.flatten(1).norm(dim=1)
            noise_norm = z.flatten(1).norm(dim=1)
            size = 2.0 * (self.snr * noise_norm / grad_norm.clamp(min=1e-12)) ** 2
            size = size.clamp(max=sigma * sigma)[:, None, None]
            frac = run.move(frac, size * score + torch.sqrt(2.0 * size) * z)
        frac = run.impose(frac, sigma)
        return super().step(frac, denoise, prior, t, sigma, sigma_next, last, run)
