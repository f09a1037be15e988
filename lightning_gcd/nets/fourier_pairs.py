"""Pair network over fractional differences (DiffCSP's CSPNet design) for the torus particle model.

The network maps noisy fractional coordinates to one vector per atom in fractional axes: the torus
diffusion's normalised score target (``lightning_gcd.diffusion.torus``).

Architecture:

* nodes: learned species embedding + time embedding (+ condition embedding for classifier-free
  guidance, a learned null vector when the condition is dropped);
* edges, ``graph="all_pairs"`` (DiffCSP): every ordered pair (i, j) of atoms in the cell, i = j included,
  with sin/cos Fourier features ``sin(2π k Δf), cos(2π k Δf)`` of the fractional difference
  ``Δf = f_j - f_i`` for ``k = 0 … frequencies - 1`` per axis, and the cell's shape
  ``(L Lᵀ) / V^(2/3)`` (9 numbers); messages averaged over the cell's atoms. Periodic by construction
  (an integer shift of any atom changes no feature), permutation equivariant, translation invariant;
  the features are tied to the cell (a frequency is a wavelength in units of the cell edge), so a network
  trained on one cell does not transfer to a supercell;
* edges, ``graph="radius"``: every periodic image pair closer than ``cutoff`` Å, with a Gaussian basis
  of the distance and the Cartesian unit vector, times a smooth cosine envelope; messages summed and
  divided by ``avg_neighbors``. Only local geometry enters, so the network applies to any cell of the
  same density (use it with ``atom_scaled_sigma``) — at the price of the all-pairs view of the cell;
* ``layers`` residual rounds ``h_i += MLP(LN(h_i), agg_j MLP(LN(h_i), LN(h_j), cell, e_ij))``, then a final
  LayerNorm and a bias-free linear read-out to 3 numbers per atom.

The first linear layer of the edge MLP is applied to its four inputs separately (``W [h_i, h_j, c, e] =
W_i h_i + W_j h_j + W_c c + W_e e``): the same function, but the node terms are computed once per atom, not
once per pair. On a CPU the no-grad all-pairs rounds (sampling) run on blocks of structures that keep the pair
tensors near the cache size (``PAIR_BLOCK_ELEMENTS``); with gradients the network takes the batch it is given,
and the torus model trains a larger batch in chunks of the same size (``lightning_gcd.models.chunked_loss``).
Pure PyTorch, no Lightning.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

from lightning_gcd.nets.embeddings import ConditionEmbedding, TimeEmbedding, check_species, sinusoidal_embedding
from lightning_gcd.nets.mpnn import GaussianRadialBasis
from lightning_gcd.periodic import radius_graph

__all__ = ["FourierPairNet", "fourier_features", "cell_shape_features", "pair_block_size", "block_rows"]

#: pair-tensor elements (B_block · N² · hidden) per block of structures on a CPU: a no-grad pass's all-pairs rounds
#: and a training batch's forward + backward chunks (experiments/BENCHMARKS.md, pair blocks)
PAIR_BLOCK_ELEMENTS = 1 << 20


def pair_block_size(batch: int, atoms: int, hidden: int, on_cpu: bool) -> int:
    """Structures per block of all-pairs rounds (``batch``: the whole batch at once): on a CPU, blocks of about
    ``PAIR_BLOCK_ELEMENTS`` pair-tensor elements, so that the pair tensors stay near the cache size."""
    if not on_cpu:
        return batch
    return min(batch, max(1, PAIR_BLOCK_ELEMENTS // (atoms * atoms * hidden)))


def block_rows(batch: int, block: int) -> list[slice]:
    """Consecutive row slices of at most ``block`` structures that cover a batch of ``batch``."""
    return [slice(i, i + block) for i in range(0, batch, block)]


def fourier_features(delta: torch.Tensor, frequencies: int) -> torch.Tensor:
    """(..., 3) fractional differences -> (..., 6 * frequencies) ``[sin(2πkΔ), cos(2πkΔ)]``, k = 0…F-1."""
    k = 2.0 * math.pi * torch.arange(frequencies, device=delta.device, dtype=delta.dtype)
    args = (delta[..., :, None] * k).flatten(-2)  # (..., 3F)
    return torch.cat([torch.sin(args), torch.cos(args)], dim=-1)


def cell_shape_features(cell: torch.Tensor) -> torch.Tensor:
    """(B, 3, 3) Å -> (B, 9) ``L Lᵀ / V^(2/3)``: the cell's shape, invariant to rotations and to its size."""
    metric = cell @ cell.transpose(1, 2)
    volume = torch.linalg.det(cell).abs().clamp(min=1e-12)
    return (metric / volume[:, None, None] ** (2.0 / 3.0)).reshape(-1, 9)


