"""``AtomsDataModule``: the one LightningDataModule that serves both models.

``view="voxel"`` yields grids (B, C, D, H, W) plus the padded particle fields; ``view="particle"`` yields
padded fractional coordinates, atomic numbers, mask and cell. If the file named by ``path`` does not exist,
``prepare_data`` builds it from ``build`` (a dict of builder options), so configs run anywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler

from datamodules.dataset import AtomsDataset, Collate, structure_condition
from datamodules.h5format import AtomsH5, random_splits, validate_file
from lightning_gcd.errors import DatasetFormatError, GcdError
from lightning_gcd.representations import (
    GridShape,
    VoxelEncoding,
    coarsest_grid_shape,
    grid_shape_for,
    make_encoding,
)

DEFAULT_BUILD: dict[str, Any] = {
    "kind": "crystals",
    "phases": ["fcc"],
    "count": 64,
    "repeat": [2, 2, 2],
    "thermal_sigma": 0.05,
}


class AtomsDataModule(L.LightningDataModule):
    """Serves an HDF5 dataset to either model.

    Args:
        path: dataset file (relative paths are taken from the working directory).
        view: "voxel" (grids) or "particle" (padded point clouds).
        batch_size: GLOBAL batch size; each of the ``world_size`` ranks loads ``batch_size // world_size``.
        num_workers: DataLoader worker processes (0 loads in the main process).
        encoding: voxel encoding name ("occupancy" or "gaussian") for the voxel view.
        encoding_options: extra options of the encoding (``sigma`` for gaussian, ``threshold``).
        spacing: voxel spacing in Å; ``None`` picks the coarsest grid that keeps one atom per voxel.
        grid_shape: explicit (D, H, W), overriding ``spacing``.
        grid_multiple: voxel counts are multiples of this (the U-Net's downsampling factor).
        use_voxel_cache: read ``/voxels/<encoding>`` from the file when its grid matches.
        translate: random periodic translation of training structures (exact augmentation).
        conditions: names of per-structure properties concatenated into ``batch["cond"]``.
        atom_properties: names of per-atom properties served as ``batch["atom_<name>"]`` (B, N, ...),
            zero-padded (e.g. ``[xanes, xanes_mask]`` for the spectrum forward model).
        split_fractions, split_seed: used only when the file has no ``/splits``.
        build: builder options used by ``prepare_data`` when ``path`` does not exist
            (``{"kind": "crystals", ...}``, see ``datamodules.builders``).
    """

    def __init__(
        self,
        path: str = "data/crystals_fcc.h5",
        view: Literal["voxel", "particle"] = "voxel",
        batch_size: int = 16,
        num_workers: int = 0,
        encoding: str = "occupancy",
        encoding_options: dict[str, Any] | None = None,
        spacing: float | None = None,
        grid_shape: Sequence[int] | None = None,
        grid_multiple: int = 4,
        use_voxel_cache: bool = True,
        translate: bool = True,
        conditions: Sequence[str] = (),
        atom_properties: Sequence[str] = (),
        split_fractions: Sequence[float] = (0.8, 0.1, 0.1),
        split_seed: int = 0,
        build: dict[str, Any] | None = None,
        pin_memory: bool = False,
    ) -> None:
        super().__init__()
        if view not in ("voxel", "particle"):
            raise GcdError(f"data.view must be 'voxel' or 'particle', got '{view}'")
        if batch_size < 1:
            raise GcdError("data.batch_size must be at least 1")
        self.save_hyperparameters()
        self.path = Path(path).expanduser()
        self.view = view
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.encoding_name = encoding
        self.encoding_options = dict(encoding_options or {})
        self.spacing = spacing
        self.requested_grid = tuple(int(g) for g in grid_shape) if grid_shape else None
        self.grid_multiple = grid_multiple
        self.use_voxel_cache = use_voxel_cache
        self.translate = translate
        self.conditions = list(conditions)
        self.atom_properties = list(atom_properties)
        self.split_fractions = tuple(split_fractions)
        self.split_seed = split_seed
        self.build = dict(DEFAULT_BUILD if build is None else build)
        self.pin_memory = pin_memory
        # filled by setup()
        self.species: list[int] = []
        self.n_max: int = 0
        self.cond_dim: int = 0
        self.grid_shape: GridShape | None = None
        self.encoding: VoxelEncoding | None = None
        self.splits: dict[str, np.ndarray] = {}
        self._cache_name: str | None = None
        self._is_setup = False
        # The train loader's own RNG (shuffling and worker seeds); its state is saved in checkpoints, so
        # a resumed run sees the same batches as an uninterrupted one.
        self.generator = torch.Generator().manual_seed(int(torch.randint(0, 2**62, (1,))))

    # ------------------------------------------------------------------------------------------------
    def prepare_data(self) -> None:
        """Build the dataset file when it is missing (local rank 0 only, as Lightning calls it)."""
        if self.path.exists():
            return
        if not self.build:
            raise GcdError(f"{self.path}: no such file, and data.build is empty so it cannot be built")
        from datamodules.builders import build_dataset

        options = dict(self.build)
        kind = options.pop("kind", "crystals")
        build_dataset(kind, self.path, **options)

    def setup(self, stage: str | None = None) -> None:
        if self._is_setup:
            return
        if not self.path.exists():
            self.prepare_data()
        validate_file(self.path)
        with AtomsH5(self.path, validate=False) as data:
            self.species = list(data.species)
            self.n_max = int(data.n_atoms.max())
            self.splits = {name: data.split(name) for name in data.split_names}
            if not {"train", "val"} <= set(self.splits):
                self.splits = random_splits(len(data), self.split_fractions, self.split_seed)
            for name in self.conditions:
                ds = data.require_property(name)
                if ds.dtype.kind not in "biuf":
                    raise DatasetFormatError(self.path, f"properties/{name}", "a condition must be numeric")
            for name in self.atom_properties:
                if name not in data.atom_property_names:
                    raise DatasetFormatError(
                        self.path,
                        f"atom_properties/{name}",
                        f"missing (available: {', '.join(data.atom_property_names) or 'none'})",
                    )
            self.cond_dim = sum(int(np.prod(data.require_property(n).shape[1:])) for n in self.conditions)
            if len(self.splits["train"]) == 0:
                raise GcdError(f"{self.path}: the train split is empty")
            if self.view == "voxel":
                self._setup_voxels(data)
        self._is_setup = True

    def _setup_voxels(self, data: AtomsH5) -> None:
        self.encoding = make_encoding(self.encoding_name, self.species, **self.encoding_options)
        cache = (
            data.voxel_cache(self.encoding_name)
            if (self.use_voxel_cache and self.encoding_name in data.voxel_names)
            else None
        )
        if self.requested_grid is not None:
            self.grid_shape = self.requested_grid  # type: ignore[assignment]
        elif self.spacing is not None:
            largest = int(np.argmax(np.abs(np.linalg.det(data.cells))))
            self.grid_shape = grid_shape_for(data.cells[largest], self.spacing, self.grid_multiple)
        elif cache is not None:
            self.grid_shape = tuple(int(g) for g in cache.shape[2:])  # type: ignore[assignment]
        else:
            train = self.splits["train"]
            sample = train[:: max(1, len(train) // 64)]
            self.grid_shape = coarsest_grid_shape([data.atoms(int(i)) for i in sample], multiple=self.grid_multiple)
        if any(g % self.grid_multiple for g in self.grid_shape):
            raise GcdError(f"grid shape {self.grid_shape} is not a multiple of data.grid_multiple={self.grid_multiple}")
        cache_ok = (
            cache is not None
            and tuple(cache.shape[2:]) == tuple(self.grid_shape)
            and [int(z) for z in cache.attrs["species"]] == self.species
            and all(
                float(cache.attrs.get(k, v)) == float(v)
                for k, v in self.encoding_options.items()
                if isinstance(v, (int, float))
            )
        )
        self._cache_name = self.encoding_name if cache_ok else None

    # ------------------------------------------------------------------------------------------------
    @property
    def per_rank_batch_size(self) -> int:
        world = self.trainer.world_size if self.trainer is not None else 1
        if self.batch_size % world:
            raise GcdError(f"data.batch_size={self.batch_size} (global) is not divisible by {world} processes")
        return self.batch_size // world

    def dataset(self, split: str, translate: bool | None = None) -> AtomsDataset:
        """The ``AtomsDataset`` of one split (train, val, test, or all)."""
        self.setup()
        if split == "all":
            with AtomsH5(self.path, validate=False) as data:
                indices = np.arange(len(data))
        elif split not in self.splits:
            raise GcdError(f"{self.path}: no split '{split}' (available: {', '.join(self.splits)})")
        else:
            indices = self.splits[split]
        if len(indices) == 0:
            raise GcdError(f"{self.path}: the {split} split is empty")
        return AtomsDataset(
            self.path,
            indices,
            self.conditions,
            atom_properties=self.atom_properties,
            translate=self.translate if translate is None else translate,
            voxel_cache=self._cache_name,
            collision_grid=self.grid_shape if self.view == "voxel" else None,
        )

    def collate(self) -> Collate:
        return Collate(self.n_max, self.encoding if self.view == "voxel" else None, self.grid_shape)

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "generator" in state_dict:
            self.generator.set_state(state_dict["generator"])

    def _loader(self, split: str, shuffle: bool, translate: bool) -> DataLoader:
        dataset = self.dataset(split, translate=translate)
        return DataLoader(
            dataset,
            batch_size=self.per_rank_batch_size,
            shuffle=shuffle,
            sampler=None if shuffle else self.evaluation_sampler(dataset),
            num_workers=self.num_workers,
            collate_fn=self.collate(),
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
            drop_last=False,
            generator=self.generator if shuffle else None,
        )

    def evaluation_sampler(self, dataset: AtomsDataset) -> DistributedSampler | None:
        """Under DDP, the validation/test sampler: every structure on exactly one rank (the ranks' counts
        differ by at most one). Lightning's default ``DistributedSampler`` pads an uneven split by repeating
        structures, which would then count twice in ``val/loss``. None on one process (Lightning's default)."""
        world = self.trainer.world_size if self.trainer is not None else 1
        if world < 2 or len(dataset) < world:  # (fewer structures than ranks: padded, so that every rank has one)
            return None
        from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler

        return UnrepeatedDistributedSampler(dataset, num_replicas=world, rank=self.trainer.global_rank, shuffle=False)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True, translate=self.translate)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False, translate=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test" if len(self.splits.get("test", [])) else "val", shuffle=False, translate=False)

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()

    def condition_grid(self) -> list[float] | None:
        """The abscissa of the condition's components where the file gives one, else None: the energy grid (eV)
        of a condition that is one field sampled on the file's grid for it (``AtomsH5.field_energy``, e.g. a
        spectrum). A model stores it, so that a curve given as energy/value columns can be put on its grid
        when sampling."""
        if len(self.conditions) != 1:
            return None
        self.setup()
        with AtomsH5(self.path, validate=False) as data:
            grid = data.field_energy(self.conditions[0])
        return grid if grid is not None and int(self.cond_dim) == len(grid) else None

    def condition_values(self, split: str = "train") -> np.ndarray:
        """(S, cond_dim) float64: the conditions (``conditions``, concatenated as in ``batch["cond"]``) of a
        split's structures."""
        self.setup()
        indices = self.splits[split] if split != "all" else None
        with AtomsH5(self.path, validate=False) as data:
            indices = np.arange(len(data)) if indices is None else indices
            return np.asarray(
                [structure_condition(data, self.conditions, int(i), np.float64) for i in indices]
            ).reshape(len(indices), self.cond_dim)

    def reference_atoms(self, split: str = "val", limit: int | None = None) -> list:
        """ASE structures of a split (the reference that generated samples are compared with)."""
        self.setup()
        indices = self.splits[split] if split != "all" else None
        with AtomsH5(self.path, validate=False) as data:
            indices = np.arange(len(data)) if indices is None else indices
            return [data.atoms(int(i)) for i in indices[:limit]]
