"""Voxel encodings of periodic structures: occupancy + offset (GCDM) and Gaussian density (VoxMol-style)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lightning_gcd.representations.base import (
    GridShape,
    VoxelEncoding,
    coarsest_grid_shape,
    grid_shape_for,
)
from lightning_gcd.representations.gaussian import GaussianDensityEncoding
from lightning_gcd.representations.occupancy import OccupancyOffsetEncoding

ENCODINGS: dict[str, type[VoxelEncoding]] = {
    OccupancyOffsetEncoding.name: OccupancyOffsetEncoding,
    GaussianDensityEncoding.name: GaussianDensityEncoding,
}


def make_encoding(name: str, species: Sequence[int], **options: Any) -> VoxelEncoding:
    """Build the encoding called ``name`` ("occupancy" or "gaussian") for the given atomic numbers."""
    if name not in ENCODINGS:
        raise ValueError(f"unknown voxel encoding '{name}'; choose one of {sorted(ENCODINGS)}")
    return ENCODINGS[name](list(species), **options)


__all__ = [
    "ENCODINGS",
    "GaussianDensityEncoding",
    "GridShape",
    "OccupancyOffsetEncoding",
    "VoxelEncoding",
    "coarsest_grid_shape",
    "grid_shape_for",
    "make_encoding",
]
