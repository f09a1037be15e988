"""The pieces of diffusion posterior sampling (DPS) that the VP and the Cartesian posterior hooks share.

The guidance term has a fixed size ρ: the loss gradient is divided by its norm per sample (``unit_per_sample``);
the loss of a clamped prediction is differentiated straight through the clamp (``straight_through_clamp``),
so saturated entries still get a gradient. See ``lightning_gcd.diffusion.guidance`` for the method.
"""

from __future__ import annotations

import torch

__all__ = ["straight_through_clamp", "unit_per_sample"]


def unit_per_sample(grad: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """``grad`` divided by its norm over all but the first (batch) axis; zero rows stay zero."""
    norm = grad.flatten(1).norm(dim=1).clamp(min=eps)
    return grad / norm.reshape(-1, *([1] * (grad.dim() - 1)))


def straight_through_clamp(x: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """``x.clamp(low, high)`` in value, identity in gradient (so saturated voxels still get a gradient)."""
    return x + (x.clamp(low, high) - x).detach()
