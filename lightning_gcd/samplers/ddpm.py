"""Ancestral DDPM (Ho et al. 2020) on a respaced chain."""

from __future__ import annotations

import math

import torch

from lightning_gcd.samplers.vp_base import VPSampler, VPStep

__all__ = ["DDPM"]


class DDPM(VPSampler):
    """A draw from the posterior ``q(x_next | x_t, x0)`` of the respaced chain, whose betas are
    ``1 - ā[τ_k]/ā[τ_{k-1}]`` (Nichol & Dhariwal 2021), so any number of steps works."""

    name = "ddpm"

    def update(self, x: torch.Tensor, x0: torch.Tensor, eps: torch.Tensor, step: VPStep) -> tuple[torch.Tensor, float]:
        a, a_next = step.alpha_bar, step.alpha_bar_next
        beta = 1.0 - a / a_next
        coef_x0 = math.sqrt(a_next) * beta / (1.0 - a)
        coef_xt = math.sqrt(1.0 - beta) * (1.0 - a_next) / (1.0 - a)
        return coef_x0 * x0 + coef_xt * x, math.sqrt(beta * (1.0 - a_next) / (1.0 - a))
