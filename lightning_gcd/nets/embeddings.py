"""Time and condition embeddings shared by the voxel U-Net and the particle message-passing network."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn


def sinusoidal_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Sinusoidal features of a continuous diffusion time.

    Args:
        t: (B,) diffusion time in [0, 1] (any float scale works; it is multiplied by 1000 so that the
            frequencies resolve the usual 1000-step discretisation).
        dim: embedding width (even).
    Returns:
        (B, dim) features.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = (t.float() * 1000.0)[:, None] * freqs[None, :]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class TimeEmbedding(nn.Module):
    """Sinusoidal features of t followed by a two-layer MLP: (B,) -> (B, dim)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        # features in float32 (resolution of t), then the MLP's own dtype (a .double() or .half() network)
        return self.mlp(sinusoidal_embedding(t, self.dim).to(self.mlp[0].weight.dtype))


class ConditionEmbedding(nn.Module):
    """Embeds a condition vector (a spectrum, a one-hot phase label...) for classifier-free guidance.

    Where ``keep`` is False the condition is replaced by a learned null embedding, which is what the
    network sees in unconditional mode (condition dropout in training, the unconditional branch of
    guidance at sampling).

    ``cond_mean``/``cond_std`` (cond_dim,), when given, standardise the condition before the MLP (stored as
    buffers, so a checkpoint carries them): a spectrum's structure-to-structure differences are about a
    tenth of its magnitude, and a plain linear layer sees mostly the part every structure shares.
    """

    def __init__(
        self, cond_dim: int, dim: int, cond_mean: Sequence[float] | None = None, cond_std: Sequence[float] | None = None
    ) -> None:
        super().__init__()
        self.cond_dim = cond_dim
        self.mlp = nn.Sequential(nn.Linear(cond_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.null = nn.Parameter(torch.zeros(dim))
        self.standardised = cond_mean is not None
        if (cond_mean is None) != (cond_std is None):
            raise ValueError("cond_mean and cond_std go together")
        if cond_mean is not None:
            mean, std = torch.as_tensor(cond_mean, dtype=torch.float32), torch.as_tensor(cond_std, dtype=torch.float32)
            if mean.shape != (cond_dim,) or std.shape != (cond_dim,) or not bool((std > 0).all()):
                raise ValueError(f"cond_mean and cond_std must be ({cond_dim},) with std > 0")
            self.register_buffer("cond_mean", mean)
            self.register_buffer("cond_std", std)

    def forward(self, cond: torch.Tensor | None, keep: torch.Tensor | None, batch_size: int) -> torch.Tensor:
        """cond: (B, cond_dim) or None; keep: (B,) bool or None (None keeps all) -> (B, dim)."""
        null = self.null.expand(batch_size, -1)
        if cond is None:
            return null
        if cond.shape != (batch_size, self.cond_dim):
            raise ValueError(f"condition has shape {tuple(cond.shape)}, expected ({batch_size}, {self.cond_dim})")
        cond = cond.to(self.null.dtype)
        if self.standardised:
            cond = (cond - self.cond_mean.to(cond.dtype)) / self.cond_std.to(cond.dtype)
        emb = self.mlp(cond)
        if keep is None:
            return emb
        return torch.where(keep[:, None], emb, null)


def check_species(numbers: torch.Tensor, batch: int, atoms: int, max_z: int) -> None:
    """One-line errors for a point-cloud network's atomic numbers: shape (batch, atoms), none above ``max_z``."""
    if numbers.shape != (batch, atoms):
        raise ValueError(f"numbers must be ({batch}, {atoms}), got {tuple(numbers.shape)}")
    if numbers.numel() and int(numbers.max()) > max_z:
        raise ValueError(f"atomic number {int(numbers.max())} exceeds max_z={max_z}")
