"""The VP denoiser: the network's output at one step as (x0, eps), and the clamp of x0 to the data's range."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from lightning_gcd.samplers.vp_base import Denoised, VPDenoiser, VPStep

if TYPE_CHECKING:
    from lightning_gcd.diffusion.vp import GaussianDiffusion

__all__ = ["ClippedDenoiser", "NetworkDenoiser"]


class NetworkDenoiser:
    """``model(x_t, t, None, None)`` at the step's network time, split into (x0, eps) by the diffusion's
    prediction kind. A self-conditioned model is given the chain's previous x0 beside ``x_t``.

    Args:
        diffusion: the ``GaussianDiffusion`` (time, model input, conversions).
        model: ``model(x_t, t, cond, cond_keep)``, called without a condition (wrap it in
            ``ClassifierFreeGuidance`` for one).
    """

    def __init__(self, diffusion: GaussianDiffusion, model: Callable[..., torch.Tensor]) -> None:
        self.diffusion = diffusion
        self.model = model

    def __call__(self, x: torch.Tensor, step: VPStep) -> Denoised:
        t = self.diffusion.time(step.index, x.dtype).to(x.device).expand(x.shape[0])  # (B,)
        pred = self.model(self.diffusion.model_input(x, step.x0_previous), t, None, None)
        x0, eps = self.diffusion.split_prediction(pred, x, step.index)
        return Denoised(x0, eps)


class ClippedDenoiser:
    """x0 of ``denoise`` clamped to ``(low, high)`` and eps recomputed from it (the guidance term is kept)."""

    def __init__(self, denoise: VPDenoiser, diffusion: GaussianDiffusion, clip_x0: tuple[float, float]) -> None:
        if not clip_x0[0] < clip_x0[1]:
            raise ValueError(f"clip_x0 must be (low, high) with low < high, got {clip_x0}")
        self.denoise = denoise
        self.diffusion = diffusion
        self.clip_x0 = clip_x0

    def __call__(self, x: torch.Tensor, step: VPStep) -> Denoised:
        out = self.denoise(x, step)
        x0 = out.x0.clamp(*self.clip_x0)
        return Denoised(x0, self.diffusion.eps_from_x0(x, step.index, x0), out.guide)
