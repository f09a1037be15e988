"""Voxel encodings: exact round trips, refusals, grid choice."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.geometry import get_distances
from scipy.optimize import linear_sum_assignment

from datamodules.builders.crystals import build_crystal, default_spec
from lightning_gcd.errors import EncodingError
from lightning_gcd.representations import coarsest_grid_shape, grid_shape_for, make_encoding
from lightning_gcd.structures import StructureBatch

PHASES = ["sc", "fcc", "bcc", "hcp", "diamond", "rocksalt"]


def _crystal(phase: str, seed: int = 0) -> Atoms:
    return build_crystal(default_spec(phase), (2, 2, 2), 0.05, True, np.random.default_rng(seed))


def _matched_error(a: Atoms, b: Atoms) -> float:
    """Largest periodic distance after the best one-to-one assignment (species must agree)."""
    assert len(a) == len(b)
    _, dist = get_distances(a.positions, b.positions, cell=a.cell, pbc=True)
    dist = dist + 1e6 * (a.numbers[:, None] != b.numbers[None, :])
    rows, cols = linear_sum_assignment(dist)
    return float(dist[rows, cols].max())


@pytest.mark.parametrize("phase", PHASES)
def test_occupancy_round_trip_exact(phase: str) -> None:
    atoms = [_crystal(phase, s) for s in range(3)]
    batch = StructureBatch.from_atoms(atoms, dtype=torch.float64)
    enc = make_encoding("occupancy", sorted(set(atoms[0].numbers)))
    shape = coarsest_grid_shape(atoms, multiple=4)
    grids = enc.encode(batch, shape)
    assert grids.shape == (3, enc.n_channels, *shape) and grids.dtype == torch.float32
    decoded = enc.decode(grids, batch.cell).to_atoms()
    for a, b in zip(atoms, decoded, strict=True):
        assert len(a) == len(b)
        assert _matched_error(a, b) < 1e-4


def test_occupancy_triclinic_and_padding() -> None:
    cell = np.array([[5.0, 0.0, 0.0], [1.5, 4.5, 0.0], [0.7, 0.9, 6.0]])
    rng = np.random.default_rng(0)
    a = Atoms("Cu6", scaled_positions=(np.arange(6)[:, None] / 6 + rng.random((6, 3)) * 0.05) % 1, cell=cell, pbc=True)
    b = Atoms("Cu2", scaled_positions=[[0.1, 0.1, 0.1], [0.6, 0.6, 0.6]], cell=cell, pbc=True)
    batch = StructureBatch.from_atoms([a, b], dtype=torch.float64)
    enc = make_encoding("occupancy", [29])
    decoded = enc.decode(enc.encode(batch, (12, 12, 12)), batch.cell)
    assert decoded.n_atoms.tolist() == [6, 2]
    for x, y in zip([a, b], decoded.to_atoms(), strict=True):
        assert _matched_error(x, y) < 1e-4


def test_gaussian_round_trip_within_tolerance() -> None:
    atoms = [_crystal(p, 1) for p in ("fcc", "bcc", "rocksalt")]
    for a in atoms:
        batch = StructureBatch.from_atoms([a], dtype=torch.float64)
        enc = make_encoding("gaussian", sorted(set(a.numbers)), sigma=0.4)
        grids = enc.encode(batch, grid_shape_for(a.cell[:], 0.3, 1))
        decoded = enc.decode(grids, batch.cell).to_atoms()[0]
        assert len(decoded) == len(a)
        assert _matched_error(a, decoded) < 1e-3  # documented tolerance


def test_gaussian_peak_height_is_one_on_a_grid_point() -> None:
    a = Atoms("Cu", positions=[[0, 0, 0]], cell=np.eye(3) * 6, pbc=True)
    enc = make_encoding("gaussian", [29], sigma=0.5)
    grid = enc.encode(StructureBatch.from_atoms([a]), (20, 20, 20))
    assert abs(float(grid.max()) - 1.0) < 1e-6
    # integral of a 3D Gaussian: (2π σ²)^(3/2) / voxel volume
    assert abs(float(grid.sum()) * (6 / 20) ** 3 - (2 * np.pi * 0.25) ** 1.5) < 1e-3


def test_refusals() -> None:
    fcc = _crystal("fcc")
    batch = StructureBatch.from_atoms([fcc])
    with pytest.raises(EncodingError, match="too coarse"):
        make_encoding("occupancy", [29]).encode(batch, (2, 2, 2))
    with pytest.raises(EncodingError, match="too coarse"):
        make_encoding("gaussian", [29], sigma=0.2).encode(batch, (12, 12, 12))
    with pytest.raises(EncodingError, match="too wide"):
        make_encoding("gaussian", [29], sigma=1.5).encode(batch, (48, 48, 48))
    with pytest.raises(EncodingError, match="not among"):
        make_encoding("occupancy", [13]).encode(batch, (8, 8, 8))
    flat = StructureBatch.from_atoms([fcc])
    flat.cell[0, 2] = 0.0
    with pytest.raises(EncodingError, match="singular"):
        make_encoding("occupancy", [29]).encode(flat, (8, 8, 8))
    with pytest.raises(ValueError, match="unknown voxel encoding"):
        make_encoding("sparse", [29])


def test_translation_by_whole_voxels_is_a_roll() -> None:
    fcc = _crystal("fcc")
    batch = StructureBatch.from_atoms([fcc], dtype=torch.float64)
    enc = make_encoding("occupancy", [29])
    grid = enc.encode(batch, (8, 8, 8))
    shifted = StructureBatch(
        torch.remainder(batch.frac_coords + torch.tensor([2, 3, 5]) / 8, 1.0), batch.numbers, batch.mask, batch.cell
    )
    torch.testing.assert_close(
        enc.encode(shifted, (8, 8, 8)), torch.roll(grid, (2, 3, 5), dims=(2, 3, 4)), atol=1e-5, rtol=0
    )


def test_coarsest_grid_is_safe_and_coarse() -> None:
    fcc = [_crystal("fcc", s) for s in range(4)]
    shape = coarsest_grid_shape(fcc, multiple=4)
    assert shape == (8, 8, 8)  # 0.9 Å voxels for 2x2x2 fcc Cu, as in the GCDM probe
    enc = make_encoding("occupancy", [29])
    rng = np.random.default_rng(0)
    for _ in range(20):  # no translation puts two atoms in one voxel
        moved = StructureBatch.from_atoms([a.copy() for a in fcc], dtype=torch.float64)
        moved.frac_coords = torch.remainder(moved.frac_coords + torch.as_tensor(rng.random(3)), 1.0)
        enc.encode(moved, shape)
    assert coarsest_grid_shape([_crystal("diamond")], multiple=4) == (12, 12, 12)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_encodings_on_cuda() -> None:  # pragma: no cover - runs only where a GPU exists
    fcc = _crystal("fcc")
    batch = StructureBatch.from_atoms([fcc]).to("cuda")
    for name, opts, shape in (("occupancy", {}, (8, 8, 8)), ("gaussian", {"sigma": 0.4}, (24, 24, 24))):
        enc = make_encoding(name, [29], **opts)
        decoded = enc.decode(enc.encode(batch, shape), batch.cell)
        assert decoded.frac_coords.is_cuda and int(decoded.n_atoms[0]) == 32
