"""Builder of a dataset from the user's own structure files (anything ASE reads).

Every frame of every file becomes one structure. Numeric per-structure values present in all frames with
one shape (energy in eV, stress, numeric ``info`` entries) become per-structure properties; numeric
per-atom arrays present in all frames (forces, charges, custom columns) become per-atom properties.
"""

from __future__ import annotations

import glob
from collections.abc import Sequence
from pathlib import Path

import ase.io
import numpy as np
from ase import Atoms
from tqdm.auto import tqdm

from datamodules.h5format import DatasetRecords
from lightning_gcd.errors import GcdError

_SKIP_ARRAYS = {"numbers", "positions"}
_LABEL_KEYS = ("label", "config_type", "name")


def expand_paths(patterns: Sequence[str]) -> list[Path]:
    """Expand globs; a pattern that matches nothing is an error naming it."""
    paths: list[Path] = []
    for pattern in patterns:
        matches = sorted(glob.glob(pattern, recursive=True))
        if not matches:
            raise GcdError(f"{pattern}: no such file")
        paths.extend(Path(m) for m in matches if Path(m).is_file())
    if not paths:
        raise GcdError("no structure files given")
    return paths


def read_frames(path: Path, index: str = ":", fmt: str | None = None) -> list[Atoms]:
    """All frames of one file; unreadable files and non-periodic frames raise GcdError naming the file."""
    try:
        frames = ase.io.read(str(path), index=index, format=fmt)
    except Exception as exc:  # ASE raises many types for unreadable input
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise GcdError(f"{path}: cannot read as a structure file ({reason})") from None
    frames = frames if isinstance(frames, list) else [frames]
    if not frames:
        raise GcdError(f"{path}: holds no structures")
    for k, atoms in enumerate(frames):
        if len(atoms) == 0:
            raise GcdError(f"{path}: frame {k} has no atoms")
        if abs(np.linalg.det(np.asarray(atoms.cell[:]))) < 1e-6:
            raise GcdError(f"{path}: frame {k} has no periodic cell (lightning_gcd needs periodic structures)")
        if not np.all(np.isfinite(atoms.positions)):
            raise GcdError(f"{path}: frame {k} has non-finite coordinates")
    return frames


def _calc_results(atoms: Atoms, per_atom: bool) -> dict[str, np.ndarray]:
    """Results a file attached through a calculator (energy, stress / forces, charges...).

    ``per_atom`` selects arrays with one row per atom; otherwise the per-structure values.
    """
    results = getattr(atoms.calc, "results", None) or {}
    out = {}
    for key, value in results.items():
        value = np.asarray(value)
        if value.dtype.kind not in "biuf":
            continue
        is_per_atom = value.ndim >= 1 and value.shape[0] == len(atoms) and key not in ("stress",)
        if is_per_atom == per_atom:
            out[key] = value
    return out


def _common_numeric(entries: list[dict], skip: set[str]) -> list[str]:
    """Keys whose values are numeric arrays of one trailing shape in every entry."""
    if not entries:
        return []
    keys = set(entries[0]) - skip
    for entry in entries[1:]:
        keys &= set(entry)
    common = []
    for key in sorted(keys):
        try:
            arrays = [np.asarray(e[key]) for e in entries]
        except Exception:
            continue
        if all(a.dtype.kind in "biuf" for a in arrays) and len({a.shape[1:] if a.ndim else () for a in arrays}) == 1:
            common.append(key)
    return common


def files_records(
    patterns: Sequence[str], index: str = ":", fmt: str | None = None, progress: bool = True
) -> DatasetRecords:
    """Read every frame of the given files (globs allowed) into dataset records."""
    paths = expand_paths(patterns)
    atoms_list: list[Atoms] = []
    labels: list[str] = []
    for path in tqdm(paths, desc="reading", disable=not progress, unit="file"):
        for k, atoms in enumerate(read_frames(path, index, fmt)):
            label = next((str(atoms.info[key]) for key in _LABEL_KEYS if key in atoms.info), f"{path.name}:{k}")
            atoms_list.append(atoms)
            labels.append(label)

    infos = [{**_calc_results(a, per_atom=False), **a.info} for a in atoms_list]
    properties = {
        key: np.stack([np.asarray(i[key]) for i in infos]) for key in _common_numeric(infos, set(_LABEL_KEYS))
    }
    arrays = [{**_calc_results(a, per_atom=True), **a.arrays} for a in atoms_list]
    atom_properties = {
        key: np.concatenate([np.asarray(a[key]) for a in arrays]) for key in _common_numeric(arrays, _SKIP_ARRAYS)
    }

    clean = [Atoms(numbers=a.numbers, positions=a.positions, cell=a.cell, pbc=True) for a in atoms_list]
    return DatasetRecords(
        atoms=clean,
        labels=labels,
        properties=properties,
        atom_properties=atom_properties,
        description=f"from files: {', '.join(str(p) for p in paths[:5])}{' ...' if len(paths) > 5 else ''}",
        metadata={"builder": "from-files"},
    )
