"""A periodic 3D U-Net for diffusion on voxel grids of crystals.

Crystal cells are periodic, so every convolution pads circularly: the voxel at one face of the cell sees the
voxels at the opposite face as its neighbours, exactly as the atoms do. The network therefore has no edges,
no edge artefacts, and commutes with circular translations of the grid by any multiple of its
``downsampling_factor`` (the stride-2 convolutions only see the grid modulo that factor). Nothing in it fixes
the grid size: a net trained on 16³ cells runs on 32³ or 16×16×32 cells (the "scale-agnostic" use of the
prior on larger supercells).

Layout (DDPM / ADM style)::

    x (B,C,D,H,W) -> conv_in -> [ResBlock × num_res_blocks -> Downsample] per level
                  -> middle: ResBlock -> self-attention over voxels (optional) -> ResBlock
                  -> [ResBlock × (num_res_blocks+1) with skip concat -> Upsample] per level (reversed)
                  -> GroupNorm -> SiLU -> conv_out (zero-initialised) -> (B,out_channels,D,H,W)

The diffusion time (and, if ``cond_dim > 0``, a condition vector; if ``geometry_dim > 0``, a geometry vector
such as the voxel spacing in Å) is embedded once and applied in every residual block as a FiLM scale and
shift after the second GroupNorm.

Pure PyTorch: nothing here knows about Lightning.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from lightning_gcd.nets.embeddings import ConditionEmbedding, TimeEmbedding

__all__ = ["PeriodicUNet3d"]


def _conv3d(in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1) -> nn.Conv3d:
    """A 3D convolution with circular (periodic) padding that keeps the size for stride 1."""
    return nn.Conv3d(
        in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2, padding_mode="circular"
    )


def _group_norm(channels: int, groups: int) -> nn.GroupNorm:
    """GroupNorm with the largest number of groups <= ``groups`` that divides ``channels``.

    GroupNorm statistics are global over the grid, so normalisation is translation invariant and the
    network stays equivariant to circular shifts.
    """
    return nn.GroupNorm(math.gcd(groups, channels), channels)


def _zero_(module: nn.Module) -> nn.Module:
    """Zero the parameters of ``module`` so that a residual branch starts as the identity."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock3d(nn.Module):
    """Pre-activation residual block with FiLM conditioning on the (time + condition) embedding.

    (B,C_in,D,H,W), (B,E) -> (B,C_out,D,H,W).
    """

    def __init__(self, in_channels: int, out_channels: int, emb_dim: int, groups: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = _group_norm(in_channels, groups)
        self.conv1 = _conv3d(in_channels, out_channels)
        # One linear layer gives both the FiLM scale and the shift for every output channel.
        self.emb_proj = nn.Linear(emb_dim, 2 * out_channels)
        self.norm2 = _group_norm(out_channels, groups)
        self.dropout = nn.Dropout(dropout)
        # Zero init: the block starts as its skip path, which keeps a deep net stable at the start of training.
        self.conv2 = _zero_(_conv3d(out_channels, out_channels))
        self.skip = nn.Identity() if in_channels == out_channels else _conv3d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))  # (B,C_out,D,H,W)
        scale, shift = self.emb_proj(F.silu(emb))[:, :, None, None, None].chunk(2, dim=1)  # 2 × (B,C_out,1,1,1)
        h = self.norm2(h) * (1.0 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class VoxelSelfAttention(nn.Module):
    """Multi-head self-attention over all voxels of a grid, with a residual connection.

    No positional encoding: attention is then permutation equivariant, so circular shifts of the grid commute
    with it and the net keeps its periodicity. Cost is quadratic in the number of voxels, which is why it is
    used only at the coarsest level. (B,C,D,H,W) -> (B,C,D,H,W).
    """

    def __init__(self, channels: int, heads: int, groups: int) -> None:
        super().__init__()
        if channels % heads:
            raise ValueError(f"attention needs channels ({channels}) divisible by attention_heads ({heads})")
        self.heads = heads
        self.norm = _group_norm(channels, groups)
        self.qkv = nn.Conv3d(channels, 3 * channels, 1)
        self.proj = _zero_(nn.Conv3d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, d, h, w = x.shape
        n = d * h * w
        qkv = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, n)  # (B,3,heads,C/heads,N)
        q, k, v = (qkv[:, i].transpose(-1, -2) for i in range(3))  # each (B,heads,N,C/heads)
        out = F.scaled_dot_product_attention(q, k, v)  # (B,heads,N,C/heads)
        out = out.transpose(-1, -2).reshape(b, c, d, h, w)
        return x + self.proj(out)


class Downsample3d(nn.Module):
    """Stride-2 circular convolution: (B,C,D,H,W) -> (B,C,D/2,H/2,W/2)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = _conv3d(channels, channels, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample3d(nn.Module):
    """Nearest-neighbour ×2 then a circular convolution: (B,C,D,H,W) -> (B,C,2D,2H,2W).

    Nearest upsampling followed by a convolution avoids the checkerboard artefacts of transposed convolutions.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = _conv3d(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class PeriodicUNet3d(nn.Module):
    """Periodic, fully convolutional 3D U-Net denoiser for voxel grids.

    Args:
        in_channels: channels of the voxel grid (e.g. occupancy + 3 offsets, or one density per species).
        out_channels: channels of the prediction; defaults to ``in_channels``.
        base_channels: width of the first level; level ``i`` has ``base_channels * channel_mults[i]``.
        channel_mults: one multiplier per resolution level; the grid is halved between levels, so a net with
            ``L`` levels needs grid sides divisible by ``2**(L-1)``.
        num_res_blocks: residual blocks per level on the way down (one more on the way up).
        attention: self-attention over voxels in the middle (coarsest) block.
        attention_heads: heads of that attention; must divide the coarsest width.
        cond_dim: width of the condition vector (a spectrum, a one-hot label...); 0 for an unconditional net.
        cond_mean, cond_std: (cond_dim,) statistics that standardise the condition (``ConditionEmbedding``);
            None: the condition is used as given.
        geometry_dim: width of a geometry vector that every call must pass (e.g. the voxel spacing along
            each axis, where one grid serves cells of several sizes and the voxels alone do not say how
            long a bond is); unlike the condition it is never dropped. 0: none.
        groups: maximum number of GroupNorm groups (reduced to a divisor of each width).
        dropout: dropout inside the residual blocks.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int | None = None,
        base_channels: int = 32,
        channel_mults: Sequence[int] = (1, 2, 2),
        num_res_blocks: int = 1,
        attention: bool = True,
        attention_heads: int = 4,
        cond_dim: int = 0,
        geometry_dim: int = 0,
        groups: int = 8,
        dropout: float = 0.0,
        cond_mean: Sequence[float] | None = None,
        cond_std: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        if in_channels < 1 or base_channels < 1:
            raise ValueError(f"in_channels ({in_channels}) and base_channels ({base_channels}) must be positive")
        if len(channel_mults) == 0 or any(m < 1 for m in channel_mults):
            raise ValueError(f"channel_mults must be a non-empty sequence of positive ints, got {channel_mults}")
        if num_res_blocks < 1:
            raise ValueError(f"num_res_blocks must be >= 1, got {num_res_blocks}")
        if cond_dim < 0 or geometry_dim < 0:
            raise ValueError(f"cond_dim and geometry_dim must be >= 0, got {cond_dim}, {geometry_dim}")
        self.in_channels = in_channels
        self.out_channels = out_channels if out_channels is not None else in_channels
        self.channel_mults = tuple(int(m) for m in channel_mults)
        self.cond_dim = cond_dim
        emb_dim = 4 * base_channels

        self.time_embed = TimeEmbedding(emb_dim)
        self.cond_embed = ConditionEmbedding(cond_dim, emb_dim, cond_mean, cond_std) if cond_dim > 0 else None
        self.geometry_dim = geometry_dim
        self.geometry_embed = (
            nn.Sequential(nn.Linear(geometry_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
            if geometry_dim > 0
            else None
        )

        self.conv_in = _conv3d(in_channels, base_channels)

        # Encoder. `skip_channels` records the width of every tensor pushed on the skip stack.
        self.down = nn.ModuleList()
        skip_channels = [base_channels]
        ch = base_channels
        for level, mult in enumerate(self.channel_mults):
            for _ in range(num_res_blocks):
                self.down.append(ResBlock3d(ch, base_channels * mult, emb_dim, groups, dropout))
                ch = base_channels * mult
                skip_channels.append(ch)
            if level != len(self.channel_mults) - 1:
                self.down.append(Downsample3d(ch))
                skip_channels.append(ch)

        # Middle, at the coarsest resolution.
        self.mid1 = ResBlock3d(ch, ch, emb_dim, groups, dropout)
        self.mid_attn = VoxelSelfAttention(ch, attention_heads, groups) if attention else nn.Identity()
        self.mid2 = ResBlock3d(ch, ch, emb_dim, groups, dropout)

        # Decoder: each block consumes one skip tensor (concatenated on channels).
        self.up = nn.ModuleList()
        for level in reversed(range(len(self.channel_mults))):
            out_ch = base_channels * self.channel_mults[level]
            for _ in range(num_res_blocks + 1):
                self.up.append(ResBlock3d(ch + skip_channels.pop(), out_ch, emb_dim, groups, dropout))
                ch = out_ch
            if level != 0:
                self.up.append(Upsample3d(ch))
        assert not skip_channels

        self.norm_out = _group_norm(ch, groups)
        self.conv_out = _zero_(_conv3d(ch, self.out_channels))

    @property
    def downsampling_factor(self) -> int:
        """Every grid side must be a multiple of this; the net commutes with circular shifts by multiples of it."""
        return 2 ** (len(self.channel_mults) - 1)

    def _embed(
        self,
        t: torch.Tensor,
        cond: torch.Tensor | None,
        cond_keep: torch.Tensor | None,
        geometry: torch.Tensor | None,
        batch_size: int,
    ) -> torch.Tensor:
        """(B,) time [+ (B,cond_dim) condition] [+ (B,geometry_dim) geometry] -> (B, 4*base_channels)."""
        emb = self.time_embed(t)
        if self.cond_embed is not None:
            emb = emb + self.cond_embed(cond, cond_keep, batch_size)
        elif cond is not None:
            raise ValueError("a condition was passed to an unconditional PeriodicUNet3d (cond_dim=0)")
        if self.geometry_embed is not None:
            if geometry is None or geometry.shape != (batch_size, self.geometry_dim):
                got = None if geometry is None else tuple(geometry.shape)
                raise ValueError(f"this PeriodicUNet3d needs a ({batch_size}, {self.geometry_dim}) geometry, got {got}")
            emb = emb + self.geometry_embed(geometry.to(emb.dtype))
        elif geometry is not None:
            raise ValueError("a geometry was passed to a PeriodicUNet3d without one (geometry_dim=0)")
        return emb

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        cond: torch.Tensor | None = None,
        cond_keep: torch.Tensor | None = None,
        geometry: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predict the denoising target for a batch of noisy grids.

        Args:
            x: (B, in_channels, D, H, W) noisy voxel grids; D, H, W multiples of ``downsampling_factor``.
            t: (B,) float diffusion time in [0, 1] (a scalar is broadcast over the batch).
            cond: (B, cond_dim) condition, or None for the unconditional (null-embedding) prediction.
            cond_keep: (B,) bool; where False the condition is dropped (classifier-free guidance). None keeps all.
            geometry: (B, geometry_dim), required where ``geometry_dim > 0``, else None.
        Returns:
            (B, out_channels, D, H, W).
        """
        if x.ndim != 5:
            raise ValueError(f"expected a (B,C,D,H,W) grid, got shape {tuple(x.shape)}")
        b, c, *grid = x.shape
        if c != self.in_channels:
            raise ValueError(f"expected {self.in_channels} input channels, got {c} (shape {tuple(x.shape)})")
        f = self.downsampling_factor
        if any(s % f for s in grid):
            raise ValueError(
                f"grid shape {tuple(grid)} is not divisible by the U-Net downsampling factor {f} "
                f"(= 2**(len(channel_mults)-1) with channel_mults={self.channel_mults}); "
                f"use grid sides that are multiples of {f}"
            )
        t = torch.as_tensor(t, device=x.device)
        if t.ndim == 0:
            t = t.expand(b)
        if t.shape != (b,):
            raise ValueError(f"t must have shape ({b},), got {tuple(t.shape)}")

        emb = self._embed(t, cond, cond_keep, geometry, b)  # (B,E)

        h = self.conv_in(x)  # (B,base,D,H,W)
        skips = [h]
        for block in self.down:
            h = block(h, emb) if isinstance(block, ResBlock3d) else block(h)
            skips.append(h)

        h = self.mid1(h, emb)  # (B,C_coarse,D/f,H/f,W/f)
        h = self.mid_attn(h)
        h = self.mid2(h, emb)

        for block in self.up:
            if isinstance(block, ResBlock3d):
                h = block(torch.cat([h, skips.pop()], dim=1), emb)
            else:
                h = block(h)

        return self.conv_out(F.silu(self.norm_out(h)))  # (B,out_channels,D,H,W)
