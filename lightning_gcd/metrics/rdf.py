"""Radial distribution function g(r) of periodic structures, identical to ``ase.geometry.rdf.get_rdf``.

Per structure (``n_c`` centre atoms, ``n_p`` partner atoms, volume ``V``) and bin ``k`` covering
``((k-1) dr, k dr]`` (ASE bins a distance by ``ceil(d / dr)``; exactly ``d = 0`` is dropped):

    g_k = count_k / (n_c * (n_p / V) * 4π/3 ((k dr)³ - ((k-1) dr)³))

where ``count_k`` counts directed pairs (i, j, image) with i a centre and j a partner, all periodic
images included. For the total g(r) centres and partners are all atoms; for a partial ``(Z1, Z2)``
centres are atoms of Z1 and partners atoms of Z2 (ASE's ``elements=(Z1, Z2)``, the LAMMPS
convention). Unlike ASE, any ``r_max`` is allowed, also above half the cell width (every image is
counted, as a brute-force image sum would). The metric averages g(r) over structures, as ASE does
for a list of images.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torchmetrics import Metric

from lightning_gcd.metrics._pairs import (
    MAX_Z,
    Structures,
    as_batch,
    cell_volumes,
    element_number,
    find_pairs,
    species_counts,
)

__all__ = ["RadialDistribution", "structure_rdf", "rdf_l1", "bin_edges", "bin_centres"]


def bin_edges(r_max: float, n_bins: int) -> np.ndarray:
    """(n_bins + 1,) bin edges from 0 to ``r_max`` (Å), as ASE."""
    return np.linspace(0.0, r_max, n_bins + 1)


def bin_centres(r_max: float, n_bins: int) -> np.ndarray:
    """(n_bins,) bin mid points (Å), ASE's ``rr``."""
    e = bin_edges(r_max, n_bins)
    return 0.5 * (e[:-1] + e[1:])


def _shell_volumes(r_max: float, n_bins: int) -> np.ndarray:
    e = bin_edges(r_max, n_bins)
    dr = float(r_max / n_bins)
    return (4.0 * math.pi * dr * (e**2 + e * dr + dr**2 / 3.0))[:-1]  # ASE's expression, bit for bit


def _normalize_pairs(pairs: str | Sequence[tuple[int | str, int | str]]) -> list[tuple[int, int]] | None:
    if isinstance(pairs, str):
        if pairs != "total":
            raise ValueError(f"pairs must be 'total' or a list of (Z1, Z2), got {pairs!r}")
        return None
    out = [(element_number(a), element_number(b)) for a, b in pairs]
    if not out:
        raise ValueError("pairs is an empty list; use 'total' for the total g(r)")
    if len(set(out)) != len(out):
        raise ValueError(f"duplicate pairs in {out}")
    return out