class _PairLayer(nn.Module):
    """One residual round of pair messages (module docstring)."""

    def __init__(self, hidden: int, edge_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden)
        self.w_src = nn.Linear(hidden, hidden)
        self.w_dst = nn.Linear(hidden, hidden, bias=False)
        self.w_cell = nn.Linear(9, hidden, bias=False)
        self.w_edge = nn.Linear(edge_dim, hidden, bias=False)
        self.edge_out = nn.Sequential(nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU())
        self.node = nn.Sequential(nn.Linear(2 * hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU())

    def dense(self, h: torch.Tensor, shape: torch.Tensor, edges: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """All pairs. h: (B, N, H); shape: (B, 9); edges: (B, N, N, E); mask: (B, N) -> (B, N, H)."""
        hn = self.norm(h)
        pre = (
            self.w_src(hn)[:, :, None]
            + self.w_dst(hn)[:, None, :]
            + self.w_cell(shape)[:, None, None]
            + self.w_edge(edges)
        )  # (B, N_i, N_j, H)
        m = self.edge_out(pre) * mask[:, None, :, None].to(h.dtype)
        agg = m.sum(2) / mask.sum(1).clamp(min=1)[:, None, None].to(h.dtype)  # mean over the cell's atoms j
        return h + self.node(torch.cat([hn, agg], dim=-1))

    def sparse(
        self,
        h: torch.Tensor,
        shape: torch.Tensor,
        edges: torch.Tensor,
        src: torch.Tensor,
        dst: torch.Tensor,
        batch: torch.Tensor,
        weight: torch.Tensor,
        avg_neighbors: float,
    ) -> torch.Tensor:
        """Listed pairs. h: (M, H) flat atoms; edges: (E, edge_dim); src/dst/batch: (E,); weight: (E,)."""
        hn = self.norm(h)
        pre = self.w_src(hn)[src] + self.w_dst(hn)[dst] + self.w_cell(shape)[batch] + self.w_edge(edges)
        m = self.edge_out(pre) * weight[:, None]
        agg = torch.zeros_like(h).index_add_(0, src, m) / avg_neighbors
        return h + self.node(torch.cat([hn, agg], dim=-1))


class FourierPairNet(nn.Module):
    """Noisy fractional coordinates -> per-atom normalised score in fractional axes (module docstring).

    Args:
        hidden: feature width (DiffCSP 512; the default 128 is the size this project measured on CPU).
        layers: residual rounds (DiffCSP 6).
        frequencies: Fourier frequencies per axis of the all-pairs features (DiffCSP 128).
        graph: ``"all_pairs"`` (every pair in the cell) or ``"radius"`` (periodic pairs within ``cutoff``).
        cutoff: radius-graph cutoff in Å (``graph="radius"``).
        num_rbf: Gaussian distance basis of the radius graph.
        avg_neighbors: normalisation of the radius graph's summed messages.
        cond_dim: width of the condition vector (0: unconditional); cond_mean/cond_std standardise it.
        max_z: largest atomic number embedded.
    """

    def __init__(
        self,
        hidden: int = 128,
        layers: int = 4,
        frequencies: int = 32,
        graph: Literal["all_pairs", "radius"] = "all_pairs",
        cutoff: float = 5.0,
        num_rbf: int = 32,
        avg_neighbors: float = 30.0,
        cond_dim: int = 0,
        max_z: int = 100,
        cond_mean: Sequence[float] | None = None,
        cond_std: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        if graph not in ("all_pairs", "radius"):
            raise ValueError(f"graph must be 'all_pairs' or 'radius', got {graph!r}")
        self.hidden = hidden
        self.frequencies = int(frequencies)
        self.graph = graph
        self.cutoff = float(cutoff)
        self.avg_neighbors = float(avg_neighbors)
        self.cond_dim = cond_dim
        self.max_z = max_z
        self.species = nn.Embedding(max_z + 1, hidden)
        self.time = TimeEmbedding(hidden)
        self.cond = ConditionEmbedding(cond_dim, hidden, cond_mean, cond_std) if cond_dim > 0 else None
        edge_dim = 6 * self.frequencies if graph == "all_pairs" else num_rbf + 3
        self.rbf = GaussianRadialBasis(cutoff, num_rbf) if graph == "radius" else None
        self.layers = nn.ModuleList(_PairLayer(hidden, edge_dim) for _ in range(layers))
        self.final_norm = nn.LayerNorm(hidden)
        self.readout = nn.Linear(hidden, 3, bias=False)

    def forward(
        self,
        frac_coords: torch.Tensor,
        numbers: torch.Tensor,
        mask: torch.Tensor,
        cell: torch.Tensor,
        t: torch.Tensor,
        cond: torch.Tensor | None = None,
        cond_keep: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predict the normalised score.

        Args:
            frac_coords: (B, N, 3) fractional coordinates (wrapped or not: the output is periodic).
            numbers: (B, N) atomic numbers (padding 0); mask: (B, N) bool, True for real atoms.
            cell: (B, 3, 3) Å, rows are lattice vectors.
            t: (B,) diffusion time in [0, 1].
            cond: (B, cond_dim) condition or None; cond_keep: (B,) bool, False uses the null embedding.
        Returns:
            (B, N, 3) in fractional axes, exactly zero at padding.
        """
        b, n, _ = frac_coords.shape
        check_species(numbers, b, n, self.max_z)
        mask = mask.bool()
        dtype = self.species.weight.dtype
        frac = frac_coords.to(dtype)
        cell = cell.to(dtype)
        t = t.to(frac.device)
        if t.dim() == 0:
            t = t.expand(b)
        c = self.time.mlp(sinusoidal_embedding(t, self.time.dim).to(dtype))  # (B, H)
        if self.cond is not None:
            c = c + self.cond(cond, cond_keep, b)
        elif cond is not None:
            raise ValueError("this FourierPairNet was built with cond_dim=0 and cannot take a condition")
        h = self.species(numbers) + c[:, None, :]  # (B, N, H)
        shape = cell_shape_features(cell)
        if self.graph == "all_pairs":
            h = self._all_pairs_in_blocks(h, shape, frac, mask)
        else:
            g = radius_graph(frac, cell, mask, self.cutoff)
            rbf, envelope = self.rbf(g.distances.to(dtype))
            unit = g.vectors.to(dtype) / g.distances.to(dtype).clamp(min=1e-9)[:, None]
            edges = torch.cat([rbf, unit], dim=-1)
            flat = h.reshape(b * n, self.hidden)
            for layer in self.layers:
                flat = layer.sparse(flat, shape, edges, g.src, g.dst, g.batch, envelope, self.avg_neighbors)
            h = flat.reshape(b, n, self.hidden)
        out = self.readout(self.final_norm(h))
        return out * mask[..., None].to(dtype)

    def _all_pairs_in_blocks(
        self, h: torch.Tensor, shape: torch.Tensor, frac: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """The all-pairs rounds; without gradients on a CPU on blocks of structures whose pair tensors hold about
        ``PAIR_BLOCK_ELEMENTS`` numbers and so stay near the cache size (the same function). With gradients, or on
        other devices, the whole batch is one block. Shapes as ``_all_pairs`` (timed by
        experiments/bench_pair_blocks.py)."""
        b, n = h.shape[:2]
        on_cpu = h.device.type == "cpu"
        block = b if torch.is_grad_enabled() else pair_block_size(b, n, self.hidden, on_cpu)
        if block >= b:
            return self._all_pairs(h, shape, frac, mask)
        return torch.cat([self._all_pairs(h[s], shape[s], frac[s], mask[s]) for s in block_rows(b, block)])

    def _all_pairs(self, h: torch.Tensor, shape: torch.Tensor, frac: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The all-pairs rounds. h: (B, N, H); shape: (B, 9); frac: (B, N, 3); mask: (B, N) -> (B, N, H)."""
        edges = fourier_features(frac[:, None, :, :] - frac[:, :, None, :], self.frequencies)  # (B, N_i, N_j, 6F)
        for layer in self.layers:
            h = layer.dense(h, shape, edges, mask)
        return h
