"""In-painting by replacement for the Cartesian particle samplers: atoms held at known positions."""

from __future__ import annotations

import torch

from lightning_gcd.samplers.cartesian_base import CartesianRun
from lightning_gcd.samplers.hooks import SamplingHook
from lightning_gcd.structures import wrap_unit

__all__ = ["CartesianKnownAtoms"]


class CartesianKnownAtoms(SamplingHook):
    """At the start of each level (and after a corrector) the fixed atoms are put at their known positions plus
    Cartesian noise of the level, ``wrap(known + sigma z)``; the finished sample has them exactly at ``known``.
    Only the other atoms are generated (the particle counterpart of the voxel samplers' ``KnownValues``).

    Args:
        known: (B, N, 3) fractional coordinates of the fixed atoms (other rows ignored).
        known_mask: (B, N) bool, True for a fixed atom (padding is never fixed).
    """

    def __init__(self, known: torch.Tensor | None, known_mask: torch.Tensor | None) -> None:
        if known is None or known_mask is None:
            raise ValueError("in-painting needs both `known` and `known_mask`")
        self.known = known
        self.known_mask = known_mask

    def start(self, run: CartesianRun) -> None:
        b, n = run.numbers.shape
        self.known = self.known.to(device=run.cell.device, dtype=run.cell.dtype)
        self.fixed = (self.known_mask.to(device=run.cell.device).bool() & run.mask)[..., None]  # (B, N, 1)
        if self.known.shape != (b, n, 3) or self.fixed.shape != (b, n, 1):
            raise ValueError(f"known must be ({b}, {n}, 3) and known_mask ({b}, {n})")

    def impose(self, frac: torch.Tensor, sigma: float, run: CartesianRun) -> torch.Tensor:
        """(B, N, 3) with the fixed atoms at ``known`` noised by ``sigma`` Å."""
        return torch.where(self.fixed, run.move(self.known, sigma * run.noise()), frac)

    def finish(self, frac: torch.Tensor, run: CartesianRun) -> torch.Tensor:
        return torch.where(self.fixed, wrap_unit(self.known) * run.fmask, frac)
