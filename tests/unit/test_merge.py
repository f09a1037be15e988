"""`gcd data merge`: concatenation, properties, voxel caches, new splits and the errors a user meets."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
from ase.build import bulk
from conftest import run_gcd

from datamodules.builders import build_dataset
from datamodules.h5format import AtomsH5, DatasetRecords, validate_file, write_dataset
from datamodules.merge import merge_files
from lightning_gcd.errors import DatasetFormatError, GcdError


@pytest.fixture(scope="module")
def two_builds(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two fcc+bcc files (different seeds), both with an occupancy cache on the same 0.9 Å grid."""
    d = tmp_path_factory.mktemp("merge")
    a = build_dataset(
        "crystals",
        d / "a.h5",
        phases=["fcc", "bcc"],
        count=3,
        seed=1,
        voxels=["occupancy"],
        spacing=0.9,
        progress=False,
    )
    b = build_dataset(
        "crystals",
        d / "b.h5",
        phases=["fcc", "bcc"],
        count=2,
        seed=2,
        voxels=["occupancy"],
        spacing=0.9,
        progress=False,
    )
    return a, b


def _records(
    n: int, xanes_grid: np.ndarray | None = None, extra: dict | None = None, xanes: bool = False
) -> DatasetRecords:
    atoms = [bulk("C", "diamond", a=3.57, cubic=True) for _ in range(n)]
    props = {"density": np.full(n, 3.5), **(extra or {})}
    meta = {"builder": "test"}
    if xanes_grid is not None or xanes:
        props["xanes"] = np.ones((n, 100), dtype=np.float32)
    if xanes_grid is not None:
        meta["xanes_energy"] = xanes_grid
    return DatasetRecords(atoms, ["c"] * n, props, {"charge": np.zeros((8 * n, 2))}, "test", meta)


def test_merge_concatenates_structures_properties_and_voxels(two_builds: tuple[Path, Path], tmp_path: Path) -> None:
    a, b = two_builds
    out = merge_files([a, b], tmp_path / "m.h5", split=(0.6, 0.2, 0.2), seed=4)
    validate_file(out)
    with AtomsH5(a) as ra, AtomsH5(b) as rb, AtomsH5(out) as m:
        assert len(m) == len(ra) + len(rb) == 10
        assert m.labels == ra.labels + rb.labels
        for i in range(len(m)):
            src, j = (ra, i) if i < len(ra) else (rb, i - len(ra))
            np.testing.assert_array_equal(m.positions(i), src.positions(j))
            np.testing.assert_array_equal(m.cells[i], src.cells[j])
            np.testing.assert_array_equal(m.voxel_cache("occupancy")[i], src.voxel_cache("occupancy")[j])
        for name in ra.property_names:
            np.testing.assert_array_equal(
                m.structure_property(name), np.concatenate([ra.structure_property(name), rb.structure_property(name)])
            )
        assert dict(m.voxel_cache("occupancy").attrs)["encoding"] == dict(ra.voxel_cache("occupancy").attrs)["encoding"]
        splits = np.concatenate([m.split(s) for s in ("train", "val", "test")])
        assert sorted(splits.tolist()) == list(range(10)) and len(m.split("train")) == 6
        attrs = m.attrs
        assert attrs["meta_builder"] == "crystals"  # equal in both inputs: kept
        assert "meta_seed" not in attrs  # differs: dropped
        assert [str(p) for p in attrs["meta_merged_from"]] == [str(a), str(b)]


def test_merge_atom_properties_and_sort_by(tmp_path: Path) -> None:
    one = _records(2, extra={"build_index": np.array([2, 0])})
    two = _records(1, extra={"build_index": np.array([1])})
    two.atom_properties["charge"][:] = 7.0
    write_dataset(tmp_path / "one.h5", one)
    write_dataset(tmp_path / "two.h5", two)
    out = merge_files([tmp_path / "one.h5", tmp_path / "two.h5"], tmp_path / "m.h5", sort_by="build_index")
    with AtomsH5(out) as m:
        assert m.structure_property("build_index").tolist() == [0, 1, 2]
        assert m.atom_property("charge", 1).tolist() == [[7.0, 7.0]] * 8  # the structure from two.h5, now second
        assert m.atom_property("charge", 0).sum() == 0


