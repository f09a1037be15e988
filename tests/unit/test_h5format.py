"""The HDF5 format: round trip, and validation that names the file and the field."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
from ase.build import bulk

from datamodules.h5format import AtomsH5, DatasetRecords, random_splits, validate_file, write_dataset
from lightning_gcd.errors import DatasetFormatError


def _records(n: int = 3) -> DatasetRecords:
    atoms = []
    for i in range(n):
        a = bulk("Cu", "fcc", cubic=True) * (1, 1, i + 1)
        a.rattle(0.01, seed=i)
        atoms.append(a)
    n_atoms = sum(len(a) for a in atoms)
    return DatasetRecords(
        atoms=atoms,
        labels=[f"fcc {i}" for i in range(n)],
        properties={"energy": np.arange(n, dtype=float), "xanes": np.ones((n, 5), dtype=np.float32)},
        atom_properties={"charge": np.zeros(n_atoms)},
        description="test",
    )


def test_round_trip(tmp_path: Path) -> None:
    rec = _records()
    path = write_dataset(tmp_path / "a.h5", rec, splits=random_splits(3, (0.34, 0.33, 0.33), seed=1))
    with AtomsH5(path) as data:
        assert len(data) == 3
        assert data.labels == rec.labels
        assert data.species == [29]
        for i, atoms in enumerate(rec.atoms):
            np.testing.assert_array_equal(data.positions(i), atoms.positions)
            np.testing.assert_array_equal(data.numbers(i), atoms.numbers)
            np.testing.assert_array_equal(data.cells[i], atoms.cell[:])
            frac = data.frac_coords(i)
            assert frac.min() >= 0 and frac.max() < 1
        np.testing.assert_array_equal(data.structure_property("xanes"), rec.properties["xanes"])
        assert data.atom_property("charge", 2).shape == (12,)
        assert sorted(np.concatenate([data.split(s) for s in ("train", "val", "test")]).tolist()) == [0, 1, 2]
    assert not list(tmp_path.glob(".*tmp*")), "temporary file left behind"


def test_splits_reproducible_and_disjoint() -> None:
    a = random_splits(100, (0.8, 0.1, 0.1), seed=3)
    b = random_splits(100, (0.8, 0.1, 0.1), seed=3)
    c = random_splits(100, (0.8, 0.1, 0.1), seed=4)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["val"], c["val"])
    assert [len(a[k]) for k in ("train", "val", "test")] == [80, 10, 10]
    assert len(set(np.concatenate(list(a.values())).tolist())) == 100
    with pytest.raises(ValueError):
        random_splits(10, (0.5, 0.1, 0.1), seed=0)


def test_interrupted_write_leaves_nothing(tmp_path: Path) -> None:
    rec = _records()
    rec.properties["bad"] = np.ones(7)  # wrong length: validation of the temporary file fails
    with pytest.raises(DatasetFormatError, match="properties/bad"):
        write_dataset(tmp_path / "b.h5", rec)
    assert list(tmp_path.iterdir()) == []


def _corrupt(tmp_path: Path, edit) -> Path:
    path = write_dataset(tmp_path / "c.h5", _records())
    with h5py.File(path, "a") as h5:
        edit(h5)
    return path


@pytest.mark.parametrize(
    "edit, field, words",
    [
        (lambda h5: h5.attrs.__setitem__("format", "other"), "format", "foreign"),
        (lambda h5: h5.attrs.__setitem__("version", 99), "version", "unsupported"),
        (lambda h5: h5.__delitem__("structures/cell"), "structures/cell", "missing"),
        (lambda h5: h5.__delitem__("structures"), "structures", "missing"),
        (lambda h5: h5["structures/offset"].__setitem__(1, 5), "structures/offset", "do not add up"),
        (lambda h5: h5["structures/positions"].__setitem__((3, 0), np.nan), "structures/positions", "structure 0"),
        (lambda h5: h5["structures/cell"].__setitem__(2, np.zeros((3, 3))), "structures/cell", "singular"),
        (
            lambda h5: (
                h5.__delitem__("structures/numbers"),
                h5["structures"].create_dataset("numbers", data=np.ones(3, dtype=np.int16)),
            ),
            "structures/numbers",
            "rows",
        ),
        (
            lambda h5: h5["properties"].create_dataset("short", data=np.ones(2)),
            "properties/short",
            "one row per structure",
        ),
        (
            lambda h5: h5["properties"].create_dataset("nan", data=np.array([1.0, np.nan, 2.0])),
            "properties/nan",
            "non-finite",
        ),
        (
            lambda h5: h5.create_group("splits").create_dataset("train", data=np.array([0, 7])),
            "splits/train",
            "outside",
        ),
    ],
)
def test_validation_names_file_and_field(tmp_path: Path, edit, field: str, words: str) -> None:
    path = _corrupt(tmp_path, edit)
    with pytest.raises(DatasetFormatError) as info:
        validate_file(path)
    message = str(info.value)
    assert str(path) in message and field in message and words in message


def test_truncated_and_foreign_files(tmp_path: Path) -> None:
    good = write_dataset(tmp_path / "good.h5", _records())
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(good.read_bytes()[:2000])
    with pytest.raises(DatasetFormatError, match="truncated.h5"):
        validate_file(truncated)
    text = tmp_path / "text.h5"
    text.write_text("not hdf5")
    with pytest.raises(DatasetFormatError, match="not a readable HDF5"):
        AtomsH5(text)
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as h5:
        h5["x"] = np.ones(3)
    with pytest.raises(DatasetFormatError, match="foreign"):
        AtomsH5(foreign)
    with pytest.raises(DatasetFormatError, match="no such file"):
        AtomsH5(tmp_path / "absent.h5")


def test_writer_refuses_bad_records(tmp_path: Path) -> None:
    rec = _records()
    rec.atoms[1].positions[0, 0] = np.nan
    with pytest.raises(DatasetFormatError, match="non-finite"):
        write_dataset(tmp_path / "d.h5", rec)
    rec = _records()
    rec.atoms[0].cell = np.zeros((3, 3))
    with pytest.raises(DatasetFormatError, match="singular"):
        write_dataset(tmp_path / "d.h5", rec)
    with pytest.raises(DatasetFormatError, match="empty"):
        write_dataset(tmp_path / "d.h5", DatasetRecords(atoms=[], labels=[]))
    assert not (tmp_path / "d.h5").exists()


def test_missing_property_named(tmp_path: Path) -> None:
    path = write_dataset(tmp_path / "e.h5", _records())
    with (
        AtomsH5(path) as data,
        pytest.raises(DatasetFormatError, match="properties/spectrum.*available: energy, xanes"),
    ):
        data.structure_property("spectrum")
