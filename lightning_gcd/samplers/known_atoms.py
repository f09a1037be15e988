"""In-painting by replacement for point clouds: atoms held at known positions, noised to the current level."""

from __future__ import annotations

from collections.abc import Callable

import torch

from lightning_gcd.structures import wrap_unit

__all__ = ["KnownAtoms"]


class KnownAtoms:
    """Fixed atoms of an in-painting: before each network call they are put at their known fractional
    positions plus noise of the current level, ``wrap(known + sigma z)``; ``finish`` puts them exactly there.

    Args:
        known: (B, N, 3) fractional coordinates of the fixed atoms (other rows ignored).
        fixed: (B, N) bool, True for a fixed atom (padding is never fixed).
        noise: ``() -> (B, N, 3)`` standard normal numbers.
    """

    def __init__(self, known: torch.Tensor, fixed: torch.Tensor, noise: Callable[[], torch.Tensor]) -> None:
        if known.shape[:2] != fixed.shape or known.shape[-1] != 3:
            raise ValueError(
                f"known must be (B, N, 3) and its mask (B, N); got {tuple(known.shape)}, {tuple(fixed.shape)}"
            )
        self.known = wrap_unit(known)
        self.fixed = fixed.bool()[..., None]
        self.noise = noise

    def impose(self, frac: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """(B, N, 3) with the fixed atoms at ``known`` noised to ``sigma`` (B,) fractional units."""
        noised = wrap_unit(self.known + sigma[:, None, None] * self.noise())
        return torch.where(self.fixed, noised, frac)

    def finish(self, frac: torch.Tensor) -> torch.Tensor:
        """(B, N, 3) with the fixed atoms exactly at ``known``."""
        return torch.where(self.fixed, self.known, frac)
