"""DDIM (Song, Meng & Ermon 2021) on a respaced chain."""

from __future__ import annotations

import math

import torch

from lightning_gcd.samplers.vp_base import VPSampler, VPStep

__all__ = ["DDIM"]


class DDIM(VPSampler):
    """``x_next = sqrt(ā') x0 + sqrt(1 - ā' - σ²) eps + σ z`` with ``σ = η sqrt((1-ā')/(1-ā) (1 - ā/ā'))``.

    Args:
        eta: stochasticity η: 0 deterministic (the default), 1 the DDPM posterior variance.
    """

    name = "ddim"

    def __init__(self, eta: float = 0.0) -> None:
        if eta < 0:
            raise ValueError(f"eta must be >= 0, got {eta}")
        self.eta = float(eta)

    def __repr__(self) -> str:
        return f"DDIM(eta={self.eta})"

    def update(self, x: torch.Tensor, x0: torch.Tensor, eps: torch.Tensor, step: VPStep) -> tuple[torch.Tensor, float]:
        a, a_next = step.alpha_bar, step.alpha_bar_next
        sigma = self.eta * math.sqrt((1.0 - a_next) / (1.0 - a) * (1.0 - a / a_next))
        return math.sqrt(a_next) * x0 + math.sqrt(max(1.0 - a_next - sigma**2, 0.0)) * eps, sigma
