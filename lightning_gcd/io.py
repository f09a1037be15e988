"""Atomic file writes: the one place that writes a temporary file beside the target and renames it.

A kill at any moment leaves either the previous complete file or the new one, never half of one:
every writer goes through ``atomic_path``, which yields a temporary path in the same folder (same
file system, so ``os.replace`` is atomic), renames it over the target only when the block succeeds and
removes it otherwise. The temporary name is ``.<name>.tmp<pid><suffix>``: hidden, unique per process,
and ending in the target's suffix so writers that infer the format from it (``ase.io.write``,
``np.savez``) write the same format.

- ``atomic_path(path, fsync=False)``: the context manager, for writers that want a path (HDF5, npz,
  ``torch.save``).
- ``write_bytes_atomic`` / ``write_text_atomic`` / ``write_json_atomic`` / ``write_structures_atomic``
  (``ase.io.write``) / ``write_extxyz_atomic``.
- ``to_jsonable``: numpy arrays, tensors and scalars to lists and Python numbers; NaN/inf to ``null``
  unless ``keep_nan``.

Torch-free and Lightning-free: the data builders and the CLI import it at startup.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "atomic_path",
    "temporary_path",
    "to_jsonable",
    "write_bytes_atomic",
    "write_extxyz_atomic",
    "write_json_atomic",
    "write_structures_atomic",
    "write_text_atomic",
]


def temporary_path(path: str | Path) -> Path:
    """The temporary file ``atomic_path`` writes for ``path``: ``.<name>.tmp<pid><suffix>`` beside it."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp{os.getpid()}{path.suffix}")


@contextlib.contextmanager
def atomic_path(path: str | Path, *, fsync: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it over ``path`` only if the block succeeds.

    Creates the parent folder. With ``fsync`` the temporary file's data are flushed to disk before the
    rename (checkpoints: a power cut after the rename then cannot leave an empty file).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_bytes_atomic(path: str | Path, data: bytes, *, fsync: bool = False) -> Path:
    """``data`` to ``path`` atomically."""
    path = Path(path)
    with atomic_path(path, fsync=fsync) as tmp:
        tmp.write_bytes(data)
    return path


def write_text_atomic(path: str | Path, text: str, *, fsync: bool = False) -> Path:
    """``text`` (UTF-8) to ``path`` atomically."""
    path = Path(path)
    with atomic_path(path, fsync=fsync) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def _key(key: Any) -> str:
    """JSON object key: ints as their decimal string, tuples such as ``(Z1, Z2)`` as ``"Z1-Z2"``."""
    if isinstance(key, tuple):
        return "-".join(str(_key(k)) for k in key)
    if isinstance(key, (np.integer,)):
        return str(int(key))
    return str(key)


def to_jsonable(obj: Any, *, keep_nan: bool = False) -> Any:
    """Numpy arrays, tensors and scalars to lists and Python numbers; keys to strings.

    Non-finite floats become ``None`` (strict JSON) unless ``keep_nan``, which keeps them as floats
    (``json`` then writes ``NaN``/``Infinity``, which Python's reader reads back as floats).
    """
    torch = sys.modules.get("torch")  # never imported here: a tensor exists only if torch is loaded
    if torch is not None and isinstance(obj, torch.Tensor):
        obj = obj.detach().cpu().numpy()
    if isinstance(obj, Mapping):
        return {_key(k): to_jsonable(v, keep_nan=keep_nan) for k, v in obj.items()}
    if isinstance(obj, np.ndarray):
        if obj.ndim:
            return [to_jsonable(v, keep_nan=keep_nan) for v in obj.tolist()]
        return to_jsonable(obj.item(), keep_nan=keep_nan)
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v, keep_nan=keep_nan) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        value = float(obj)
        return value if keep_nan or math.isfinite(value) else None
    if obj is None or isinstance(obj, str):
        return obj
    return str(obj)


def write_json_atomic(path: str | Path, data: Any, *, keep_nan: bool = False, indent: int | None = None) -> Path:
    """``data`` (through ``to_jsonable``) as JSON to ``path`` atomically, with a final newline.

    By default the file is strict JSON (NaN/inf written as ``null``). ``keep_nan=True`` writes them as
    ``NaN``/``Infinity`` instead, for readers that average with ``nanmean`` and would break on ``None``.
    """
    text = json.dumps(to_jsonable(data, keep_nan=keep_nan), allow_nan=keep_nan, indent=indent)
    return write_text_atomic(path, text + "\n")


def write_structures_atomic(path: str | Path, atoms: list, *, format: str | None = None) -> Path:
    """Structures to ``path`` with ``ase.io.write`` atomically (``format=None``: ASE's guess from the suffix)."""
    import ase.io  # ase is slow to import; only writers of structures pay for it

    path = Path(path)
    with atomic_path(path) as tmp:
        ase.io.write(tmp, atoms, format=format)
    return path


def write_extxyz_atomic(path: str | Path, atoms: list) -> Path:
    """Structures to an extxyz file atomically, whatever the suffix."""
    return write_structures_atomic(path, atoms, format="extxyz")