def test_merge_drops_voxels_on_different_grids_and_fields_missing_somewhere(
    two_builds: tuple[Path, Path], tmp_path: Path
) -> None:
    a, _ = two_builds
    other = build_dataset(
        "crystals",
        tmp_path / "other.h5",
        phases=["fcc", "bcc"],
        count=1,
        voxels=["occupancy"],
        spacing=0.6,
        progress=False,
    )
    with_energy = tmp_path / "e.h5"
    records = _records(1, extra={"phase_onehot": np.ones((1, 2), dtype=np.float32)})
    write_dataset(with_energy, records)
    run = run_gcd("data", "merge", str(a), str(other), str(with_energy), "--out", "m.h5", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert "dropping voxel caches" in run.stderr and "occupancy" in run.stderr
    assert "dropping properties not in every input" in run.stderr
    with AtomsH5(tmp_path / "m.h5") as m:
        assert m.voxel_names == []
        assert m.property_names == ["phase_onehot"]  # the only property all three files have
        assert len(m) == 6 + 2 + 1


@pytest.mark.parametrize("case", ["shape", "kind", "xanes_grid", "missing_grid", "any_curve_grid"])
def test_merge_errors_name_the_file_and_field(tmp_path: Path, case: str) -> None:
    grid = np.linspace(275, 315, 100)
    first = _records(1, xanes_grid=grid, extra={"tag": np.zeros((1, 3))})
    field = "meta_xanes_energy"
    if case == "shape":
        second, field = _records(1, xanes_grid=grid, extra={"tag": np.zeros((1, 4))}), "properties/tag"
    elif case == "kind":
        second, field = _records(1, xanes_grid=grid), "properties/tag"
    elif case == "xanes_grid":
        second = _records(1, xanes_grid=grid + 1.0, extra={"tag": np.zeros((1, 3))})
    elif case == "missing_grid":  # spectra without their energy grid
        second = _records(1, extra={"tag": np.zeros((1, 3))}, xanes=True)
    else:  # the rule is the format's, not the spectra's: any field on an energy grid
        first = _records(1, extra={"tag": np.zeros((1, 3)), "absorbance": np.ones((1, 5))})
        second = _records(1, extra={"tag": np.zeros((1, 3)), "absorbance": np.ones((1, 5))})
        first.metadata["absorbance_energy"], second.metadata["absorbance_energy"] = np.arange(5.0), np.arange(5.0) + 1
        field = "meta_absorbance_energy"
    write_dataset(tmp_path / "second.h5", second)
    if case == "kind":  # a text field where the first file has numbers
        with h5py.File(tmp_path / "second.h5", "a") as h5:
            h5["properties"].create_dataset("tag", data=np.array([b"abc"], dtype=object), dtype=h5py.string_dtype())
    write_dataset(tmp_path / "first.h5", first)
    with pytest.raises(DatasetFormatError) as err:
        merge_files([tmp_path / "first.h5", tmp_path / "second.h5"], tmp_path / "m.h5")
    assert "second.h5" in str(err.value) and field in str(err.value)
    assert not (tmp_path / "m.h5").exists()
    if case != "shape":
        return
    run = run_gcd("data", "merge", "first.h5", "second.h5", "--out", "m.h5", cwd=tmp_path)  # as a user sees it
    assert run.returncode == 2
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "second.h5" in lines[0] and field in lines[0], run.stderr


def test_merge_bad_inputs(tmp_path: Path, two_builds: tuple[Path, Path]) -> None:
    a, _ = two_builds
    (tmp_path / "junk.h5").write_text("not hdf5")
    run = run_gcd("data", "merge", str(a), "junk.h5", "--out", "m.h5", cwd=tmp_path)
    assert run.returncode == 2 and "junk.h5" in run.stderr and "not a readable HDF5" in run.stderr
    with pytest.raises(DatasetFormatError, match="properties/nope"):
        merge_files([a], tmp_path / "m.h5", sort_by="nope")
    with pytest.raises(GcdError, match="split fractions"):
        merge_files([a], tmp_path / "m.h5", split=(0.5, 0.5, 0.5))
    assert not (tmp_path / "m.h5").exists()
    with h5py.File(a) as h5:  # inputs untouched
        assert "voxels/occupancy" in h5
