"""Every shipped LightningCLI config parses (no unknown keys) and resolves from any working directory.

The studies' settings files (``experiments/*/profiles/``, ``experiments/bench_networks.yaml``) are not
LightningCLI configs: ``lightning_gcd.runner.profiles.load_profile`` reads them, and
``tests/unit/test_runner.py`` checks that they load to the settings the studies ran with."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import REPO, run_gcd

SETTINGS_FILES = {"bench_networks.yaml"}
CONFIGS = sorted(
    str(p.relative_to(REPO))
    for p in (REPO / "experiments").rglob("*.yaml")
    if not {"results", "profiles"} & set(p.parts) and p.name not in SETTINGS_FILES
)


@pytest.mark.parametrize("config", CONFIGS)
def test_config_parses_from_another_directory(tmp_path: Path, config: str) -> None:
    run = run_gcd("fit", "--config", str(REPO / config), "--print_config", cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    # the diffusion models, or an application's model (the spectrum forward model)
    assert re.search(r"^model:\n  class_path: lightning_gcd\.(models|spectra)\.", run.stdout, re.MULTILINE)


def test_particle_smoke_fit_and_sample(tmp_path: Path) -> None:
    fit = run_gcd(
        "fit",
        "--config",
        str(REPO / "experiments/smoke/particle.yaml"),
        "--trainer.enable_progress_bar",
        "false",
        cwd=tmp_path,
    )
    assert fit.returncode == 0, fit.stderr[-3000:]
    last = tmp_path / "runs/smoke_particle/checkpoints/last.ckpt"
    assert last.exists()
    import ase.io

    out = tmp_path / "p.extxyz"
    sample = run_gcd(
        "sample",
        "--ckpt",
        str(last),
        "--n",
        "2",
        "--steps",
        "5",
        "--supercell",
        "2",
        "1",
        "1",
        "--out",
        str(out),
        "--no-progress",
        cwd=tmp_path,
    )
    assert sample.returncode == 0, sample.stderr[-3000:]
    frames = ase.io.read(out, ":")
    assert [len(f) for f in frames] == [64, 64]  # density × volume: twice the training cell, twice the atoms
    # --n-atoms/--density: exactly that many atoms in the cubic cell of that density
    out = tmp_path / "n50.extxyz"
    sample = run_gcd(
        "sample",
        "--ckpt",
        str(last),
        "--n",
        "2",
        "--steps",
        "3",
        "--n-atoms",
        "50",
        "--density",
        "5",
        "--out",
        str(out),
        "--no-progress",
        cwd=tmp_path,
    )
    assert sample.returncode == 0, sample.stderr[-3000:]
    frames = ase.io.read(out, ":")
    assert [len(f) for f in frames] == [50, 50]
    assert frames[0].get_masses().sum() / frames[0].get_volume() / 0.60221408 == pytest.approx(5.0, rel=1e-6)
