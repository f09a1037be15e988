"""Atomic layers of a bicrystal and the atom count of each of its two boundaries.

A periodic bicrystal has two boundaries, and a generated one (in-painted, then relaxed or annealed) need not
give both the same number of atoms: the cell's count n = N − N_perfect is then the sum of two boundaries in
different states, and its [n] is not a boundary's. ``boundary_excess`` splits n between the boundaries by
counting atoms in the half of the cell around each one — the halves meet in gaps between atomic layers at
the grain centres, which in-painting keeps fixed, so the count is compared with the template's there.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from ase import Atoms

__all__ = ["atomic_layers", "boundary_excess", "half_cell_counts", "partitions"]


def atomic_layers(atoms: Atoms, gap: float = 0.5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The atomic layers normal to z: atoms whose heights follow each other within ``gap`` Å (periodic) form one
    layer. Returns (centre Å, atom count, thickness Å) per layer, by height."""
    lz = float(atoms.cell.lengths()[2])
    z = np.sort(np.mod(atoms.positions[:, 2], lz))
    steps = np.diff(np.r_[z, z[0] + lz])
    first = (int(np.argmax(steps)) + 1) % len(z)  # start after the widest gap so no layer straddles the cut
    z = np.r_[z[first:], z[:first] + lz]
    cuts = np.nonzero(np.diff(z) > gap)[0] + 1
    layers = np.split(z, cuts)
    return (
        np.array([np.mod(layer.mean(), lz) for layer in layers]),
        np.array([layer.size for layer in layers]),
        np.array([layer[-1] - layer[0] for layer in layers]),
    )


def _gap_near(centres: np.ndarray, target: float, lz: float) -> float:
    """The height of the middle of the gap between atomic layers nearest ``target`` (Å)."""
    c = np.sort(centres)
    gaps = np.mod((c + np.r_[c[1:], c[0] + lz]) / 2, lz)
    return float(gaps[int(np.argmin(np.abs((gaps - target + lz / 2) % lz - lz / 2)))])


def partitions(template: Atoms, boundary_z: Sequence[float]) -> tuple[float, float]:
    """Fractional heights (inner, outer) where the halves of the cell around its two boundary planes meet: the
    gaps between atomic layers nearest the two grain centres (the grain between the planes, the one across the
    periodic boundary). Taken from the template and applied to structures generated from it as fractions of
    their cell, so a relaxed cell length moves them with the atoms (each lies half a layer spacing from any
    atom)."""
    lz = float(template.cell.lengths()[2])
    low, high = np.sort(np.mod(np.asarray(boundary_z, dtype=np.float64), lz))
    centres, _, _ = atomic_layers(template)
    inner = _gap_near(centres, (low + high) / 2, lz)
    outer = _gap_near(centres, np.mod((high + low + lz) / 2, lz), lz)
    return inner / lz, outer / lz


def half_cell_counts(atoms: Atoms, split: tuple[float, float]) -> tuple[int, int]:
    """Atoms in the half of the cell around the lower and the upper boundary plane, the halves meeting at the
    fractional heights ``split`` = (inner, outer) of ``partitions``."""
    inner, outer = split
    frac = np.mod(atoms.get_scaled_positions(wrap=False)[:, 2], 1.0)
    around_low = np.mod(frac - outer, 1.0) < np.mod(inner - outer, 1.0)
    return int(around_low.sum()), int((~around_low).sum())


def boundary_excess(
    atoms: Atoms, template: Atoms, template_boundary_z: Sequence[float], template_excess: Sequence[int]
) -> tuple[int, int]:
    """Atoms more than the perfect bicrystal at the lower and the upper boundary of ``atoms``, a structure
    generated from ``template`` (same grains, its cell possibly relaxed along z), whose boundaries have
    ``template_excess`` atoms each (a search candidate: n/2 at both)."""
    split = partitions(template, template_boundary_z)
    mine, theirs = half_cell_counts(atoms, split), half_cell_counts(template, split)
    return (
        int(template_excess[0]) + mine[0] - theirs[0],
        int(template_excess[1]) + mine[1] - theirs[1],
    )
