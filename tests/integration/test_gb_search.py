"""The annealed grain-boundary search (issue #28): its cell and [n] sampling, a tiny real LAMMPS search, and its
resumability — a search killed with SIGKILL and rerun with the same command ends with the same candidates as an
uninterrupted one; shards merged equal the unsharded search; changed settings recompute, more candidates extend.

REDUCED to keep the file near 30 s on one core: W Σ5(100) twist (the search's 230-atom cell), 4 candidates per
search, 300 MD steps per anneal instead of 5,000-20,000.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from ase.io import read
from conftest import lammps_available, needs_engine, run_gcd

import datamodules.builders.gb_search as search
from datamodules.builders import build_dataset
from datamodules.builders.grain_boundaries import BOUNDARIES, bicrystal
from datamodules.h5format import AtomsH5
from datamodules.merge import merge_files
from lightning_gcd.errors import GcdError
from lightning_gcd.relax import Relaxer

needs_lammps = needs_engine(*lammps_available())

OPTIONS = dict(element="W", boundaries=["twist100"], candidates=4, seed=3, workers=1, anneal=dict(md_steps=(300, 300)))
CLI = [
    "data",
    "build",
    "grain-boundary-search",
    "--element",
    "W",
    "--boundaries",
    "twist100",
    "--candidates",
    "4",
    "--seed",
    "3",
    "--workers",
    "1",
    "--md-steps",
    "300",
    "300",
    "--no-progress",
]
COMPARED = (
    "gb_energy",
    "energy",
    "n_fraction",
    "anneal_temperature",
    "anneal_steps",
    "translation",
    "stress_zz",
    "build_index",
    "n_boundary_atoms",
)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted, unsharded search."""
    out = tmp_path_factory.mktemp("gbsearch") / "search.h5"
    return build_dataset("grain-boundary-search", out, progress=False, **OPTIONS)


def _assert_same_search(path: Path, reference: Path) -> None:
    with AtomsH5(path) as a, AtomsH5(reference) as b:
        assert len(a) == len(b) and a.labels == b.labels
        for name in COMPARED:
            np.testing.assert_allclose(a.structure_property(name), b.structure_property(name), rtol=1e-9, atol=1e-9)
        for i in range(len(b)):
            np.testing.assert_allclose(a.positions(i), b.positions(i), atol=1e-8)


def test_search_cells_hold_ten_atoms_per_plane_and_sample_n_evenly() -> None:
    for element, a in (("W", 3.1648), ("Cu", 3.6149)):
        for name, spec in BOUNDARIES.items():
            repeat = search.search_repeat(spec, element, a)
            crystal = bicrystal(spec, element, a, repeat)
            grain = crystal.atoms.cell.lengths()[2] / 2
            assert crystal.atoms_per_plane >= search.MIN_ATOMS_PER_PLANE, (element, name, repeat)
            assert search.MIN_GRAIN_THICKNESS <= grain < search.MIN_GRAIN_THICKNESS + 6.0, (element, name, grain)
    # W twist: GRIP's 10.0 x 10.0 Å cell, 10 atoms per (002) plane; Cu tilt: 18.1 x 11.4 Å, 10 per (310) plane
    assert search.search_repeat(BOUNDARIES["twist100"], "W", 3.1648) == (1, 1, 6)
    assert search.search_repeat(BOUNDARIES["tilt310"], "Cu", 3.6149) == (5, 2, 3)
    assert search.n_counts(None, 10) == list(range(10))
    assert search.n_counts([0.4, 0.2, 0.21, 0.0], 10) == [0, 2, 4]
    with pytest.raises(GcdError, match=r"\[0, 1\)"):
        search.n_counts([1.0], 10)
    relaxer = Relaxer("W", "lammps")
    tasks = search._plan(
        "W",
        ["twist100"],
        30,
        None,
        None,
        3.1648,
        -8.76,
        310.0,
        relaxer,
        search.anneal_for("W", None),
        0,
        Path("parts"),
    )
    for block in range(3):  # every block of P = 10 candidates holds each [n] once, in a random order
        assert sorted(t.kept for t in tasks[10 * block : 10 * block + 10]) == list(range(10))
    assert [t.kept for t in tasks[:10]] != list(range(10))
    assert search.anneal_for("Cu", None).temperatures == (300.0, 1200.0)
    with pytest.raises(GcdError, match="temperatures"):
        search.anneal_for("Ni", None)
    with pytest.raises(GcdError, match="TMIN"):
        search.Anneal(temperatures=(1200.0, 300.0))


