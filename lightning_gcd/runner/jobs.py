"""Independent runs as worker processes, a few at a time (a study's ``--jobs N``).

Each job is a command (usually the study script itself with a flag that makes it run one task) that writes
its result as JSON to ``output`` and its stdout and stderr to ``log``. ``run_jobs`` keeps ``parallel`` of
them running, in the given order (put the longest first so the last to start are short), hands each
finished job's JSON to ``on_done`` as it lands, and returns one line per failure — the job's name, its exit
code and its log — so that one broken run costs its own result only.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightning_gcd.io import write_json_atomic

__all__ = ["Job", "run_jobs", "write_job_output"]


@dataclass(frozen=True)
class Job:
    """One worker process: ``command`` writes its result to ``output`` (JSON) and its output to ``log``."""

    name: str
    command: list[str]
    output: Path
    log: Path


def write_job_output(path: str | Path, payload: Any) -> Path:
    """A worker's result, written atomically (strict JSON): the parent reads either nothing or all of it."""
    return write_json_atomic(path, payload)


def run_jobs(
    jobs: Sequence[Job], parallel: int, on_done: Callable[[Job, Any], None], poll_seconds: float = 0.5
) -> list[str]:
    """Run ``jobs`` with at most ``parallel`` at a time; call ``on_done(job, result)`` with each finished job's
    JSON. Returns the failures (``"<name>: worker exited with <code>; log <log>"``); the others' results were
    handed on."""
    pending, running, failures = list(jobs), [], []
    while pending or running:
        while pending and len(running) < max(1, parallel):
            job = pending.pop(0)
            job.output.parent.mkdir(parents=True, exist_ok=True)
            job.output.unlink(missing_ok=True)
            with open(job.log, "w") as handle:
                running.append((subprocess.Popen(job.command, stdout=handle, stderr=subprocess.STDOUT), job))
        time.sleep(poll_seconds)
        for item in list(running):
            proc, job = item
            if proc.poll() is None:
                continue
            running.remove(item)
            if proc.returncode != 0 or not job.output.is_file():
                failures.append(f"{job.name}: worker exited with {proc.returncode}; log {job.log}")
                continue
            on_done(job, json.loads(job.output.read_text()))
    return failures
