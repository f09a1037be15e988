"""Shared plumbing of the structure metrics: input conversion and an exact float64 pair list.

The pair search itself is ``lightning_gcd.periodic.neighbor_search`` (sorted-column sweep or cell lists,
any cell shape, small cells included; half lists for symmetric quantities). This module only decides the precision: by
default the search runs in float32 with a small safety margin on the cutoff and the distances of the edges found are
then recomputed in
float64 from the float64 coordinates and the integer image shifts, so the metrics bin exactly the
same distances as ASE (float64) while the search pays float32 memory traffic.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from ase import Atoms

from lightning_gcd.periodic import _per_structure_matmul, neighbor_search
from lightning_gcd.structures import StructureBatch

#: What every metric's ``update`` accepts: a batch, one ``Atoms`` or a list of them.
Structures = StructureBatch | Atoms | Sequence[Atoms]

MAX_Z = 118


def as_batch(structures: Structures, dtype: torch.dtype = torch.float64) -> StructureBatch:
    """A ``StructureBatch`` from a batch (returned as is), one ``Atoms`` or a list of ``Atoms``.

    ``Atoms`` are converted in float64 so that metrics computed from files match ASE exactly.
    """
    if isinstance(structures, StructureBatch):
        return structures
    if isinstance(structures, Atoms):
        structures = [structures]
    structures = list(structures)
    if not structures:
        raise ValueError("no structures given")
    return StructureBatch.from_atoms(structures, dtype=dtype)


def as_atoms_list(structures: Structures) -> list[Atoms]:
    if isinstance(structures, StructureBatch):
        return structures.to_atoms()
    if isinstance(structures, Atoms):
        return [structures]
    return list(structures)


def cell_volumes(cell: torch.Tensor) -> torch.Tensor:
    """(B, 3, 3) -> (B,) float64 |det| in Å³."""
    return torch.linalg.det(cell.double()).abs()


def element_number(z: int | str) -> int:
    """Atomic number from a number or a chemical symbol."""
    if isinstance(z, str):
        from ase.data import atomic_numbers

        if z not in atomic_numbers:
            raise ValueError(f"unknown element {z!r}")
        return int(atomic_numbers[z])
    z = int(z)
    if not 1 <= z <= MAX_Z:
        raise ValueError(f"atomic number {z} outside 1..{MAX_Z}")
    return z


@dataclass
class Pairs:
    """Periodic neighbour pairs of a padded batch (ASE ``neighbor_list`` semantics).

    Attributes:
        src, dst: (E,) flat atom indices into ``B * N`` (``b * N + i``).
        batch: (E,) structure index of each pair.
        distances: (E,) float64 Å, ``|r_dst + S @ cell - r_src|``; every pair with ``d < cutoff``.
        n: padded atoms per structure (``N``).
        half: True when each pair is listed once (as (i, j, S) or as (j, i, -S)); False: every
            directed pair (both orientations).
    """

    src: torch.Tensor
    dst: torch.Tensor
    batch: torch.Tensor
    distances: torch.Tensor
    n: int
    half: bool = False


def find_pairs(
    batch: StructureBatch, cutoff: float, search_dtype: torch.dtype = torch.float32, half: bool = False
) -> Pairs:
    """Every pair (images included) with ``distance < cutoff`` Å, distances in float64, in no particular
    order (grouped by structure).

    ``search_dtype=torch.float32`` runs the neighbour search in float32 on a cutoff enlarged by a margin
    above float32 rounding, then recomputes the distances in float64 and applies the exact cutoff;
    ``torch.float64`` searches in float64 directly. Both give the same pairs. On the CPU the search is
    always float64: the candidate tests cost about the same in either precision there, and the float64
    search returns the exact distances without the recomputation pass (faster in total); ``search_dtype`` matters on
    GPUs. ``half=True`` lists each pair once (half the work;
    symmetric quantities count it for both atoms), else every directed pair.
    """
    mask = batch.mask.bool()
    cell = batch.cell.double()
    frac = batch.frac_coords.double()
    frac = frac - torch.floor(frac)  # into [0, 1) (values of exactly 1.0 from rounding are harmless)
    b, n, _ = frac.shape
    device = frac.device
    if b == 0 or not bool(mask.any()):
        empty = torch.zeros(0, dtype=torch.long, device=device)
        return Pairs(empty, empty, empty, torch.zeros(0, dtype=torch.float64, device=device), n, half)
    with torch.no_grad():
        if search_dtype == torch.float64 or device.type == "cpu":
            # on the CPU the float64 search costs no more than a float32 one plus the float64 recomputation
            found = neighbor_search(frac, cell, mask, cutoff, half=half, shifts=False, distances=True)
            pair_batch = torch.div(found.src, n, rounding_mode="floor") if b > 1 else torch.zeros_like(found.src)
            return Pairs(found.src, found.dst, pair_batch, found.distances, n, half)
        # The shifts come back relative to the coordinates as given; the float32 copy differs from the
        # float64 one by rounding only (never by a whole cell, even where 0.99999999 rounds to 1.0),
        # so they apply unchanged to the float64 coordinates.
        longest = float(cell.norm(dim=-1).sum(dim=-1).max())
        margin = 1e-5 + 64.0 * float(torch.finfo(search_dtype).eps) * (longest + cutoff)
        found = neighbor_search(frac.to(search_dtype), cell.to(search_dtype), mask, cutoff + margin, half=half)
        src, dst, shifts = found.src, found.dst, found.shifts
        pair_batch = torch.div(src, n, rounding_mode="floor")
        flat = frac.reshape(-1, 3)
        dfrac = flat[dst] - flat[src] + shifts.double()
        distances = _per_structure_matmul(dfrac, cell, pair_batch).norm(dim=-1)
        keep = distances < cutoff
        if not bool(keep.all()):
            keep = keep.nonzero(as_tuple=True)[0]
            src, dst, pair_batch, distances = src[keep], dst[keep], pair_batch[keep], distances[keep]
        return Pairs(src, dst, pair_batch, distances, n, half)


def species_counts(batch: StructureBatch) -> torch.Tensor:
    """(B, MAX_Z + 1) float64 number of atoms of each atomic number per structure."""
    b, n = batch.numbers.shape
    z = torch.where(batch.mask.bool(), batch.numbers.long(), torch.zeros_like(batch.numbers.long()))
    idx = torch.arange(b, device=z.device)[:, None] * (MAX_Z + 1) + z
    counts = torch.bincount(idx.reshape(-1), weights=batch.mask.reshape(-1).double(), minlength=b * (MAX_Z + 1))
    return counts.view(b, MAX_Z + 1)


def to_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)