def structure_rdf(
    structures: Structures,
    r_max: float = 6.0,
    n_bins: int = 120,
    pairs: str | Sequence[tuple[int | str, int | str]] = "total",
    search_dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """g(r) of every structure in a batch.

    Returns:
        ``(g, valid)``: ``g`` (B, P, n_bins) float64 with ``P = 1`` for ``"total"`` or one row per pair;
        ``valid`` (B, P) bool, False where a structure has no centre or no partner atom (g undefined,
        returned as 0).
    """
    if not r_max > 0 or n_bins < 1:
        raise ValueError(f"need r_max > 0 and n_bins >= 1, got {r_max}, {n_bins}")
    batch = as_batch(structures)
    plist = _normalize_pairs(pairs)
    n_pairs = 1 if plist is None else len(plist)
    b = len(batch)
    device = batch.frac_coords.device
    dr = float(r_max / n_bins)
    # half list: each pair once; a directed count is twice that (i -> j and j -> i, images included)
    found = find_pairs(batch, r_max * (1.0 + 1e-12), search_dtype=search_dtype, half=True)
    counts_z = species_counts(batch)  # (B, MAX_Z+1)
    if plist is None:
        # bin k + 1 of n_bins + 2 per structure: bin 0 takes d = 0, bin n_bins + 1 anything beyond r_max
        # (no boolean gathers: one bincount over all pairs)
        k = torch.ceil(found.distances / dr).clamp_(0, n_bins + 1).long()
        if b > 1:
            k += found.batch * (n_bins + 2)
        counts = torch.bincount(k, minlength=b * (n_bins + 2)).view(b, n_bins + 2)[:, 1 : n_bins + 1]
        counts = 2.0 * counts.double().view(b, 1, n_bins)
        n_c = counts_z.sum(1, keepdim=True)  # (B, 1)
        n_p = n_c
    else:
        k = torch.ceil(found.distances / dr).long()
        keep = (k >= 1) & (k <= n_bins)
        src, dst, eb, k = found.src[keep], found.dst[keep], found.batch[keep], k[keep]
        z = batch.numbers.reshape(-1).long().clamp(0, MAX_Z)
        table = torch.full((MAX_Z + 1, MAX_Z + 1), -1, dtype=torch.long, device=device)
        for idx, (z1, z2) in enumerate(plist):
            table[z1, z2] = idx
        zs, zd = z[src], z[dst]
        # a half pair i-j is the directed pairs (i -> j) and (j -> i): one count for each listed orientation
        p = torch.cat([table[zs, zd], table[zd, zs]])
        eb2, k2 = torch.cat([eb, eb]), torch.cat([k, k])
        sel = p >= 0
        flat = (eb2[sel] * n_pairs + p[sel]) * n_bins + (k2[sel] - 1)
        counts = torch.bincount(flat, minlength=b * n_pairs * n_bins).double().view(b, n_pairs, n_bins)
        z1 = torch.tensor([a for a, _ in plist], device=device)
        z2 = torch.tensor([c for _, c in plist], device=device)
        n_c = counts_z[:, z1]  # (B, P)
        n_p = counts_z[:, z2]
    volume = cell_volumes(batch.cell).to(device)  # (B,)
    shells = torch.as_tensor(_shell_volumes(r_max, n_bins), device=device)
    norm = n_c[..., None] * (n_p / volume[:, None])[..., None] * shells  # (B, P, n_bins)
    valid = (n_c > 0) & (n_p > 0)
    g = torch.where(
        valid[..., None], counts / torch.where(norm > 0, norm, torch.ones_like(norm)), torch.zeros_like(norm)
    )
    return g, valid


def rdf_l1(g_a, g_b, dr: float):
    """∫ |g_a(r) - g_b(r)| dr over the common bins (Å): the ``val/rdf_l1`` metric.

    Accepts numpy arrays or tensors (same type out: a float for 1-D numpy input, a tensor for tensors);
    extra leading axes are kept.
    """
    if isinstance(g_a, torch.Tensor) or isinstance(g_b, torch.Tensor):
        a = torch.as_tensor(g_a, dtype=torch.float64)
        b = torch.as_tensor(g_b, dtype=torch.float64, device=a.device)
        return (a - b).abs().sum(-1) * dr
    out = np.abs(np.asarray(g_a, dtype=np.float64) - np.asarray(g_b, dtype=np.float64)).sum(-1) * dr
    return float(out) if np.ndim(out) == 0 else out


class RadialDistribution(Metric):
    """Mean g(r) over all structures seen, total or per element pair; exact under DDP.

    States (all summed across processes): ``g_sum`` (P, n_bins) the sum of per-structure g(r), and
    ``n_structures`` (P,) how many structures contributed to each row (those with at least one centre
    and one partner atom).

    Args:
        r_max: Å, upper edge of the last bin.
        n_bins: number of bins of width ``r_max / n_bins``.
        pairs: ``"total"`` or a list of ``(Z1, Z2)`` (numbers or symbols) for partial g(r).
        search_dtype: precision of the neighbour search (distances are always float64).

    ``compute()`` returns (n_bins,) for ``"total"``, else (P, n_bins); rows without any structure are NaN.
    ``r`` holds the bin centres (Å) and ``dr`` the bin width.
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = None

    def __init__(
        self,
        r_max: float = 6.0,
        n_bins: int = 120,
        pairs: str | Sequence[tuple[int | str, int | str]] = "total",
        search_dtype: torch.dtype = torch.float32,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if not r_max > 0 or int(n_bins) < 1:
            raise ValueError(f"need r_max > 0 and n_bins >= 1, got {r_max}, {n_bins}")
        self.r_max = float(r_max)
        self.n_bins = int(n_bins)
        self.pairs = _normalize_pairs(pairs)
        self.search_dtype = search_dtype
        n_rows = 1 if self.pairs is None else len(self.pairs)
        self.add_state("g_sum", torch.zeros(n_rows, self.n_bins, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("n_structures", torch.zeros(n_rows, dtype=torch.float64), dist_reduce_fx="sum")

    @property
    def dr(self) -> float:
        return self.r_max / self.n_bins

    @property
    def r(self) -> np.ndarray:
        """(n_bins,) bin centres in Å."""
        return bin_centres(self.r_max, self.n_bins)

    def update(self, batch: Structures) -> None:
        batch = as_batch(batch)
        g, valid = structure_rdf(
            batch,
            self.r_max,
            self.n_bins,
            "total" if self.pairs is None else self.pairs,
            search_dtype=self.search_dtype,
        )
        self.g_sum += (g * valid[..., None]).sum(0).to(self.g_sum)
        self.n_structures += valid.sum(0).to(self.n_structures)

    def compute(self) -> torch.Tensor:
        n = self.n_structures[:, None]
        mean = torch.where(n > 0, self.g_sum / n.clamp(min=1), torch.full_like(self.g_sum, float("nan")))
        return mean[0] if self.pairs is None else mean
