"""In-painting by replacement for the VP (voxel) samplers: entries of x held at known values, noised to each step."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lightning_gcd.samplers.hooks import SamplingHook
from lightning_gcd.samplers.vp_base import VPRun, VPStep

__all__ = ["KnownValues", "broadcasts_to"]


def broadcasts_to(shape: Sequence[int], target: Sequence[int]) -> bool:
    """Whether a tensor of ``shape`` broadcasts to exactly ``target`` (a mask or weights over x's entries)."""
    try:
        return tuple(torch.broadcast_shapes(tuple(shape), tuple(target))) == tuple(target)
    except RuntimeError:
        return False


class KnownValues(SamplingHook):
    """Before each step the entries under ``known_mask`` of ``x_t`` are replaced by ``q_sample(known, t)``
    (fresh noise from the run's generator); the finished sample has them exactly at ``known``.

    Args:
        known: (B, C, ...) known values, in the diffusion's model space, shaped like the samples.
        known_mask: bool, broadcastable to the samples' shape; True where ``known`` applies.
    """

    def __init__(self, known: torch.Tensor | None, known_mask: torch.Tensor | None) -> None:
        if known is None or known_mask is None:
            raise ValueError("in-painting needs both `known` and `known_mask`")
        self.known = known
        self.known_mask = known_mask

    def start(self, run: VPRun) -> None:
        self.known = self.known.to(device=run.device, dtype=run.dtype)
        self.known_mask = self.known_mask.to(device=run.device, dtype=torch.bool)
        if tuple(self.known.shape) != run.shape:
            raise ValueError(f"known has shape {tuple(self.known.shape)}, expected {run.shape}")
        if not broadcasts_to(tuple(self.known_mask.shape), run.shape):
            raise ValueError(f"known_mask of shape {tuple(self.known_mask.shape)} does not broadcast to {run.shape}")

    def impose(self, x: torch.Tensor, step: VPStep, run: VPRun) -> torch.Tensor:
        return torch.where(self.known_mask, run.diffusion.q_sample(self.known, step.index, run.noise()), x)

    def finish(self, x: torch.Tensor, run: VPRun) -> torch.Tensor:
        return torch.where(self.known_mask, self.known, x)
