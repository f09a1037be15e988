"""The resumable parts of long builds (``datamodules.builders.parts``): a build killed mid-write leaves a
half-written temporary, which the next build removes; a running process's temporaries are kept."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from datamodules.builders.parts import read_part, remove_stale_temporaries, write_part


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
