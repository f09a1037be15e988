"""``gcd evaluate``: reads samples (extxyz or HDF5), prints every metric as text or JSON, writes plots."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
from ase.io import write

from datamodules.builders.crystals import build_crystal, crystal_records, default_spec
from datamodules.h5format import random_splits, write_dataset
from lightning_gcd.cli_evaluate import add_evaluate_parser, run_evaluate
from lightning_gcd.errors import GcdError

PHASES = ("fcc", "bcc", "rocksalt")


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="gcd")
    sub = parser.add_subparsers(dest="command", required=True)
    add_evaluate_parser(sub)
    return parser.parse_args(["evaluate", *argv])


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    specs = [default_spec(p) for p in PHASES]
    records = crystal_records(specs, repeat=(2, 2, 2), thermal_sigma=0.05, count=4, seed=0, progress=False)
    reference = root / "crystals.h5"
    write_dataset(reference, records, splits=random_splits(len(records.atoms), (0.5, 0.5, 0.0), 0))
    rng = np.random.default_rng(1)
    samples = [build_crystal(s, (2, 2, 2), 0.05, True, rng) for s in specs]
    broken = samples[0].copy()
    del broken[0]
    samples.append(broken)
    extxyz = root / "samples.extxyz"
    write(extxyz, samples)
    return {"root": root, "reference": reference, "extxyz": extxyz}


def test_json_report_and_plots(files, capsys):
    plots = files["root"] / "plots"
    rc = run_evaluate(
        parse(str(files["extxyz"]), "--reference", str(files["reference"]), "--json", "--plots", str(plots))
    )
    assert rc == 0
    report = json.loads(capsys.readouterr().out)
    assert report["n_samples"] == 4 and report["split"] == "val"
    m = report["metrics"]
    for key in (
        "rdf_l1",
        "coordination_l1",
        "phase_match",
        "displacement_rms",
        "n_atoms_error",
        "n_atoms_mean",
        "min_distance_violations",
        "phase_match/fcc",
        "phase_match/bcc",
        "phase_match/rocksalt",
    ):
        assert key in m, key
    assert any(k.startswith("coordination/29/") for k in m)
    assert m["phase_match"] == 0.75
    assert m["n_atoms_error"] == 0.25
    assert report["reference_metrics"]["phase_match"] == 1.0
    assert report["reference_metrics"]["rdf_l1"] == 0.0
    assert sorted(p.split("/")[-1] for p in report["plots"]) == ["coordination.png", "n_atoms.png", "rdf.png"]
    for name in ("rdf.png", "coordination.png", "n_atoms.png"):
        data = (plots / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_hdf5_samples_and_text_table(files, capsys):
    rc = run_evaluate(
        parse(
            str(files["reference"]),
            "--reference",
            str(files["reference"]),
            "--split",
            "train",
            "--tolerance",
            "0.4",
            "--cutoff",
            "3.0",
        )
    )
    assert rc == 0
    out = capsys.readouterr().out
    assert "coordination cutoff 3.000 Å" in out and "phase tolerance 0.4 Å" in out
    rows = {
        line.split()[0]: line.split()[1:] for line in out.splitlines() if line.strip() and not line.startswith((" ",))
    }
    assert rows["phase_match"] == ["1.0000", "1.0000"]
    assert float(rows["rdf_l1"][0]) > 0.0 and rows["rdf_l1"][1] == "0.0000"
    assert rows["n_atoms_error"] == ["0.0000", "0.0000"]  # same cells as the reference, same counts


def test_user_errors(files, tmp_path):
    with pytest.raises(GcdError, match="no such file"):
        run_evaluate(parse(str(tmp_path / "missing.xyz"), "--reference", str(files["reference"])))
    junk = tmp_path / "junk.xyz"
    junk.write_text("this is not a structure file\n")
    with pytest.raises(GcdError, match="cannot read structures"):
        run_evaluate(parse(str(junk), "--reference", str(files["reference"])))
    with pytest.raises(GcdError, match="split 'test' is empty"):
        run_evaluate(parse(str(files["extxyz"]), "--reference", str(files["reference"]), "--split", "test"))
    with pytest.raises(GcdError, match=r"extxyz: not a readable HDF5 file"):  # a reference must be a dataset file
        run_evaluate(parse(str(files["extxyz"]), "--reference", str(files["extxyz"])))
    with pytest.raises(SystemExit):
        parse(str(files["extxyz"]), "--reference", str(files["reference"]), "--tolerance", "-1")
