"""Spectrum guidance: diffusion posterior sampling toward a target spectrum with a differentiable forward model.

A ``PosteriorGuidance`` (``lightning_gcd.samplers.dps``, where the method is described) for both diffusion
models. The a-C paper (Kwon, Hsu et al. 2024; ``docs/background.md``) uses the loss
``L = ‖y − mean_i S(x̂0)_i‖²`` (y the target spectrum, S the per-atom forward model) with the gradient
scaled by ρ/‖·‖ (ρ = 800); we read ‖·‖ as the norm of the gradient, i.e. a guidance term of fixed size ρ
(Chung et al. divide by the residual norm ‖y − A(x̂0)‖ instead). ``gcd sample --dps-scale`` sets ρ.
"""

from __future__ import annotations

import torch

from lightning_gcd.samplers.dps import StructureLoss

__all__ = ["SpectrumGuidance"]


class SpectrumGuidance:
    """The DPS loss ``‖target − mean predicted spectrum‖²`` per structure and its scale ρ.

    Args:
        forward_model: a ``SpectrumModel`` (anything with ``mean_spectrum(frac, numbers, mask, cell, weights)
            -> (B, K)``); it is put in eval mode and its parameters are not trained.
        scale: ρ, the norm of the guidance term added to the score (``lightning_gcd.samplers.dps``).
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
