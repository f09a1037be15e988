"""Time and condition embeddings shared by the voxel U-Net and the particle message-passing network."""

from __future__ import annotations

import math

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
    """

    def __init__(self, cond_dim: int, dim: int) -> None:
        super().__init__()
        self.cond_dim = cond_dim
        self.mlp = nn.Sequential(nn.Linear(cond_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.null = nn.Parameter(torch.zeros(dim))

    def forward(self, cond: torch.Tensor | None, keep: torch.Tensor | None, batch_size: int) -> torch.Tensor:
        """cond: (B, cond_dim) or None; keep: (B,) bool or None (None keeps all) -> (B, dim)."""
        null = self.null.expand(batch_size, -1)
        if cond is None:
            return null
        if cond.shape != (batch_size, self.cond_dim):
            raise ValueError(f"condition has shape {tuple(cond.shape)}, expected ({batch_size}, {self.cond_dim})")
        emb = self.mlp(cond.to(self.null.dtype))
        if keep is None:
            return emb
        return torch.where(keep[:, None], emb, null)
