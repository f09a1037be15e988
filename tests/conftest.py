"""Shared fixtures: small real datasets written with the project's own builders."""

from __future__ import annotations

import os
from pathlib import Path

import ase.io
import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.singlepoint import SinglePointCalculator

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")


@pytest.fixture(scope="session")
def crystals_h5(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """All six builder phases, 4 structures each, with an occupancy voxel cache."""
    from datamodules.builders import build_dataset

    out = tmp_path_factory.mktemp("data") / "crystals.h5"
    return build_dataset("crystals", out, count=4, voxels=["occupancy"], progress=False,
                         phases=["sc", "fcc", "bcc", "hcp", "diamond", "rocksalt"])


@pytest.fixture(scope="session")
def fcc_h5(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 rattled fcc Cu 2x2x2 cells (32 atoms each)."""
    from datamodules.builders import build_dataset

    out = tmp_path_factory.mktemp("data") / "fcc.h5"
    return build_dataset("crystals", out, count=24, progress=False, phases=["fcc"])


def make_frames(n: int = 5, seed: int = 0) -> list:
    """Rattled Al supercells carrying an energy, forces, a scalar info entry and a per-atom array."""
    rng = np.random.default_rng(seed)
    frames = []
    for i in range(n):
        atoms = bulk("Al", "fcc", cubic=True) * (2, 1, 1)
        atoms.rattle(0.02, seed=i)
        atoms.info["temperature"] = 300.0 + i
        atoms.arrays["tag_value"] = rng.normal(size=len(atoms))
        atoms.calc = SinglePointCalculator(atoms, energy=-3.0 * i, forces=rng.normal(size=(len(atoms), 3)))
        frames.append(atoms)
    return frames


@pytest.fixture()
def extxyz_file(tmp_path: Path) -> Path:
    path = tmp_path / "mine.extxyz"
    ase.io.write(path, make_frames())
    return path
