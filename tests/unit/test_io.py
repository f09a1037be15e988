"""lightning_gcd.io: the one atomic-write helper that every writer of the package goes through."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lightning_gcd import io

REPO = Path(__file__).resolve().parents[2]


def test_a_failing_writer_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "results.json"
    io.write_json_atomic(target, {"a": 1})
    with pytest.raises(RuntimeError, match="killed"):
        with io.atomic_path(target) as tmp:
            tmp.write_text('{"a": ')  # half a file
            raise RuntimeError("killed mid-write")
    assert json.loads(target.read_text()) == {"a": 1}
    assert sorted(p.name for p in target.parent.iterdir()) == ["results.json"]


def test_the_temporary_sits_beside_the_target_hidden_with_its_suffix(tmp_path: Path) -> None:
    seen = []
    with io.atomic_path(tmp_path / "structure_000001.npz", fsync=True) as tmp:
        seen.append(tmp)
        np.savez(tmp, x=np.arange(3))  # np.savez appends .npz unless the name ends in it
    (tmp,) = seen
    assert tmp.parent == tmp_path and tmp.name.startswith(".structure_000001.npz.tmp") and tmp.suffix == ".npz"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["structure_000001.npz"]
    assert np.load(tmp_path / "structure_000001.npz")["x"].tolist() == [0, 1, 2]


def test_json_strict_by_default_and_nan_kept_on_request(tmp_path: Path) -> None:
    data = {(29, 29): np.array([1.0, np.nan]), 6: np.float32(2), "inf": math.inf}
    strict = io.write_json_atomic(tmp_path / "strict.json", data)
    assert json.loads(strict.read_text()) == {"29-29": [1.0, None], "6": 2.0, "inf": None}
    kept = json.loads(io.write_json_atomic(tmp_path / "kept.json", data, keep_nan=True, indent=1).read_text())
    assert math.isnan(kept["29-29"][1]) and kept["inf"] == math.inf and kept["6"] == 2.0


def test_text_bytes_and_structures(tmp_path: Path) -> None:
    from ase import Atoms
    from ase.io import read

    assert io.write_text_atomic(tmp_path / "id", "abc").read_text() == "abc"
    assert io.write_bytes_atomic(tmp_path / "b.bin", b"\x00\x01").read_bytes() == b"\x00\x01"
    atoms = [Atoms("Cu2", positions=[[0, 0, 0], [1, 1, 1]], cell=[3, 3, 3], pbc=True)]
    io.write_structures_atomic(tmp_path / "s.cif", atoms)  # format from the suffix, as gcd sample --out
    assert read(tmp_path / "s.cif").get_chemical_symbols() == ["Cu", "Cu"]
    io.write_extxyz_atomic(tmp_path / "s.txt", atoms)
    assert read(tmp_path / "s.txt", format="extxyz").get_chemical_symbols() == ["Cu", "Cu"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.bin", "id", "s.cif", "s.txt"]


def test_old_import_names_are_the_same_functions() -> None:
    from datamodules.h5format import atomic_output
    from lightning_gcd.callbacks import metrics_history

    assert metrics_history.write_json_atomic is io.write_json_atomic
    assert metrics_history.write_extxyz_atomic is io.write_extxyz_atomic
    assert metrics_history.to_jsonable is io.to_jsonable
    assert atomic_output is io.atomic_path


def test_no_hand_rolled_atomic_write_is_left() -> None:
    """Every ``os.replace`` / ``Path.replace`` of the package and its builders is the one in lightning_gcd/io.py."""
    out = subprocess.run(
        [
            "git",
            "grep",
            "-nE",
            r"os\.replace\(|\btmp\w*\.replace\(|\.rename\(",
            "--",
            "lightning_gcd",
            "datamodules",
            "experiments/amorphous_carbon",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    hits = [line for line in out.stdout.splitlines() if not line.startswith("lightning_gcd/io.py:")]
    assert hits == []


def test_io_imports_neither_torch_nor_lightning() -> None:
    code = "import sys, lightning_gcd.io; print(sorted(m for m in ('torch', 'lightning', 'ase') if m in sys.modules))"
    run = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert run.stdout.strip() == "[]"
