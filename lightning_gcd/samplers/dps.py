"""Diffusion posterior sampling (DPS): what a posterior guidance is, and the pieces the VP and the Cartesian
posterior hooks share.

Chung et al. (ICLR 2023) approximate the likelihood score ∇ log p(y | x_t) by the gradient of a loss of
the *denoised* estimate ``x̂0(x_t)`` (Tweedie: ``x_t − σ ε̂`` for VE, ``(x_t − √(1−ā) ε̂)/√ā`` for VP),
differentiated through the denoiser. Here the gradient is divided by its norm per structure, so the guidance
term has a fixed size ρ (``unit_per_sample``):

    score ← score − ρ · ∇_{x_t} L / ‖∇_{x_t} L‖,

i.e. in the VE Euler–Maruyama step ``ε̂ ← ε̂ + σ ρ ĝ`` (σ in Å; ĝ the unit gradient over the structure's
Cartesian coordinates), so the step moves the atoms by ``−(σ_k² − σ_{k+1}²) ρ ĝ``; in the VP sampler (ĝ
over the whole grid in model space) ``x_prev`` moves by ``−β_k ρ ĝ`` with β_k = 1 − ā_k/ā_prev, which is
how a DDPM step applies the score (x + β s); it is bounded at the noisiest step, where a change of ε̂ would
be amplified by 1/√ā. So ρ is the norm of the guidance term of the score and is independent of the loss's
units; its useful size differs between the two models (their scores live in different spaces: Å⁻¹ over 3N
coordinates, against a unitless grid of C·D·H·W values).

The loss is evaluated on the denoised estimate and differentiated with respect to ``x_t`` through the
network (one extra backward pass per step), which is DPS proper; guidance applies to the predictor
steps (the corrector of the ``pc`` sampler runs on the prior alone). The guidance itself is a sampling hook
(``samplers.VPPosteriorGuidance``, ``samplers.CartesianPosteriorGuidance``); what it steers toward is a
``PosteriorGuidance``: a loss of decoded structures against a target, with its scale ρ, which an application
supplies (``lightning_gcd.spectra.SpectrumGuidance``: a spectrum forward model). The loss of a clamped
prediction is differentiated straight through the clamp (``straight_through_clamp``), so saturated entries
still get a gradient.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

import torch

__all__ = ["PosteriorGuidance", "StructureLoss", "straight_through_clamp", "unit_per_sample"]

#: per-structure loss (B,) of (frac_coords (B,N,3), numbers (B,N), mask (B,N), cell (B,3,3), weights (B,N) | None)
StructureLoss = Callable[..., torch.Tensor]


@runtime_checkable
class PosteriorGuidance(Protocol):
    """What the models' ``generate(..., posterior=...)`` takes: a differentiable loss of decoded structures
    against the template's ``target`` rows (B, K), and ρ, the norm of the guidance term (module docstring)."""

    scale: float

    def bind(self, target: torch.Tensor) -> StructureLoss:
        """The loss with the target (B, K) fixed: ``f(frac, numbers, mask, cell, weights=None) -> (B,)``."""
        ...


def unit_per_sample(grad: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """``grad`` divided by its norm over all but the first (batch) axis; zero rows stay zero."""
    norm = grad.flatten(1).norm(dim=1).clamp(min=eps)
    return grad / norm.reshape(-1, *([1] * (grad.dim() - 1)))


def straight_through_clamp(x: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """``x.clamp(low, high)`` in value, identity in gradient (so saturated voxels still get a gradient)."""
    return x + (x.clamp(low, high) - x).detach()
