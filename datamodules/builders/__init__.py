"""Dataset builders: each turns options into ``DatasetRecords``; ``write_built`` adds splits and voxel caches.

``build_dataset(kind, out, **options)`` is the one entry point used by ``gcd data build`` and by
``AtomsDataModule`` when a config names a dataset file that does not exist yet.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from datamodules.h5format import DatasetRecords, random_splits, write_dataset
from lightning_gcd.errors import GcdError
from lightning_gcd.representations import coarsest_grid_shape, grid_shape_for, make_encoding
from lightning_gcd.structures import StructureBatch

BUILDERS = ("crystals", "from-files", "amorphous-carbon", "grain-boundaries", "grain-boundary-search")
DEFAULT_SPLIT = (0.8, 0.1, 0.1)


def voxel_cache(
    records: DatasetRecords,
    encoding: str,
    spacing: float | None = None,
    multiple: int = 4,
    sigma: float | None = None,
    progress: bool = True,
    batch_size: int = 64,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Encode every structure on one common grid; ``spacing=None`` picks the coarsest safe grid.

    Returns (S, C, D, H, W) float32 grids and the attributes stored with the cache.
    """
    species = sorted({int(z) for a in records.atoms for z in a.numbers})
    options = {"sigma": sigma} if (encoding == "gaussian" and sigma) else {}
    enc = make_encoding(encoding, species, **options)
    largest = max(records.atoms, key=lambda a: a.get_volume())
    if spacing is None:
        stride = max(1, len(records.atoms) // 64)  # a sample spread over every phase/file
        shape = coarsest_grid_shape(records.atoms[::stride], multiple=multiple)
    else:
        shape = grid_shape_for(largest.cell[:], spacing, multiple)
    grids = []
    for start in tqdm(range(0, len(records.atoms), batch_size), desc=f"voxels {encoding}", disable=not progress):
        batch = StructureBatch.from_atoms(records.atoms[start : start + batch_size], dtype=torch.float64)
        grids.append(enc.encode(batch, shape).numpy())
    lengths = np.linalg.norm(np.asarray(largest.cell[:]), axis=1)
    attrs = {**enc.attrs(), "grid_shape": np.asarray(shape), "spacing": lengths / np.asarray(shape)}
    return np.concatenate(grids), attrs


def write_built(
    records: DatasetRecords,
    out: str | Path,
    split: Sequence[float] = DEFAULT_SPLIT,
    seed: int = 0,
    voxels: Sequence[str] = (),
    spacing: float | None = None,
    sigma: float | None = None,
    progress: bool = True,
) -> Path:
    """Write records with reproducible splits and the requested voxel caches, atomically."""
    try:
        splits = random_splits(len(records.atoms), split, seed)
    except ValueError as exc:
        raise GcdError(str(exc)) from None
    caches = {name: voxel_cache(records, name, spacing, sigma=sigma, progress=progress) for name in voxels}
    return write_dataset(out, records, splits=splits, voxels=caches)


def build_records(kind: str, progress: bool = True, **options: Any) -> DatasetRecords:
    """Run the builder ``kind`` with its own options (see each builder module)."""
    if kind == "crystals":
        from datamodules.builders.crystals import crystal_records, default_spec

        phases = options.pop("phases", ["fcc"])
        elements = options.pop("elements", {}) or {}
        lattice = options.pop("lattice", {}) or {}
        specs = [default_spec(p, elements.get(p), lattice.get(p)) for p in phases]
        return crystal_records(specs, progress=progress, **options)
    if kind == "from-files":
        from datamodules.builders.from_files import files_records

        return files_records(progress=progress, **options)
    if kind == "amorphous-carbon":
        from datamodules.builders.amorphous_carbon import amorphous_carbon_records

        return amorphous_carbon_records(progress=progress, **options)
    if kind == "grain-boundaries":
        from datamodules.builders.grain_boundaries import grain_boundary_records

        return grain_boundary_records(progress=progress, **options)
    if kind == "grain-boundary-search":
        from datamodules.builders.gb_search import grain_boundary_search_records

        return grain_boundary_search_records(progress=progress, **options)
    raise GcdError(f"unknown dataset kind '{kind}'; choose one of {', '.join(BUILDERS)}")


def build_dataset(
    kind: str,
    out: str | Path,
    split: Sequence[float] = DEFAULT_SPLIT,
    seed: int = 0,
    voxels: Sequence[str] = (),
    spacing: float | None = None,
    sigma: float | None = None,
    progress: bool = True,
    **options: Any,
) -> Path:
    """Build dataset ``kind`` into ``out`` (see ``build_records`` for the kinds and their options)."""
    if kind in ("crystals", "grain-boundaries"):
        options.setdefault("seed", seed)
    if kind in ("amorphous-carbon", "grain-boundary-search"):
        options.setdefault("seed", seed)
        options.setdefault("parts_dir", f"{out}.parts")  # finished structures, reused by a rerun (resume)
    records = build_records(kind, progress=progress, **options)
    return write_built(records, out, split, seed, voxels, spacing, sigma, progress)
