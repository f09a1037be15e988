"""Diffusion posterior sampling (DPS) with a differentiable forward model, for both diffusion models.

Chung et al. (ICLR 2023) approximate the likelihood score ∇ log p(y | x_t) by the gradient of a loss of
the *denoised* estimate ``x̂0(x_t)`` (Tweedie: ``x_t − σ ε̂`` for VE, ``(x_t − √(1−ā) ε̂)/√ā`` for VP),
differentiated through the denoiser. The a-C paper (Kwon, Hsu et al. 2024; ``docs/background.md``) uses the loss
``L = ‖y − mean_i S(x̂0)_i‖²`` (y the target spectrum, S the per-atom forward model) with the gradient
scaled by ρ/‖·‖ (ρ = 800); we read ‖·‖ as the norm of the gradient, i.e. a guidance term of fixed size ρ
(Chung et al. divide by the residual norm ‖y − A(x̂0)‖ instead).
Here, per structure,

    score ← score − ρ · ∇_{x_t} L / ‖∇_{x_t} L‖,

i.e. in the VE Euler–Maruyama step ``ε̂ ← ε̂ + σ ρ ĝ`` (σ in Å; ĝ the unit gradient over the structure's
Cartesian coordinates), so the step moves the atoms by ``−(σ_k² − σ_{k+1}²) ρ ĝ``; in the VP sampler (ĝ
over the whole grid in model space) ``x_prev`` moves by ``−β_k ρ ĝ`` with β_k = 1 − ā_k/ā_prev, which is
how a DDPM step applies the score (x + β s); it is bounded at the noisiest step, where a change of ε̂ would
be amplified by 1/√ā. So ρ is the norm of the guidance term of the score and is independent of the loss's units.
Its useful size differs between the two models (their
scores live in different spaces: Å⁻¹ over 3N coordinates, against a unitless grid of C·D·H·W values);
``gcd sample --dps-scale`` sets it.

The loss is evaluated on the denoised estimate and differentiated with respect to ``x_t`` through the
network (one extra backward pass per step), which is DPS proper; guidance applies to the predictor
steps (the corrector of the ``pc`` sampler runs on the prior alone). The guidance itself is a sampling hook
(``samplers.VPPosteriorGuidance``, ``samplers.CartesianPosteriorGuidance``); this module holds the loss.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from lightning_gcd.samplers.dps import straight_through_clamp, unit_per_sample

__all__ = ["SpectrumGuidance", "unit_per_sample", "straight_through_clamp"]

#: per-structure loss of (frac_coords (B,N,3), numbers (B,N), mask (B,N), cell (B,3,3), weights (B,N) | None)
StructureLoss = Callable[..., torch.Tensor]


class SpectrumGuidance:
    """The DPS loss ``‖target − mean predicted spectrum‖²`` per structure and its scale ρ.

    Args:
        forward_model: a ``SpectrumModel`` (anything with ``mean_spectrum(frac, numbers, mask, cell, weights)
            -> (B, K)``); it is put in eval mode and its parameters are not trained.
        scale: ρ, the norm of the guidance term added to the score (module docstring).
    """

    def __init__(self, forward_model: torch.nn.Module, scale: float) -> None:
        if not scale >= 0:
            raise ValueError(f"the DPS scale must be >= 0, got {scale}")
        self.forward_model = forward_model.eval()
        for p in self.forward_model.parameters():
            p.requires_grad_(False)
        self.scale = float(scale)

    def loss(
        self,
        target: torch.Tensor,
        frac_coords: torch.Tensor,
        numbers: torch.Tensor,
        mask: torch.Tensor,
        cell: torch.Tensor,
        weights: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B,) squared L2 error between ``target`` (B, K) and the structures' mean predicted spectra."""
        dtype = next(self.forward_model.parameters()).dtype
        pred = self.forward_model.mean_spectrum(
            frac_coords.to(dtype), numbers, mask, cell.to(dtype), None if weights is None else weights.to(dtype)
        )
        return ((pred - target.to(pred)) ** 2).sum(-1)

    def bind(self, target: torch.Tensor) -> StructureLoss:
        """The loss with the target fixed: ``f(frac, numbers, mask, cell, weights=None) -> (B,)``."""
        return lambda frac, numbers, mask, cell, weights=None: self.loss(target, frac, numbers, mask, cell, weights)
