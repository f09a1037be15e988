"""Diffusion posterior sampling (DPS) for the Cartesian particle samplers, as a hook
(``lightning_gcd.samplers.dps``).

The loss of the denoised positions (Tweedie: ``x − σ eps``) is differentiated with respect to the noisy
positions through the network; the gradient over each structure's Cartesian coordinates, normalised (ĝ) and
times ρ, is added to the score: ``eps ← eps + σ ρ ĝ``, so the predictor moves the atoms by
``−(σ_k² − σ_{k+1}²) ρ ĝ``. Applies to the predictor (a corrector runs on the network alone).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from lightning_gcd.samplers.cartesian_base import CartesianDenoiser, CartesianRun
from lightning_gcd.samplers.dps import unit_per_sample
from lightning_gcd.samplers.hooks import SamplingHook

__all__ = ["CartesianPosteriorGuidance"]


class CartesianPosteriorGuidance(SamplingHook):
    """``eps + σ ρ ĝ`` of the loss ``loss(frac0_hat, numbers, mask, cell) -> (B,)`` (module docstring), e.g.
    a ``PosteriorGuidance``'s ``bind(target)`` (``samplers.dps``).

    Args:
        loss: the posterior loss of the denoised fractional coordinates, one value per structure.
        scale: ρ, the norm of the guidance term of the score.
    """

    def __init__(self, loss: Callable[..., torch.Tensor], scale: float) -> None:
        if not scale >= 0:
            raise ValueError(f"the posterior guidance scale must be >= 0, got {scale}")
        self.loss = loss
        self.scale = float(scale)

    def wrap(self, denoise: CartesianDenoiser, run: CartesianRun) -> CartesianDenoiser:
        def guided(frac: torch.Tensor, t: float, sigma: float) -> torch.Tensor:
            with torch.enable_grad():
                x = frac.detach().requires_grad_(True)
                eps = denoise(x, t, sigma)
                x0 = x - sigma * torch.einsum("bni,bij->bnj", eps, run.inv_cell)  # Tweedie, fractional
                (g_frac,) = torch.autograd.grad(self.loss(x0, run.numbers, run.mask, run.cell).sum(), x)
            # f = r @ cell^-1  ->  dL/dr = dL/df @ cell^-T
            g = torch.einsum("bnj,bij->bni", g_frac, run.inv_cell) * run.mask[..., None].to(frac.dtype)
            return eps.detach() + sigma * self.scale * unit_per_sample(g)

        return guided