@needs_lammps
def test_search_records_are_annealed_normal_relaxed_boundaries(built: Path, tmp_path: Path) -> None:
    with AtomsH5(built) as f:
        p = {name: f.structure_property(name) for name in (*COMPARED, "atoms_per_plane", "plane_fraction")}
        assert len(f) == 4 and f.attrs["meta_builder"] == "grain-boundary-search" and f.attrs["meta_failed"] == 0
        assert f.attrs["meta_relax_cell"] == "normal" and f.attrs["meta_potential"] == "W_zhou.eam.alloy"
        n_atoms = [len(f.positions(i)) for i in range(len(f))]
    kept = np.rint(p["n_fraction"] * 10).astype(int)
    assert (p["atoms_per_plane"] == 10).all() and len(set(kept)) == 4  # 4 different [n] of the first block
    removed = (10 - kept) % 10
    np.testing.assert_array_equal(p["n_boundary_atoms"], -2 * removed)  # two boundaries per cell
    np.testing.assert_array_equal(n_atoms, 240 - 2 * removed)
    np.testing.assert_allclose(p["plane_fraction"], -removed / 10)
    assert np.all(np.abs(p["stress_zz"]) < 0.05)  # zero normal stress after the normal relaxation (GPa)
    assert np.all((p["gb_energy"] > 2.0) & (p["gb_energy"] < 4.5))  # W Σ5 twist: GRIP's minima 2.3-2.5 J/m²
    assert np.all((p["anneal_temperature"] >= 1000) & (p["anneal_temperature"] <= 3300))
    assert np.all(p["anneal_temperature"] % 100 == 0) and np.all(p["anneal_steps"] == 300)
    # the anneal changes the result: the same start (translation, removed atoms) minimised without MD differs
    relaxer = Relaxer("W", "lammps", None, 0.01, 5000, "normal")
    a, e_coh = relaxer.bulk_reference("bcc")
    cold = search.anneal_for("W", {"md_steps": (0, 0), "cool_steps": 0})
    task = search._plan("W", ["twist100"], 1, None, None, a, e_coh, 310.0, relaxer, cold, 3, tmp_path)[0]
    part = np.load(search.compute_candidate(task))
    first = int(np.argmin(p["build_index"]))
    np.testing.assert_allclose(part["translation"], p["translation"][first])
    assert int(part["md_steps"]) == 0 and abs(float(part["energy"]) - p["energy"][first]) > 1e-3


