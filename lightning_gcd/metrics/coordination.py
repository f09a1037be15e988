"""Coordination numbers: per-atom counts of neighbours within a cutoff, histogrammed per species.

The coordination number of atom i is the number of periodic neighbours j (images included, i itself
only through a non-zero image shift) with ``d_ij < cutoff``, exactly ASE's
``np.bincount(neighbor_list("i", atoms, cutoffs))`` with the same cutoffs: one float for every pair,
or a dict ``{(Z1, Z2): r}`` (numbers or symbols, symmetric, pairs not listed are never neighbours).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torchmetrics import Metric

from lightning_gcd.metrics._pairs import MAX_Z, Structures, as_batch, element_number, find_pairs

__all__ = [
    "CoordinationHistogram",
    "coordination_numbers",
    "cutoff_from_rdf_minimum",
    "sp_fractions",
    "CARBON_CUTOFF",
]

#: Å, the C–C bond cutoff of the sp/sp²/sp³ fractions (Kwon et al. 2024 use 1.8–1.85 Å).
CARBON_CUTOFF = 1.85

Cutoffs = float | Mapping[tuple[int | str, int | str], float]


def _cutoff_table(cutoffs: Cutoffs) -> tuple[float, torch.Tensor | None]:
    """(max cutoff, (MAX_Z+1, MAX_Z+1) float64 table or None for one global cutoff)."""
    if isinstance(cutoffs, Mapping):
        if not cutoffs:
            raise ValueError("empty cutoff dictionary")
        table = torch.zeros(MAX_Z + 1, MAX_Z + 1, dtype=torch.float64)
        for (a, b), c in cutoffs.items():  # in order, like ASE: a later entry wins
            za, zb = element_number(a), element_number(b)
            table[za, zb] = table[zb, za] = float(c)
        top = float(table.max())
        if not top > 0:
            raise ValueError(f"all cutoffs are zero in {dict(cutoffs)}")
        return top, table
    c = float(cutoffs)
    if not c > 0:
        raise ValueError(f"cutoff must be positive, got {cutoffs}")
    return c, None


def coordination_numbers(
    structures: Structures, cutoffs: Cutoffs, search_dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """(B, N) int64 coordination number of every atom (0 for padding)."""
    batch = as_batch(structures)
    top, table = _cutoff_table(cutoffs)
    b, n = batch.numbers.shape
    found = find_pairs(batch, top, search_dtype=search_dtype, half=True)  # each pair once: count both ends
    src, dst = found.src, found.dst
    if table is not None:
        z = batch.numbers.reshape(-1).long().clamp(0, MAX_Z)
        table = table.to(found.distances.device)
        keep = found.distances < table[z[src], z[dst]]  # the table is symmetric
        src, dst = src[keep], dst[keep]
    cn = torch.bincount(torch.cat([src, dst]), minlength=b * n).view(b, n)
    return torch.where(batch.mask.bool(), cn, torch.zeros_like(cn))


def cutoff_from_rdf_minimum(r, g, smooth: int = 3, tolerance: float = 0.02) -> float:
    """A coordination cutoff (Å) at the first minimum after the first peak of a reference g(r).

    The first peak is the first local maximum of the (``smooth``-bin moving average) g(r) that reaches
    half of the global maximum. From there the curve is followed outward to its lowest point before it
    rises again by more than 10 % of the peak height; the cutoff is the middle of the flat bottom (bins
    within ``tolerance`` × peak height of that lowest value), which for a crystal is the middle of the
    gap between the first and second shells. Raises ``ValueError`` when g(r) has no peak or no minimum
    after it inside the range.
    """
    r = np.asarray(r, dtype=np.float64).ravel()
    g = np.asarray(g, dtype=np.float64).ravel()
    if r.shape != g.shape or r.size < 3:
        raise ValueError("r and g must be 1-D arrays of the same length (at least 3 bins)")
    g = np.nan_to_num(g)
    if smooth > 1:
        kernel = np.ones(int(smooth)) / int(smooth)
        gs = np.convolve(np.pad(g, (smooth // 2, smooth - 1 - smooth // 2), mode="edge"), kernel, mode="valid")
    else:
        gs = g
    top = gs.max()
    if not top > 0:
        raise ValueError("g(r) is zero everywhere: no peak to take a cutoff from")
    i = int(np.argmax(gs >= 0.5 * top))
    while i + 1 < gs.size and gs[i + 1] >= gs[i]:
        i += 1
    peak = gs[i]
    m = i
    rose = False
    for k in range(i + 1, gs.size):
        if gs[k] < gs[m]:
            m = k
        elif gs[k] > gs[m] + 0.1 * peak:
            rose = True
            break
    if m == i or not rose:
        raise ValueError(
            f"no minimum after the first peak (r = {r[i]:.2f} Å) within r <= {r[-1]:.2f} Å; "
            "pass a coordination cutoff explicitly or use a larger r_max"
        )
    flat = gs <= gs[m] + tolerance * peak
    lo = m
    while lo - 1 > i and flat[lo - 1]:
        lo -= 1
    hi = m
    while hi + 1 < gs.size and flat[hi + 1]:
        hi += 1
    return float(0.5 * (r[lo] + r[hi]))


class CoordinationHistogram(Metric):
    """Histogram of coordination numbers per species; exact under DDP (summed integer counts).

    State ``hist`` (MAX_Z + 1, max_cn + 1) int64: ``hist[Z, k]`` counts atoms of atomic number Z with
    k neighbours; coordination numbers above ``max_cn`` are counted in the last bin (read it as
    ">= max_cn").

    ``compute()`` returns ``{Z: (max_cn + 1,) float64 fractions}`` for every species seen.
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = None

    def __init__(self, cutoffs: Cutoffs, max_cn: int = 16, search_dtype: torch.dtype = torch.float32, **kwargs) -> None:
        super().__init__(**kwargs)
        self.cutoffs = dict(cutoffs) if isinstance(cutoffs, Mapping) else float(cutoffs)
        _cutoff_table(self.cutoffs)  # validate now
        if int(max_cn) < 1:
            raise ValueError(f"max_cn must be at least 1, got {max_cn}")
        self.max_cn = int(max_cn)
        self.search_dtype = search_dtype
        self.add_state("hist", torch.zeros(MAX_Z + 1, self.max_cn + 1, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, batch: Structures) -> None:
        batch = as_batch(batch)
        cn = coordination_numbers(batch, self.cutoffs, search_dtype=self.search_dtype)
        mask = batch.mask.bool()
        z = batch.numbers.long()[mask].clamp(0, MAX_Z)
        k = cn[mask].clamp(max=self.max_cn)
        flat = torch.bincount(z * (self.max_cn + 1) + k, minlength=(MAX_Z + 1) * (self.max_cn + 1))
        self.hist += flat.view(MAX_Z + 1, self.max_cn + 1).to(self.hist)

    @property
    def species(self) -> list[int]:
        return [int(z) for z in torch.nonzero(self.hist.sum(1)).flatten().tolist()]

    def fractions(self, z: int | str) -> torch.Tensor:
        """(max_cn + 1,) fraction of atoms of species ``z`` with each coordination number (NaN if none)."""
        row = self.hist[element_number(z)].double()
        total = row.sum()
        return row / total if total > 0 else torch.full_like(row, float("nan"))

    def compute(self) -> dict[int, torch.Tensor]:
        return {z: self.fractions(z) for z in self.species}

    def sp_fractions(self, element: int | str = 6) -> dict[str, float]:
        """sp / sp2 / sp3 fractions (coordination 2 / 3 / 4) of ``element`` from the accumulated histogram.

        Meaningful when this histogram was built with the C–C bond cutoff (``CARBON_CUTOFF``).
        """
        f = self.fractions(element)
        return {"sp": float(f[2]), "sp2": float(f[3]), "sp3": float(f[4])}


def sp_fractions(
    structures: Structures,
    cutoff: float = CARBON_CUTOFF,
    element: int | str = 6,
    search_dtype: torch.dtype = torch.float32,
) -> dict[str, float]:
    """Fractions of ``element`` atoms (default carbon) with 2 / 3 / 4 neighbours of the same element
    closer than ``cutoff`` (default 1.85 Å): ``{"sp": ..., "sp2": ..., "sp3": ...}`` over all given
    structures (NaN when there is no such atom)."""
    z = element_number(element)
    metric = CoordinationHistogram({(z, z): cutoff}, max_cn=8, search_dtype=search_dtype)
    metric.update(structures)
    return metric.sp_fractions(z)
