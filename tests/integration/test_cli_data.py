"""`gcd data build` and `gcd data inspect` as a user runs them, including bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest


def gcd(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lightning_gcd.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )


def test_build_and_inspect_crystals(tmp_path: Path) -> None:
    run = gcd(
        "data",
        "build",
        "crystals",
        "--phases",
        "fcc",
        "bcc",
        "--count",
        "3",
        "--seed",
        "7",
        "--voxels",
        "occupancy",
        "--out",
        "c.h5",
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr
    text = gcd("data", "inspect", "c.h5", cwd=tmp_path)
    assert text.returncode == 0 and "structures: 6" in text.stdout and "atom-count histogram" in text.stdout
    summary = json.loads(gcd("data", "inspect", "c.h5", "--json", cwd=tmp_path).stdout)
    assert summary["structures"] == 6 and summary["species"] == {"Cu": 96, "W": 48}
    assert summary["atom_count_histogram"] == {"16": 3, "32": 3}
    assert summary["voxels"]["occupancy"]["shape"] == [6, 5, 8, 8, 8]
    assert sum(summary["splits"].values()) == 6
    again = gcd(
        "data",
        "build",
        "crystals",
        "--phases",
        "fcc",
        "bcc",
        "--count",
        "3",
        "--seed",
        "7",
        "--voxels",
        "occupancy",
        "--out",
        "d.h5",
        cwd=tmp_path,
    )
    assert again.returncode == 0
    with h5py.File(tmp_path / "c.h5") as a, h5py.File(tmp_path / "d.h5") as b:
        np.testing.assert_array_equal(a["structures/positions"][()], b["structures/positions"][()])


def test_build_from_own_extxyz(tmp_path: Path, extxyz_file: Path) -> None:
    run = gcd(
        "data",
        "build",
        "from-files",
        str(extxyz_file),
        "--out",
        "mine.h5",
        "--voxels",
        "gaussian",
        "--spacing",
        "0.3",
        "--sigma",
        "0.4",
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr
    summary = json.loads(gcd("data", "inspect", "mine.h5", "--json", cwd=tmp_path).stdout)
    assert set(summary["properties"]) == {"energy", "temperature"}
    assert set(summary["atom_properties"]) == {"forces", "tag_value"}


@pytest.mark.parametrize(
    "setup, args, words",
    [
        (lambda d: (d / "bad.h5").write_text("garbage"), ["data", "inspect", "bad.h5"], "bad.h5: not a readable HDF5"),
        (lambda d: None, ["data", "inspect", "nothing.h5"], "nothing.h5: no such file"),
        (
            lambda d: (d / "bad.xyz").write_text("1\n\nXx 0 0 zero\n"),
            ["data", "build", "from-files", "bad.xyz", "--out", "o.h5"],
            "bad.xyz: cannot read",
        ),
        (
            lambda d: (d / "nan.xyz").write_text(
                '1\nLattice="4 0 0 0 4 0 0 0 4" Properties=species:S:1:pos:R:3\nCu nan 0 0\n'
            ),
            ["data", "build", "from-files", "nan.xyz", "--out", "o.h5"],
            "non-finite",
        ),
        (lambda d: None, ["data", "build", "crystals", "--count", "0", "--out", "o.h5"], "--count"),
        (
            lambda d: None,
            ["data", "build", "crystals", "--phases", "fcc", "--element", "fcc=Xq", "--out", "o.h5"],
            "unknown element",
        ),
        (
            lambda d: None,
            ["data", "build", "crystals", "--phases", "fcc", "--split", "0.5", "0.5", "0.5", "--out", "o.h5"],
            "split fractions",
        ),
        (
            lambda d: None,
            [
                "data",
                "build",
                "crystals",
                "--phases",
                "diamond",
                "--voxels",
                "occupancy",
                "--spacing",
                "3",
                "--out",
                "o.h5",
            ],
            "too coarse",
        ),
    ],
)
def test_bad_input_one_line_no_output(tmp_path: Path, setup, args: list[str], words: str) -> None:
    setup(tmp_path)
    run = gcd(*args, cwd=tmp_path)
    assert run.returncode == 2
    lines = [line for line in run.stderr.splitlines() if line.strip() and "%|" not in line]
    assert len(lines) == 1, run.stderr
    assert lines[0].startswith("gcd: error:") and words in lines[0]
    assert "Traceback" not in run.stderr
    assert not (tmp_path / "o.h5").exists()
    assert not list(tmp_path.glob(".o.h5.tmp*"))
