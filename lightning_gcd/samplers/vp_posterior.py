"""Diffusion posterior sampling (DPS) for the VP (voxel) samplers, as a hook (``lightning_gcd.samplers.dps``).

The loss of the predicted clean sample (clamped straight-through to the run's ``clip_x0``) is differentiated
with respect to ``x_t`` through the network; its gradient, normalised per sample (ĝ) and times ρ, is added to
the score: every step moves ``x_next`` by ``−β_k ρ ĝ`` with ``β_k = 1 − ā_k/ā_next`` the respaced step's beta
(the DDPM step moves x by β_k times the score). One extra backward pass per step.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from lightning_gcd.samplers.dps import straight_through_clamp, unit_per_sample
from lightning_gcd.samplers.hooks import SamplingHook
from lightning_gcd.samplers.vp_base import Denoised, VPDenoiser, VPRun, VPStep

__all__ = ["VPPosteriorGuidance"]


class VPPosteriorGuidance(SamplingHook):
    """Adds ``β_k ρ ĝ`` of the loss ``loss(x0_hat) -> (B,)`` to each step (module docstring).

    Args:
        loss: the posterior loss of the predicted clean sample (B, C, ...) in model space, one value per sample.
        scale: ρ, the norm of the guidance term of the score (at 0 the term is zero but the backward pass
            still runs: leave the hook out for plain sampling, as the models do).
    """

    def __init__(self, loss: Callable[[torch.Tensor], torch.Tensor], scale: float) -> None:
        if not scale >= 0:
            raise ValueError(f"the posterior guidance scale must be >= 0, got {scale}")
        self.loss = loss
        self.scale = float(scale)

    def wrap(self, denoise: VPDenoiser, run: VPRun) -> VPDenoiser:
        clip_x0 = run.clip_x0

        def guided(x: torch.Tensor, step: VPStep) -> Denoised:
            with torch.enable_grad():
                x_grad = x.detach().requires_grad_(True)
                out = denoise(x_grad, step)
                x0_hat = straight_through_clamp(out.x0, *clip_x0) if clip_x0 is not None else out.x0
                (g,) = torch.autograd.grad(self.loss(x0_hat).sum(), x_grad)
            guide = self.scale * (1.0 - step.alpha_bar / step.alpha_bar_next) * unit_per_sample(g)  # β_k ρ ĝ
            return Denoised(out.x0.detach(), out.eps.detach(), guide)

        return guided
