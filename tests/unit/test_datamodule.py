"""AtomsDataModule: both views, workers, exact translations, conditions, DDP sharding, default build."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from ase.geometry import get_distances
from torch.utils.data import DistributedSampler

from datamodules import AtomsDataModule, AtomsH5
from lightning_gcd.errors import DatasetFormatError, GcdError


def _pairwise(frac: torch.Tensor, cell: torch.Tensor) -> np.ndarray:
    pos = (frac.double() @ cell.double()).numpy()
    _, d = get_distances(pos, cell=cell.double().numpy(), pbc=True)
    return np.sort(d.ravel())


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("view", ["voxel", "particle"])
def test_views_and_workers(fcc_h5: Path, view: str, num_workers: int) -> None:
    dm = AtomsDataModule(str(fcc_h5), view=view, batch_size=4, num_workers=num_workers)
    dm.setup("fit")
    batches = list(dm.train_dataloader())
    assert sum(len(b["index"]) for b in batches) == len(dm.splits["train"])
    b = batches[0]
    assert b["frac_coords"].shape == (4, 32, 3) and b["mask"].all() and b["cell"].shape == (4, 3, 3)
    assert b["frac_coords"].min() >= 0 and b["frac_coords"].max() < 1
    if view == "voxel":
        assert dm.grid_shape == (8, 8, 8)
        assert b["grid"].shape == (4, 4, 8, 8, 8)
        decoded = dm.encoding.decode(b["grid"], b["cell"])
        assert decoded.n_atoms.tolist() == [32] * 4
    else:
        assert "grid" not in b


def test_translation_is_exact(fcc_h5: Path) -> None:
    """A translated item has the same periodic geometry as the stored structure; its grid decodes to it."""
    dm = AtomsDataModule(str(fcc_h5), view="voxel", batch_size=2, translate=True)
    dm.setup("fit")
    b = next(iter(dm.train_dataloader()))
    with AtomsH5(fcc_h5) as data:
        for k in range(2):
            i = int(b["index"][k])
            stored = torch.as_tensor(data.frac_coords(i))
            assert not torch.allclose(stored.float(), b["frac_coords"][k], atol=1e-3)  # it did move
            np.testing.assert_allclose(
                _pairwise(b["frac_coords"][k], b["cell"][k]), _pairwise(stored, b["cell"][k]), atol=1e-4
            )
    decoded = dm.encoding.decode(b["grid"], b["cell"])
    for k in range(2):
        np.testing.assert_allclose(
            _pairwise(decoded.frac_coords[k], b["cell"][k]), _pairwise(b["frac_coords"][k], b["cell"][k]), atol=1e-4
        )


def test_cached_grid_matches_on_the_fly(crystals_h5: Path) -> None:
    cached = AtomsDataModule(str(crystals_h5), view="voxel", batch_size=6, translate=False)
    fresh = AtomsDataModule(
        str(crystals_h5), view="voxel", batch_size=6, translate=False, use_voxel_cache=False, grid_shape=None
    )
    cached.setup(), fresh.setup()
    assert cached._cache_name == "occupancy" and fresh._cache_name is None
    a, b = next(iter(cached.val_dataloader())), next(iter(fresh.val_dataloader()))
    # the grid chosen without the cache is the cache's (else a file with a cache would train on another grid)
    assert fresh.grid_shape == cached.grid_shape
    assert torch.equal(a["index"], b["index"]) and len(a["index"]) == len(cached.splits["val"])
    torch.testing.assert_close(a["grid"], b["grid"], atol=1e-5, rtol=0)
    # cached grids roll by whole voxels under translation and still decode to the item's atoms
    moving = AtomsDataModule(str(crystals_h5), view="voxel", batch_size=6, translate=True)
    moving.setup()
    m = next(iter(moving.train_dataloader()))
    decoded = moving.encoding.decode(m["grid"], m["cell"])
    for k in range(6):
        n = int(m["mask"][k].sum())
        assert int(decoded.n_atoms[k]) == n
        np.testing.assert_allclose(
            np.sort(decoded.frac_coords[k, :n].numpy(), axis=0),
            np.sort(m["frac_coords"][k, :n].numpy(), axis=0),
            atol=1e-5,
        )


def test_conditions_and_missing_property(crystals_h5: Path) -> None:
    dm = AtomsDataModule(str(crystals_h5), view="particle", batch_size=4, conditions=["phase_onehot", "lattice_a"])
    dm.setup()
    assert dm.cond_dim == 7
    b = next(iter(dm.train_dataloader()))
    assert b["cond"].shape == (4, 7)
    with AtomsH5(crystals_h5) as data:
        expected = np.concatenate(
            [
                data.structure_property("phase_onehot", int(b["index"][0])),
                [data.structure_property("lattice_a", int(b["index"][0]))],
            ]
        )
    np.testing.assert_allclose(b["cond"][0].numpy(), expected, rtol=1e-6)
    bad = AtomsDataModule(str(crystals_h5), conditions=["xanes"])
    with pytest.raises(DatasetFormatError, match="properties/xanes.*missing"):
        bad.setup()


def test_ranks_get_distinct_samples(tmp_path: Path) -> None:
    """The DataModule's loaders on two ranks, an odd split: training, with the DistributedSampler Lightning puts
    into the DataModule's loader (same collate, per-rank batch), gives the ranks disjoint structures covering the
    train split; validation keeps the DataModule's own unpadded sampler (Lightning leaves a DistributedSampler
    alone) and sees every validation structure exactly once."""
    from lightning.pytorch.trainer.states import RunningStage
    from lightning.pytorch.utilities.data import _update_dataloader

    from datamodules.builders import build_dataset

    path = build_dataset(
        "crystals", tmp_path / "odd.h5", count=20, phases=["fcc"], split=(0.75, 0.16, 0.09), progress=False
    )

    class Rank:
        world_size = 2

        def __init__(self, rank: int) -> None:
            self.global_rank = rank

    train, val = [], []
    for rank in range(2):
        dm = AtomsDataModule(str(path), view="particle", batch_size=4)
        dm.trainer = Rank(rank)  # type: ignore[assignment]
        dm.setup()
        loader = dm.train_dataloader()
        loader = _update_dataloader(
            loader,
            DistributedSampler(loader.dataset, num_replicas=2, rank=rank, shuffle=True, seed=0),
            mode=RunningStage.TRAINING,
        )
        batches = list(loader)
        assert {len(b["index"]) for b in batches[:-1]} == {2} and batches[0]["frac_coords"].shape[1:] == (32, 3)
        train.append([int(i) for b in batches for i in b["index"]])
        evaluation = dm.val_dataloader()
        assert isinstance(evaluation.sampler, DistributedSampler)  # so Lightning does not replace it with a padded one
        val.append([int(i) for b in evaluation for i in b["index"]])
    assert not set(train[0]) & set(train[1])
    assert sorted(train[0] + train[1]) == dm.splits["train"].tolist()
    assert len(dm.splits["val"]) == 3 and sorted(val[0] + val[1]) == dm.splits["val"].tolist()  # each once: 2 + 1
    assert [len(v) for v in val] == [2, 1]


def test_builds_default_dataset_when_missing(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "auto.h5"
    dm = AtomsDataModule(
        str(path),
        view="voxel",
        batch_size=2,
        build={"kind": "crystals", "phases": ["bcc"], "count": 5, "progress": False},
    )
    dm.prepare_data()
    dm.setup()
    assert path.exists() and dm.species == [74] and dm.n_max == 16
    empty = AtomsDataModule(str(tmp_path / "none.h5"), build={})
    with pytest.raises(GcdError, match="cannot be built"):
        empty.prepare_data()


def test_global_batch_split_over_ranks(fcc_h5: Path) -> None:
    class FakeTrainer:
        world_size = 4

    dm = AtomsDataModule(str(fcc_h5), batch_size=8)
    dm.trainer = FakeTrainer()  # type: ignore[assignment]
    assert dm.per_rank_batch_size == 2
    dm.batch_size = 6
    with pytest.raises(GcdError, match="not divisible"):
        _ = dm.per_rank_batch_size


def test_translations_that_share_a_voxel_are_redrawn(fcc_h5: Path) -> None:
    """Two atoms 0.9 voxel apart along x share a voxel of an 8³ grid under 10 % of random translations;
    with the grid as ``collision_grid`` the dataset redraws those, so the encoder never refuses a batch."""
    from datamodules.dataset import AtomsDataset, _shares_voxel

    frac = np.array([[0.1, 0.3, 0.3], [0.1 + 0.9 / 8, 0.3, 0.3]])
    grid = np.array([8, 8, 8])
    torch.manual_seed(0)
    plain = AtomsDataset(fcc_h5, [0], translate=True)
    guarded = AtomsDataset(fcc_h5, [0], translate=True, collision_grid=(8, 8, 8))
    shared_plain = sum(_shares_voxel(plain._translated(frac), grid) for _ in range(400))
    assert 15 <= shared_plain <= 70  # ~40 expected: the hazard is real
    for _ in range(400):
        moved = guarded._translated(frac)
        assert not _shares_voxel(moved, grid)
        np.testing.assert_allclose(np.mod(moved[1] - moved[0], 1.0), [0.9 / 8, 0.0, 0.0], atol=1e-12)
    dm = AtomsDataModule(str(fcc_h5), view="voxel", batch_size=4)
    assert dm.dataset("train").collision_grid.tolist() == list(dm.grid_shape)


def test_condition_grid_is_the_energy_grid_of_any_one_curve_condition(tmp_path: Path) -> None:
    """The data module names no application: a condition that is one curve field (here ``absorbance``) on a
    file grid ``meta_<field>_energy`` gives that grid; two conditions, a length mismatch or no grid give None."""
    from ase.build import bulk

    from datamodules.h5format import DatasetRecords, write_dataset

    energy = np.linspace(280.0, 300.0, 5)
    atoms = [bulk("Cu", "fcc", a=3.6, cubic=True) for _ in range(4)]
    props = {"absorbance": np.random.default_rng(0).random((4, 5)), "lattice_a": np.full(4, 3.6)}
    meta = {"builder": "test", "absorbance_energy": energy}
    path = write_dataset(tmp_path / "curves.h5", DatasetRecords(atoms, ["cu"] * 4, props, {}, "test", meta))
    with AtomsH5(path) as data:
        assert data.field_energy("absorbance") == pytest.approx(energy.tolist())
        assert data.field_energy("lattice_a") is None
    assert AtomsDataModule(str(path), conditions=["absorbance"], batch_size=2).condition_grid() == pytest.approx(
        energy.tolist()
    )
    assert AtomsDataModule(str(path), conditions=["absorbance", "lattice_a"], batch_size=2).condition_grid() is None
    assert AtomsDataModule(str(path), conditions=["lattice_a"], batch_size=2).condition_grid() is None
