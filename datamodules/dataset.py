"""Lazy torch Dataset over a lightning_gcd HDF5 file, and the collate functions of the two views.

The HDF5 handle is opened on first use in each process (DataLoader workers included) and never pickled,
because h5py handles must not cross a fork.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from datamodules.h5format import AtomsH5
from lightning_gcd.representations import VoxelEncoding
from lightning_gcd.structures import StructureBatch

Item = dict[str, Any]
Batch = dict[str, torch.Tensor]


class AtomsDataset(Dataset):
    """Structures ``indices`` of an HDF5 file, one dict per structure.

    Item keys: ``frac_coords`` (n, 3) float64 in [0, 1), ``numbers`` (n,) int64, ``cell`` (3, 3) float64 Å,
    ``index`` int (structure index in the file), ``cond`` (K,) float32 when ``conditions`` are named
    (the named properties concatenated), ``atom_<name>`` (n, ...) for each named per-atom property, ``grid`` (C, D, H,
    W) float32 when a voxel cache is used.

    ``translate=True`` applies a uniformly random periodic translation to every item (exact: fractional
    coordinates are shifted and wrapped; a cached grid is rolled by whole voxels, so its shift is drawn in
    whole voxels). With ``collision_grid`` (the voxel view's grid shape) a continuous translation that would
    put two atoms into one voxel of that grid is drawn again (up to ``MAX_TRANSLATION_DRAWS`` times): on a
    grid as coarse as the nearest-neighbour distance (diamond Si on 8³: 0.1 % of translations) a rare
    unlucky shift must not stop a training run, and rejecting it changes the translation distribution by
    that fraction only.
    """

    def __init__(
        self,
        path: str | Path,
        indices: Sequence[int],
        conditions: Sequence[str] = (),
        translate: bool = False,
        voxel_cache: str | None = None,
        atom_properties: Sequence[str] = (),
        collision_grid: Sequence[int] | None = None,
    ) -> None:
        self.path = Path(path)
        self.collision_grid = None if collision_grid is None else np.asarray(collision_grid, dtype=np.int64)
        self.atom_properties = list(atom_properties)
        self.indices = np.asarray(indices, dtype=np.int64)
        self.conditions = list(conditions)
        self.translate = translate
        self.voxel_cache = voxel_cache
        self._reader: AtomsH5 | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_reader"] = None  # reopen in the worker
        return state

    @property
    def reader(self) -> AtomsH5:
        if self._reader is None:
            self._reader = AtomsH5(self.path, validate=False)  # validated once by the DataModule
        return self._reader

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> Item:
        i = int(self.indices[k])
        data = self.reader
        frac = data.frac_coords(i)
        item: Item = {"frac_coords": frac, "numbers": data.numbers(i), "cell": data.cells[i], "index": i}
        if self.voxel_cache is not None:
            grid = torch.from_numpy(np.asarray(data.voxel_cache(self.voxel_cache)[i], dtype=np.float32))
            if self.translate:
                dims = np.asarray(grid.shape[1:])
                shift = torch.randint(0, 2**31 - 1, (3,)).numpy() % dims  # whole voxels
                grid = torch.roll(grid, shifts=tuple(int(s) for s in shift), dims=(1, 2, 3))
                frac = np.mod(frac + shift / dims, 1.0)
                item["frac_coords"] = frac
            item["grid"] = grid
        elif self.translate:
            item["frac_coords"] = self._translated(frac)
        if self.conditions:
            item["cond"] = structure_condition(data, self.conditions, i)
        for name in self.atom_properties:
            item[f"atom_{name}"] = np.asarray(data.atom_property(name, i))
        return item

    def _translated(self, frac: np.ndarray) -> np.ndarray:
        """(n, 3) fractional coordinates shifted by a uniformly random translation (wrapped into [0, 1)),
        redrawn while it would put two atoms into one voxel of ``collision_grid``."""
        for _ in range(MAX_TRANSLATION_DRAWS):
            shifted = np.mod(frac + torch.rand(3, dtype=torch.float64).numpy(), 1.0)
            if self.collision_grid is None or not _shares_voxel(shifted, self.collision_grid):
                return shifted
        return shifted  # the encoder raises its clear error if even these draws all collide


MAX_TRANSLATION_DRAWS = 32


def structure_condition(data: AtomsH5, names: Sequence[str], index: int, dtype: Any = np.float32) -> np.ndarray:
    """(cond_dim,) structure ``index``'s properties ``names`` flattened and concatenated: ``batch["cond"]``'s row."""
    return np.concatenate(
        [np.atleast_1d(np.asarray(data.structure_property(name, index), dtype=dtype)).ravel() for name in names]
    )


def _shares_voxel(frac: np.ndarray, grid_shape: np.ndarray) -> bool:
    """Whether two of the (n, 3) fractional positions fall into one voxel of ``grid_shape``."""
    index = np.minimum(np.floor(frac * grid_shape).astype(np.int64), grid_shape - 1)  # (n, 3)
    flat = (index[:, 0] * grid_shape[1] + index[:, 1]) * grid_shape[2] + index[:, 2]
    return len(np.unique(flat)) < len(flat)


def collate_particles(items: list[Item], n_max: int) -> Batch:
    """Pad items to ``n_max`` atoms. Batch: frac_coords (B,N,3) f32, numbers (B,N), mask (B,N), cell (B,3,3), index
    (B,), cond (B,K)."""
    b = len(items)
    frac = torch.zeros(b, n_max, 3, dtype=torch.float32)
    numbers = torch.zeros(b, n_max, dtype=torch.long)
    mask = torch.zeros(b, n_max, dtype=torch.bool)
    for k, item in enumerate(items):
        n = len(item["numbers"])
        frac[k, :n] = torch.as_tensor(item["frac_coords"], dtype=torch.float32)
        numbers[k, :n] = torch.as_tensor(item["numbers"])
        mask[k, :n] = True
    batch: Batch = {
        "frac_coords": frac,
        "numbers": numbers,
        "mask": mask,
        "cell": torch.as_tensor(np.stack([item["cell"] for item in items]), dtype=torch.float32),
        "index": torch.as_tensor([item["index"] for item in items], dtype=torch.long),
    }
    if "cond" in items[0]:
        batch["cond"] = torch.as_tensor(np.stack([item["cond"] for item in items]), dtype=torch.float32)
    for key in (k for k in items[0] if k.startswith("atom_")):
        first = np.asarray(items[0][key])
        dtype = torch.bool if first.dtype == bool else torch.float32
        values = torch.zeros((b, n_max, *first.shape[1:]), dtype=dtype)
        for k, item in enumerate(items):
            values[k, : len(item[key])] = torch.as_tensor(np.asarray(item[key])).to(dtype)
        batch[key] = values
    return batch


class Collate:
    """Picklable collate function: padding for the particle view, plus voxel grids for the voxel view.

    For the voxel view without a cache the grids are encoded here, batched, from the (translated)
    fractional coordinates, so DataLoader workers do the encoding in parallel.
    """

    def __init__(
        self, n_max: int, encoding: VoxelEncoding | None = None, grid_shape: tuple[int, int, int] | None = None
    ) -> None:
        self.n_max = n_max
        self.encoding = encoding
        self.grid_shape = grid_shape

    def __call__(self, items: list[Item]) -> Batch:
        batch = collate_particles(items, self.n_max)
        if "grid" in items[0]:
            batch["grid"] = torch.stack([item["grid"] for item in items])
        elif self.encoding is not None:
            assert self.grid_shape is not None
            structures = StructureBatch(
                torch.as_tensor(np.stack([_pad(item["frac_coords"], self.n_max) for item in items])),
                batch["numbers"],
                batch["mask"],
                batch["cell"].double(),
            )
            batch["grid"] = self.encoding.encode(structures, self.grid_shape)
        return batch


def _pad(frac: np.ndarray, n_max: int) -> np.ndarray:
    out = np.zeros((n_max, 3), dtype=np.float64)
    out[: len(frac)] = frac
    return out
