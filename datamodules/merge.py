"""``gcd data merge``: join dataset files (of any kind, e.g. the shards of a cluster build) into one.

- Structures are concatenated in the order of the input files (``sort_by`` reorders them by a
  per-structure property, e.g. ``build_index`` to restore an unsharded build's order).
- ``/properties`` and ``/atom_properties``: a field is kept when every input has it; its trailing shape
  (and kind: numbers or strings) must then match in every file, else the merge stops naming the file and
  the field. Fields missing from some inputs are dropped, with a note on stderr.
- Curves: when a field is merged and any input gives its energy grid (``meta_<field>_energy``, e.g. a
  spectrum's), every input must carry the same grid.
- Root attributes ``meta_*`` are kept when equal in every input and dropped otherwise (e.g. ``meta_shard``).
- Splits are drawn anew from ``split`` and ``seed`` over the merged structures.
- Voxel caches ``/voxels/<encoding>`` are copied only when every input has that cache with identical grid
  attributes (encoding, species, channels, grid shape, spacing, sigma) and array shape; otherwise they
  are dropped (rebuild them with ``gcd data build from-files`` or let the loader encode on the fly).
- The output is written to a temporary file and renamed when complete, then validated like any dataset.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from ase import Atoms

from datamodules.h5format import (
    AtomsH5,
    DatasetRecords,
    _check_records,
    _write_records,
    atomic_output,
    random_splits,
    validate_file,
    write_split,
)
from lightning_gcd.errors import DatasetFormatError, GcdError

VOXEL_ATTRS = ("encoding", "species", "channels", "grid_shape", "spacing", "sigma")


def _same(a: Any, b: Any) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        return False
    if a.dtype.kind in "fc" and b.dtype.kind in "fc":
        return bool(np.array_equal(a, b, equal_nan=True))
    return bool(np.array_equal(a, b))


def _kind(dtype: np.dtype) -> str:
    return "text" if dtype.kind in "OSU" else "number"


def _common_fields(readers: Sequence[AtomsH5], group: str, notes: list[str]) -> list[str]:
    """Fields of ``group`` present in every input; shapes and kinds checked against the first file."""
    present = [set(r._h5[group].keys()) if group in r._h5 else set() for r in readers]
    common = sorted(set.intersection(*present))
    dropped = sorted(set.union(*present) - set(common))
    if dropped:
        notes.append(f"dropping {group} not in every input: {', '.join(dropped)}")
    first = readers[0]
    for name in common:
        ref = first._h5[f"{group}/{name}"]
        for r in readers[1:]:
            ds = r._h5[f"{group}/{name}"]
            if ds.shape[1:] != ref.shape[1:]:
                raise DatasetFormatError(
                    r.path,
                    f"{group}/{name}",
                    f"trailing shape {ds.shape[1:]} differs from {ref.shape[1:]} in {first.path}; cannot merge",
                )
            if _kind(ds.dtype) != _kind(ref.dtype):
                raise DatasetFormatError(
                    r.path,
                    f"{group}/{name}",
                    f"{_kind(ds.dtype)} values, but {_kind(ref.dtype)} in {first.path}; cannot merge",
                )
    return common


def _read(ds: h5py.Dataset) -> np.ndarray:
    values = ds[()]
    if ds.dtype.kind == "O":  # variable-length strings
        values = np.array([v.decode() if isinstance(v, bytes) else str(v) for v in values], dtype=object)
    return values


def _common_voxels(readers: Sequence[AtomsH5], notes: list[str]) -> list[str]:
    """Voxel caches present in every input with identical grid attributes and array shapes."""
    everywhere = set.intersection(*(set(r.voxel_names) for r in readers))
    keep = []
    for name in sorted(everywhere):
        ref = readers[0].voxel_cache(name)

        def same_grid(ds: h5py.Dataset, ref: h5py.Dataset = ref) -> bool:
            if ds.shape[1:] != ref.shape[1:]:
                return False
            for key in VOXEL_ATTRS:
                if (key in ds.attrs) != (key in ref.attrs) or (
                    key in ref.attrs and not _same(ds.attrs[key], ref.attrs[key])
                ):
                    return False
            return True

        if all(same_grid(r.voxel_cache(name)) for r in readers[1:]):
            keep.append(name)
    dropped = sorted(set.union(*(set(r.voxel_names) for r in readers)) - set(keep))
    if dropped:
        notes.append(f"dropping voxel caches without identical grids in every input: {', '.join(dropped)}")
    return keep


def _merged_metadata(readers: Sequence[AtomsH5], fields: Sequence[str]) -> dict[str, Any]:
    """``meta_*`` root attributes equal in every input (without the prefix).

    When a merged field has an energy grid (``meta_<field>_energy``) in any input, every input must carry the
    same one: its values are only comparable on one grid.
    """
    attrs = [r.attrs for r in readers]
    out: dict[str, Any] = {}
    for name in fields:
        key = f"meta_{name}_energy"
        grids = [(r, a[key]) for r, a in zip(readers, attrs, strict=True) if key in a]
        if not grids:
            continue
        ref_reader, ref = grids[0]
        for r, a in zip(readers, attrs, strict=True):
            if key not in a or not _same(a[key], ref):
                raise DatasetFormatError(
                    r.path,
                    f"/ attrs {key}",
                    f"energy grid of {name} missing or different from {ref_reader.path}; cannot merge {name}",
                )
    for key, value in attrs[0].items():
        if key.startswith("meta_") and all(key in a and _same(a[key], value) for a in attrs[1:]):
            out[key[len("meta_") :]] = value
    return out


def merge_files(
    files: Sequence[str | Path],
    out: str | Path,
    split: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    sort_by: str | None = None,
    voxel_chunk: int = 16,
) -> Path:
    """Merge dataset ``files`` into ``out`` (see the module docstring); return ``out``."""
    if not files:
        raise GcdError("gcd data merge needs at least one input file")
    out = Path(out)
    readers = [AtomsH5(f) for f in files]  # validates every input, naming the bad file
    try:
        return _merge(readers, out, split, seed, sort_by, voxel_chunk)
    finally:
        for r in readers:
            r.close()


def _merge(
    readers: Sequence[AtomsH5], out: Path, split: Sequence[float], seed: int, sort_by: str | None, voxel_chunk: int
) -> Path:
    notes: list[str] = []
    props = _common_fields(readers, "properties", notes)
    aprops = _common_fields(readers, "atom_properties", notes)
    voxels = _common_voxels(readers, notes)
    metadata = _merged_metadata(readers, [*props, *aprops])
    metadata["merged_from"] = [str(r.path) for r in readers]

    # every structure as (file, index), in input order, then optionally sorted
    order = [(f, i) for f, r in enumerate(readers) for i in range(len(r))]
    if sort_by is not None:
        keys = []
        for r in readers:
            values = np.asarray(r.structure_property(sort_by))
            if values.ndim != 1 or values.dtype.kind not in "iuf":
                raise DatasetFormatError(
                    r.path, f"properties/{sort_by}", "--sort-by needs a numeric property with one value per structure"
                )
            keys.append(values)
        flat = np.concatenate(keys)
        order = [order[k] for k in np.argsort(flat, kind="stable")]

    positions = [r._h5["structures/positions"][()] for r in readers]
    numbers = [r._h5["structures/numbers"][()] for r in readers]
    prop_values = {name: [_read(r._h5[f"properties/{name}"]) for r in readers] for name in props}
    aprop_values = {name: [_read(r._h5[f"atom_properties/{name}"]) for r in readers] for name in aprops}

    atoms, labels = [], []
    atom_rows = []  # (file, slice) per structure, in output order
    for f, i in order:
        r = readers[f]
        sl = r._slice(i)
        atoms.append(Atoms(numbers=numbers[f][sl], positions=positions[f][sl], cell=r.cells[i], pbc=True))
        labels.append(r.labels[i])
        atom_rows.append((f, sl))
    properties = {
        name: np.concatenate([values[f][i : i + 1] for f, i in order]) for name, values in prop_values.items()
    }
    atom_properties = {
        name: np.concatenate([values[f][sl] for f, sl in atom_rows]) for name, values in aprop_values.items()
    }
    descriptions = [r.description for r in readers]
    description = descriptions[0] if len(set(descriptions)) == 1 else "merged: " + " | ".join(descriptions)
    records = DatasetRecords(atoms, labels, properties, atom_properties, description, metadata)

    _check_records(out, records)
    try:
        splits = random_splits(len(atoms), split, seed)
    except ValueError as exc:
        raise GcdError(str(exc)) from None
    for note in notes:
        print(f"gcd data merge: {note}", file=sys.stderr)
    with atomic_output(out) as tmp:
        with h5py.File(tmp, "w") as h5:
            _write_records(h5, records)
            for name, idx in splits.items():
                write_split(h5, name, idx)
            for name in voxels:
                _copy_voxels(h5, name, readers, order, voxel_chunk)
        validate_file(tmp, display_path=out)
    return out


def _copy_voxels(
    h5: h5py.File, name: str, readers: Sequence[AtomsH5], order: Sequence[tuple[int, int]], chunk: int
) -> None:
    """Stream one voxel cache structure by structure (it may not fit in memory)."""
    ref = readers[0].voxel_cache(name)
    g = h5.require_group("voxels")
    ds = g.create_dataset(
        name, shape=(len(order), *ref.shape[1:]), dtype=np.float32, chunks=(1, *ref.shape[1:]), compression="lzf"
    )
    for key, value in ref.attrs.items():
        ds.attrs[key] = value
    for start in range(0, len(order), chunk):
        block = order[start : start + chunk]
        ds[start : start + len(block)] = np.stack([readers[f].voxel_cache(name)[i] for f, i in block])