@needs_lammps
def test_killed_search_resumes_to_the_same_candidates(built: Path, tmp_path: Path) -> None:
    """SIGKILL the CLI once it has finished a candidate, rerun the same command: the finished parts are kept
    (not recomputed), the rest computed, and the file equals the uninterrupted search's."""
    parts = tmp_path / "search.h5.parts"
    proc = subprocess.Popen(
        [sys.executable, "-m", "lightning_gcd.cli", *CLI, "--out", "search.h5"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and len(list(parts.glob("candidate_*.npz"))) < 1:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, f"the search ended before it was killed ({proc.returncode})"
    finished = {p.name: p.stat().st_mtime_ns for p in parts.glob("candidate_*.npz")}
    assert 1 <= len(finished) < 4 and not (tmp_path / "search.h5").exists()
    run = run_gcd(*CLI, "--out", "search.h5", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert {p.name: p.stat().st_mtime_ns for p in parts.glob("*.npz") if p.name in finished} == finished
    assert len(list(parts.glob("*.npz"))) == 4 and not list(parts.glob(".*tmp*"))
    _assert_same_search(tmp_path / "search.h5", built)


@needs_lammps
def test_shards_merge_to_the_unsharded_search(built: Path, tmp_path: Path) -> None:
    run = run_gcd(*CLI, "--shard", "1/2", "--out", "s1.h5", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    build_dataset("grain-boundary-search", tmp_path / "s0.h5", progress=False, shard="0/2", **OPTIONS)
    with AtomsH5(tmp_path / "s1.h5") as s1:
        assert s1.structure_property("build_index").tolist() == [1, 3] and s1.attrs["meta_shard"] == "1/2"
    merge_files([tmp_path / "s1.h5", tmp_path / "s0.h5"], tmp_path / "m.h5", sort_by="build_index")
    _assert_same_search(tmp_path / "m.h5", built)


@needs_lammps
def test_reuse_needs_equal_settings_and_more_candidates_extend(
    built: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    computed: list[int] = []
    real = search.compute_candidate
    monkeypatch.setattr(search, "compute_candidate", lambda task: computed.append(task.candidate) or real(task))
    out = tmp_path / "search.h5"
    shutil.copytree(f"{built}.parts", f"{out}.parts")
    build_dataset("grain-boundary-search", out, progress=False, **{**OPTIONS, "candidates": 5})
    assert computed == [4]  # the 4 finished candidates reused, the fifth computed
    computed.clear()
    other = {**OPTIONS, "candidates": 2, "anneal": dict(md_steps=(200, 200))}
    build_dataset("grain-boundary-search", out, progress=False, **other)
    assert computed == [0, 1]  # other MD settings: recomputed, not reused
    # a failed anneal is a result (its part says why), left out of the file and counted; all failed: an error
    real_relax, anneals = Relaxer.relax, []

    def lost_atoms(self: Relaxer, atoms, steps=None, prelude=()):
        if prelude:  # an anneal: the first one fails; the bulk reference (no prelude) works
            anneals.append(len(atoms))
            if len(anneals) == 1:
                raise RuntimeError("ERROR: Lost atoms: original 240 current 239")
        return real_relax(self, atoms, steps, prelude)

    monkeypatch.setattr(Relaxer, "relax", lost_atoms)
    monkeypatch.setattr(search, "compute_candidate", real)
    build_dataset("grain-boundary-search", tmp_path / "one.h5", progress=False, **{**OPTIONS, "candidates": 2})
    with AtomsH5(tmp_path / "one.h5") as f:
        assert len(f) == 1 and f.attrs["meta_failed"] == 1 and f.structure_property("build_index").tolist() == [1]
    assert "Lost atoms" in str(np.load(tmp_path / "one.h5.parts" / "candidate_twist100_000000.npz")["error"])
    anneals.clear()
    with pytest.raises(GcdError, match="every candidate failed.*Lost atoms"):
        build_dataset("grain-boundary-search", tmp_path / "failed.h5", progress=False, **{**OPTIONS, "candidates": 1})


@needs_lammps
def test_search_option_errors(tmp_path: Path) -> None:
    run = run_gcd(*CLI, "--n-values", "1.2", "--out", "x.h5", cwd=tmp_path)
    assert run.returncode != 0 and "[0, 1)" in run.stderr and len(run.stderr.strip().splitlines()) == 1
    run = run_gcd(*CLI, "--shard", "2/2", "--out", "x.h5", cwd=tmp_path)
    assert run.returncode != 0 and "--shard" in run.stderr
    with pytest.raises(GcdError, match="grain core"):
        build_dataset(
            "grain-boundary-search",
            tmp_path / "thin.h5",
            progress=False,
            **{**OPTIONS, "candidates": 1, "repeat": (1, 1, 2)},
        )
    assert not (tmp_path / "x.h5").exists()


def _script(name: str):
    """An experiments/grain_boundaries script as a module."""
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "experiments" / "grain_boundaries" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"gb_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@needs_lammps
def test_envelope_and_thickness_scripts(built: Path, tmp_path: Path) -> None:
    envelope = _script("search_envelope")
    summary = envelope.main([str(built), str(built), "--out", str(tmp_path)])  # the same file twice counts once
    rows = summary["W_twist100"]["envelope"]
    with AtomsH5(built) as f:
        energies, n = f.structure_property("gb_energy"), f.structure_property("n_fraction")
    assert summary["W_twist100"]["candidates"] == 4 and [r["candidates"] for r in rows] == [1, 1, 1, 1]
    assert [r["min_gb_energy"] for r in rows] == pytest.approx(energies[np.argsort(n)].tolist())
    assert {r["n"]: r.get("grip_gb_energy") for r in rows if r["n"] in (0.2, 0.4)} in (
        {},
        {0.2: 2.297},
        {0.4: 2.469},
        {0.2: 2.297, 0.4: 2.469},
    )
    assert (tmp_path / "envelope_W_twist100.png").stat().st_size > 10_000
    assert len((tmp_path / "candidates.csv").read_text().splitlines()) == 5
    # thickening: the stored grains gain 6 periods of bulk each (20 atoms per 3.16 Å period of the 1x1 W twist cell)
    thickness = _script("search_thickness")
    with AtomsH5(built) as f:
        atoms, boundary_z = f.atoms(0), f.structure_property("boundary_z")[0]
    thick, mismatch = thickness.thicken(atoms, boundary_z, 3.1648, 6)
    assert len(thick) == len(atoms) + 2 * 6 * 20 and mismatch < thickness.BULK_TOLERANCE
    assert thick.cell.lengths()[2] == pytest.approx(atoms.cell.lengths()[2] + 12 * 3.1648)
    from ase.neighborlist import neighbor_list

    # no atom put on top of another: the closest pair is the stored structure's own
    assert neighbor_list("d", thick, 3.0).min() == pytest.approx(neighbor_list("d", atoms, 3.0).min(), abs=1e-6)


@needs_lammps
def test_annealing_generated_boundaries_moves_their_atoms_and_relaxes_them_to_zero_normal_stress(built: Path) -> None:
    """In-painting + anneal (issue #28, deliverable 3): a structure gets the search's own anneal — its grain cores
    are the file's grains (one held, one rigid), its temperature and MD steps are drawn as the search draws them
    — and then the search's minimisation, so it ends at zero normal stress with a finite E_gb; the same seed
    gives the same result, and the anneal moves atoms that a plain relaxation leaves where they are."""
    from lightning_gcd.grain_boundaries import anneal_boundaries, read_source, relax_boundaries
    from lightning_gcd.grain_boundaries.anneal import grains_and_mobile

    source = read_source(f"{built}:0")
    with AtomsH5(built) as f:
        grain = f.atom_property("grain", 0)
    held, rigid, mobile = grains_and_mobile(source.atoms, source.boundary_z, 6.0)
    assert held.any() and rigid.any() and mobile.any()
    assert len(set(grain[held].tolist())) == 1 and len(set(grain[rigid].tolist())) == 1
    assert set(grain[held].tolist()) != set(grain[rigid].tolist())

    structures = [source.atoms.copy(), source.atoms.copy()]
    annealed = anneal_boundaries(structures, source, seed=5, md_steps=(300, 300))
    again = anneal_boundaries(structures[:1], source, seed=5, md_steps=(300, 300))
    plain = relax_boundaries(structures[:1], source)
    for atoms in annealed:
        assert atoms.info["anneal_steps"] == 300
        assert 1000.0 <= atoms.info["anneal_temperature"] <= 3300.0
        assert np.isfinite(atoms.info["gb_energy"]) and atoms.info["gb_energy"] > 0
        assert abs(atoms.info["stress_zz"]) < 0.05  # GPa
        assert atoms.info["relax_seconds"] > 0
    assert again[0].info["gb_energy"] == pytest.approx(annealed[0].info["gb_energy"], abs=1e-9)
    moved = np.linalg.norm(annealed[0].positions - plain[0].positions, axis=1).max()
    assert moved > 0.1  # Å: the anneal rearranged the boundary; the plain minimisation starts at a minimum


@needs_lammps
def test_study_trains_on_a_search_file_anneals_what_it_generated_and_compares_with_the_search(
    built: Path, tmp_path: Path
) -> None:
    """run.py --dataset trains both models on a search file and in-paints its boundaries (each record with its
        own sample and relaxation seconds, the raw generated structures kept); --anneal-samples then anneals and
        relaxes exactly those structures as <model>_anneal, each with the search's MD steps (resumable, and shardable
    over processes with --shard); generator_vs_search.py
        puts the five methods side by side at equal relaxations and equal wall time."""
    gb_run = _script("run")
    common = ["--workdir", str(tmp_path / "work"), "--out", str(tmp_path / "out"), "--quiet"]
    gb_run.main(
        [
            *common,
            "--dataset",
            str(built),
            "--steps",
            "2",
            "--samples-per-template",
            "1",
            "--relax-steps",
            "20",
            "--set",
            "voxel.sample_steps=2",
            "--set",
            "particle.sample_steps=2",
            "--set",
            "voxel.model.sample_restarts=0",
        ]
    )
    results = gb_run.main([*common, "--anneal-samples", "--relax-steps", "20"])
    parts = sorted((tmp_path / "work" / "samples" / "voxel_anneal.parts").glob("template_*.extxyz"))
    assert len(parts) == len(results["models"]["voxel"]["samples"])  # one per template (one sample each)
    parts[0].unlink()  # a run killed before its first template finished: a rerun anneals that one only
    again = gb_run.main([*common, "--anneal-samples", "--relax-steps", "20"])

    def without_time(records: list[dict]) -> list[dict]:
        return [{k: v for k, v in r.items() if k != "relax_seconds"} for r in records]

    assert without_time(again["models"]["voxel_anneal"]["samples"]) == without_time(
        results["models"]["voxel_anneal"]["samples"]
    )
    for part in parts:  # two shards anneal every other template each; the run without --shard collects them
        part.unlink()
    gb_run.main([*common, "--anneal-samples", "--relax-steps", "20", "--models", "voxel", "--shard", "0/2"])
    assert [p.exists() for p in parts] == [k % 2 == 0 for k in range(len(parts))]
    gb_run.main([*common, "--anneal-samples", "--relax-steps", "20", "--models", "voxel", "--shard", "1/2"])
    assert all(p.exists() for p in parts)
    collected = gb_run.main([*common, "--anneal-samples", "--relax-steps", "20"])
    assert without_time(collected["models"]["voxel_anneal"]["samples"]) == without_time(
        results["models"]["voxel_anneal"]["samples"]
    )
    with AtomsH5(built) as f:
        counts = set(f.structure_property("n_boundary_atoms").astype(int).tolist())
    assert results["reference"]["builder"] == "grain-boundary-search" and results["reference"]["boundary"] == "twist100"
    for kind in ("voxel", "particle"):
        first, annealed = results["models"][kind]["samples"], results["models"][f"{kind}_anneal"]["samples"]
        assert len(first) == len(counts) and all(r["sample_seconds"] > 0 and r["relax_seconds"] > 0 for r in first)
        generated = [a for a in read(tmp_path / "work" / "samples" / f"{kind}_generated.extxyz", index=":") if len(a)]
        assert len(annealed) == len(generated)
        assert all(r["anneal_steps"] == 300 and r["sample_seconds"] > 0 for r in annealed)
        assert [r["template"] for r in annealed] == sorted(a.info["template"] for a in generated)
    assert {r["n"] for r in results["models"]["particle_anneal"]["samples"]} == counts  # fixed N: templates' counts
    # the same in-painting + anneal from the command line
    sampled = tmp_path / "annealed.extxyz"
    cli = [*("sample", "--ckpt", str(tmp_path / "work" / "runs" / "particle" / "last.ckpt"), "--inpaint", f"{built}:0")]
    result = run_gcd(
        *cli, "--n", "1", "--steps", "2", "--anneal", "--relax-steps", "20", "--out", str(sampled), cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert read(sampled).info["anneal_steps"] == 300 and "annealed and relaxed" in result.stderr

    compare = _script("generator_vs_search")
    out = tmp_path / "comparison"
    result = compare.main(
        ["--search", str(built), "--runs", str(tmp_path / "out" / "results.json"), "--out", str(out)]
        + ["--workdir", str(tmp_path / "work")]
    )
    names = ["search", "voxel", "voxel_anneal", "particle", "particle_anneal"]
    assert list(result["all_candidates"]) == names
    assert result["relaxations"] == min(result["all_candidates"][n]["candidates"] for n in names)
    for name in names:
        assert result["equal_relaxations"][name]["candidates"] == result["relaxations"]
        assert result["equal_wall_time"][name]["seconds"] <= result["seconds"] + 1e-9
    for n in result["best_known"]:  # no reference files: each [n]'s best-known candidate is a hit of its method
        assert sum(b["per_n"][n]["within_0.01"]["hits"] for b in result["all_candidates"].values() if n in b["per_n"])
    assert (out / "envelope.png").stat().st_size > 0 and "annealed random search" in (out / "comparison.md").read_text()
    for kind in ("voxel", "particle", "voxel_anneal", "particle_anneal"):  # the grain check reaches the comparison
        lost = sum(not r["grains_kept"] for r in results["models"][kind]["samples"])
        assert result["all_candidates"][kind]["grains_lost"] == lost
    assert result["all_candidates"]["search"]["grains_lost"] == 0
    assert "| grains lost |" in (out / "comparison.md").read_text()
    phases = _script("boundary_phases")
    with AtomsH5(built) as f:
        first_n = float(np.round(f.structure_property("n_fraction")[0], 4))
    found = phases.main(
        [*("--search", str(built), "--runs", str(tmp_path / "out" / "results.json")), "--n", str(first_n)]
        + ["--workdir", str(tmp_path / "work"), "--out", str(out)]
    )
    row = found["phases"][f"{first_n:g}"]["methods"]
    assert row["search"]["profile_l1_to_search_best"] == 0.0 and len(row["search"]["profile"]) == 7
    assert (out / "phases.png").stat().st_size > 0
