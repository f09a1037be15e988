"""A study's results folder: atomic figures, the lock under which processes merge into it, reading it back.

JSON and text are written with ``lightning_gcd.io`` (``write_json_atomic``, ``write_text_atomic``); figures
go through ``save_figure``, so a reader (or a killed run) never sees half a PNG. Processes that add runs to
the same folder at the same time (``compare.py --merge``) take turns under ``results_lock``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lightning_gcd.io import atomic_path, to_jsonable, write_json_atomic

__all__ = [
    "claim_folder",
    "curves_from_json",
    "new_figure",
    "read_json",
    "results_lock",
    "save_figure",
    "study_command",
]


class results_lock:  # noqa: N801  (a context manager, used like a function: ``with results_lock(out):``)
    """An exclusive lock on ``<folder>/.lock``: processes that merge into the same results folder take turns."""

    def __init__(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / ".lock"

    def __enter__(self) -> results_lock:
        import fcntl

        self.handle = open(self.path, "w")
        fcntl.flock(self.handle, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc: Any) -> None:
        import fcntl

        fcntl.flock(self.handle, fcntl.LOCK_UN)
        self.handle.close()


def study_command(script: str | Path, argv: Sequence[str]) -> list[str]:
    """The command that ran a study script as a user types it in the repository root (``python
    experiments/<study>/<script>.py ...``), whichever checkout or folder it ran from: a results file names no
    path of the machine that measured it."""
    parts = Path(script).resolve().parts
    top = max((i for i, part in enumerate(parts) if part == "experiments"), default=len(parts) - 1)
    return ["python", str(Path(*parts[top:])), *argv]


def read_json(path: str | Path, default: Any = None) -> Any:
    """The JSON in ``path``, or ``default`` when there is no such file."""
    path = Path(path)
    return json.loads(path.read_text()) if path.is_file() else default


def claim_folder(
    marker: str | Path, identity: dict[str, Any], what: str, remedy: str = "remove it or pass another --workdir"
) -> None:
    """Mark ``marker``'s folder as holding ``what`` done with ``identity`` (the settings its files depend on,
    written to ``marker`` as JSON), or stop with one line naming the settings that differ when it already holds
    it with others: a resume must never mix two runs. ``remedy``: what the line tells the user to do."""
    marker = Path(marker)
    identity = to_jsonable(identity)
    earlier = read_json(marker)
    if earlier is None:
        write_json_atomic(marker, identity, indent=1)
    elif earlier != identity:
        changed = sorted(k for k in set(earlier) | set(identity) if earlier.get(k) != identity.get(k))
        raise SystemExit(f"{marker.parent} holds {what} with other settings ({', '.join(changed)}); {remedy}")


def curves_from_json(raw: dict[str, Any]) -> dict[str, Any]:
    """One run's curves as read from JSON: lists back to float arrays, ``null`` (a NaN written as strict JSON)
    back to NaN; other values as they are."""
    return {
        k: np.asarray([np.nan if x is None else x for x in v], dtype=float) if isinstance(v, list) else v
        for k, v in raw.items()
    }


def new_figure(figsize: tuple[float, float]):
    """A matplotlib figure on the Agg canvas (no display, no pyplot state shared between plots)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Any, path: str | Path, **savefig: Any) -> Path:
    """``fig.savefig`` to ``path`` atomically (the temporary file keeps the suffix, so the format is the same)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, **savefig)
    return path
