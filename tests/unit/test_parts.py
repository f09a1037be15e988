"""The resumable parts of long builds (``datamodules.builders.parts``): a build killed mid-write leaves a
half-written temporary, which the next build removes; a running process's temporaries are kept; the missing
parts are computed in this process or over spawned workers, and a build without a parts folder leaves none."""

from __future__ import annotations

import os
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest

from datamodules.builders.parts import compute_parts, parts_folder, read_part, remove_stale_temporaries, write_part


def test_stale_temporaries_of_dead_processes_are_removed_and_live_ones_kept(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)  # a process that has ended
    stale = tmp_path / f".candidate_000001.npz.tmp{dead_pid}.npz"
    live = tmp_path / f".candidate_000002.npz.tmp{os.getpid()}.npz"
    stale.write_bytes(b"half written")
    live.write_bytes(b"being written")
    part = write_part(tmp_path / "candidate_000000.npz", "settings", x=[1.0, 2.0])
    assert remove_stale_temporaries(tmp_path) == 1
    assert not stale.exists() and live.exists() and read_part(part, "settings")["x"].tolist() == [1.0, 2.0]


def test_parts_folder_is_created_cleaned_of_dead_temporaries_or_temporary_and_removed(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    kept = tmp_path / "out.h5.parts"
    kept.mkdir()
    stale = kept / f".structure_000001.npz.tmp{int(dead.stdout)}.npz"
    stale.write_bytes(b"half written")
    with parts_folder(kept, "gcd-test-") as folder:
        assert folder == kept and not stale.exists()
    assert kept.is_dir()
    with parts_folder(tmp_path / "new" / "out.h5.parts", "gcd-test-") as folder:
        assert folder.is_dir()
    with parts_folder(None, "gcd-test-") as folder:
        temporary = folder
        assert temporary.is_dir() and temporary.name.startswith("gcd-test-")
    assert not temporary.exists()


def test_compute_parts_writes_every_missing_part_in_process_with_one_openmp_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "8")
    seen: list[str | None] = []

    def compute(path: Path) -> None:
        seen.append(os.environ.get("OMP_NUM_THREADS"))
        write_part(path, "settings", x=[float(path.stem[-1])])

    todo = [tmp_path / f"part_{i}.npz" for i in range(3)]
    compute_parts(compute, todo, 2, workers=1, desc="test", unit="part", progress=False)
    assert seen == ["1", "1", "1"] and os.environ["OMP_NUM_THREADS"] == "8"
    assert [read_part(p, "settings")["x"].tolist() for p in todo] == [[0.0], [1.0], [2.0]]


def test_compute_parts_over_two_spawned_workers_writes_every_part(tmp_path: Path) -> None:
    todo = [tmp_path / f"part_{i}.npz" for i in range(4)]
    compute_parts(partial(write_part, key="settings", x=[1.0]), todo, 0, workers=2, desc="test", unit="part")
    assert all(read_part(p, "settings")["x"].tolist() == [1.0] for p in todo)
