"""The interface every voxel encoding implements, and grid-size rules shared by all of them.

Grids live in fractional space: axis k of a (D, H, W) grid divides lattice vector k into ``G_k`` equal
steps, so a grid index ``u`` (float) maps to fractional coordinate ``u / G_k``. This makes every encoding
exactly periodic (a circular shift of the grid is a translation of the structure by whole voxels) and
works for any non-singular cell; voxels are cubes only for cubic cells with equal counts per axis.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence

import numpy as np
import torch

from lightning_gcd.errors import EncodingError
from lightning_gcd.structures import StructureBatch

GridShape = tuple[int, int, int]


class VoxelEncoding(ABC):
    """Encodes padded periodic structures to (B, C, D, H, W) grids and decodes grids back to atoms."""

    name: str = ""

    def __init__(self, species: Sequence[int]) -> None:
        if len(species) == 0:
            raise ValueError("a voxel encoding needs at least one species")
        self.species = [int(z) for z in species]
        lookup = torch.full((119,), -1, dtype=torch.long)
        lookup[torch.as_tensor(self.species)] = torch.arange(len(self.species))
        self._species_index = lookup  # (119,) atomic number -> channel, -1 if not encoded

    @property
    @abstractmethod
    def channels(self) -> list[str]:
        """Names of the C channels, in order."""

    @property
    def n_channels(self) -> int:
        return len(self.channels)

    @abstractmethod
    def encode(self, batch: StructureBatch, grid_shape: GridShape) -> torch.Tensor:
        """StructureBatch -> (B, C, D, H, W) float32 grid on the batch's device."""

    @abstractmethod
    def decode(self, grids: torch.Tensor, cell: torch.Tensor) -> StructureBatch:
        """(B, C, D, H, W) grids and (B, 3, 3) cells -> decoded StructureBatch (padded to the largest count)."""

    def attrs(self) -> dict[str, object]:
        """Attributes stored with a voxel cache so a reader knows how the grid was made."""
        return {"encoding": self.name, "species": np.asarray(self.species), "channels": list(self.channels)}

    def species_channel(self, numbers: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, N) atomic numbers -> (B, N) channel index; raises EncodingError on an unknown species."""
        idx = self._species_index.to(numbers.device)[numbers.clamp(0, 118)]
        unknown = mask & (idx < 0)
        if unknown.any():
            z = sorted(set(numbers[unknown].tolist()))
            raise EncodingError(f"atomic numbers {z} are not among this encoding's species {self.species}")
        return idx.clamp(min=0)


def check_cells(cell: torch.Tensor) -> None:
    """Refuse singular cells (|det| < 1e-6 Å³): fractional grids need three independent lattice vectors."""
    det = torch.linalg.det(cell.double())
    bad = torch.nonzero(det.abs() < 1e-6).flatten().tolist()
    if bad:
        raise EncodingError(f"singular cell in structures {bad[:5]}; voxel encodings need a periodic 3D cell")


def grid_shape_for(cell: np.ndarray | torch.Tensor, spacing: float, multiple: int = 1) -> GridShape:
    """Voxel counts per axis so that each lattice vector is cut into steps of about ``spacing`` Å.

    Counts are rounded to the nearest multiple of ``multiple`` (the U-Net's downsampling factor), at
    least ``multiple``.
    """
    if spacing <= 0:
        raise ValueError(f"grid spacing must be positive, got {spacing}")
    lengths = np.linalg.norm(np.asarray(cell, dtype=float).reshape(3, 3), axis=1)
    return tuple(max(multiple, int(round(length / spacing / multiple)) * multiple) for length in lengths)  # type: ignore[return-value]


def chebyshev_index_gap(frac_displacements: np.ndarray, grid_shape: GridShape) -> float:
    """Smallest Chebyshev distance, in voxels, over the given (M, 3) fractional pair displacements.

    Two atoms can share a voxel under some translation iff this is below 1 for their pair.
    """
    if len(frac_displacements) == 0:
        return math.inf
    return float(np.min(np.max(np.abs(frac_displacements) * np.asarray(grid_shape), axis=1)))


def pair_frac_displacements(atoms, cutoff: float) -> np.ndarray:
    """(M, 3) fractional displacement vectors of all periodic pairs closer than ``cutoff`` Å."""
    from ase.neighborlist import neighbor_list

    vectors = neighbor_list("D", atoms, cutoff)
    if len(vectors) == 0:
        return np.zeros((0, 3))
    return vectors @ np.linalg.inv(np.asarray(atoms.cell[:]))


def coarsest_grid_shape(
    atoms_list: Sequence, multiple: int = 1, margin: float = 0.1, max_per_axis: int = 256
) -> GridShape:
    """The coarsest common grid on which no translation can put two atoms of any structure in one voxel.

    Grid counts are proportional to the largest cell's lattice vector lengths and multiples of
    ``multiple``. A grid passes when every pair's Chebyshev distance in voxels is at least ``1 + margin``
    (the margin leaves room for thermal displacements not seen in the sample). The GCDM probe found that
    the coarsest such grid learns far faster than finer ones: the offsets channels carry the precision.
    """
    if len(atoms_list) == 0:
        raise ValueError("need at least one structure to choose a grid")
    lengths = np.max([np.linalg.norm(np.asarray(a.cell[:]), axis=1) for a in atoms_list], axis=0)
    longest = float(lengths.max())
    for n in range(multiple, max_per_axis + 1, multiple):
        shape = tuple(max(multiple, int(round(n * length / longest / multiple)) * multiple) for length in lengths)
        voxel_diag = float(np.linalg.norm(lengths / np.asarray(shape)))
        cutoff = (1.0 + margin) * voxel_diag + 1e-6
        if all(chebyshev_index_gap(pair_frac_displacements(a, cutoff), shape) >= 1.0 + margin for a in atoms_list):
            return shape  # type: ignore[return-value]
    raise EncodingError(f"no grid up to {max_per_axis} voxels per axis keeps one atom per voxel (overlapping atoms?)")
