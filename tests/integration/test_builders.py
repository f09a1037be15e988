"""Dataset builders: crystals and from-files."""

from __future__ import annotations

from pathlib import Path

import ase.io
import numpy as np
import pytest
from ase.build import bulk
from conftest import make_frames

from datamodules.builders import build_dataset, build_records
from datamodules.builders.crystals import PHASES, default_spec
from datamodules.builders.from_files import files_records
from datamodules.h5format import AtomsH5
from lightning_gcd.errors import GcdError


def test_crystals_all_phases(crystals_h5: Path) -> None:
    with AtomsH5(crystals_h5) as data:
        assert len(data) == 6 * 4
        phases = [label.split()[0] for label in data.labels]
        assert sorted(set(phases)) == sorted(PHASES)
        expected_atoms = {"sc": 8, "fcc": 32, "bcc": 16, "hcp": 32, "diamond": 64, "rocksalt": 64}
        for i, phase in enumerate(phases):
            assert data.n_atoms[i] == expected_atoms[phase]
            cell = data.cells[i]
            np.testing.assert_allclose(cell - np.diag(np.diag(cell)), 0, atol=1e-9)  # orthorhombic
        rocksalt = [i for i, p in enumerate(phases) if p == "rocksalt"][0]
        assert sorted(set(data.numbers(rocksalt).tolist())) == [11, 17]
        onehot = data.structure_property("phase_onehot")
        assert onehot.shape == (24, 6) and np.all(onehot.sum(1) == 1)
        assert "occupancy" in data.voxel_names


def test_crystals_reproducible_and_rattled(tmp_path: Path) -> None:
    a = build_records("crystals", progress=False, phases=["bcc"], count=3, seed=5)
    b = build_records("crystals", progress=False, phases=["bcc"], count=3, seed=5)
    c = build_records("crystals", progress=False, phases=["bcc"], count=3, seed=6)
    np.testing.assert_array_equal(a.atoms[2].positions, b.atoms[2].positions)
    assert not np.allclose(a.atoms[2].positions, c.atoms[2].positions)
    # the thermal spread is the requested sigma: displacement from ideal sites after undoing the translation
    rec = build_records("crystals", progress=False, phases=["fcc"], count=20, thermal_sigma=0.1, translate=False)
    ideal = default_spec("fcc").unit_cell() * (2, 2, 2)
    disp = np.concatenate([(r.positions - ideal.positions + 3.61) % 7.22 - 3.61 for r in rec.atoms[:20]])
    assert abs(disp.std() - 0.1) < 0.01


def test_crystal_options_and_errors() -> None:
    rec = build_records(
        "crystals",
        progress=False,
        phases=["fcc", "rocksalt"],
        elements={"fcc": "Al", "rocksalt": "MgO"},
        lattice={"fcc": 4.1},
        count=1,
        repeat=[1, 1, 2],
    )
    assert rec.atoms[0].get_chemical_symbols()[0] == "Al"
    np.testing.assert_allclose(rec.atoms[0].cell.lengths(), [4.1, 4.1, 8.2])
    assert set(rec.atoms[1].get_chemical_symbols()) == {"Mg", "O"}
    with pytest.raises(GcdError, match="no bcc lattice constant for Cu"):
        default_spec("bcc", "Cu")
    with pytest.raises(GcdError, match="unknown phase"):
        default_spec("fluorite")


def test_from_files_keeps_properties(tmp_path: Path, extxyz_file: Path) -> None:
    rec = files_records([str(extxyz_file)], progress=False)
    frames = make_frames()
    assert len(rec.atoms) == 5
    np.testing.assert_allclose(rec.properties["energy"], [-3.0 * i for i in range(5)])
    np.testing.assert_allclose(rec.properties["temperature"], [300.0 + i for i in range(5)])
    np.testing.assert_allclose(
        rec.atom_properties["forces"], np.concatenate([f.get_forces() for f in frames]), atol=1e-7
    )
    np.testing.assert_allclose(
        rec.atom_properties["tag_value"], np.concatenate([f.arrays["tag_value"] for f in frames]), atol=1e-7
    )


@pytest.mark.parametrize("fmt, name", [("vasp", "POSCAR"), ("cif", "x.cif"), ("lammps-data", "x.lmp")])
def test_from_files_formats_and_globs(tmp_path: Path, fmt: str, name: str) -> None:
    atoms = bulk("Si", "diamond", cubic=True)
    for k in range(2):
        sub = tmp_path / f"run{k}"
        sub.mkdir()
        ase.io.write(sub / name, atoms, format=fmt)
    options = {"fmt": "lammps-data"} if fmt == "lammps-data" else {}
    if fmt == "lammps-data":
        rec = files_records([str(tmp_path / "run*" / name)], progress=False, **options)
    else:
        rec = files_records([str(tmp_path / "run*" / name)], progress=False)
    assert len(rec.atoms) == 2 and len(rec.atoms[0]) == 8
    np.testing.assert_allclose(rec.atoms[0].get_volume(), atoms.get_volume(), rtol=1e-6)


def test_from_files_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.xyz"
    bad.write_text("this is not\na structure file\n")
    with pytest.raises(GcdError, match="bad.xyz: cannot read"):
        files_records([str(bad)], progress=False)
    with pytest.raises(GcdError, match="absent.*no such file"):
        files_records([str(tmp_path / "absent*.xyz")], progress=False)
    molecule = tmp_path / "mol.xyz"
    molecule.write_text("2\n\nH 0 0 0\nH 0 0 0.74\n")
    with pytest.raises(GcdError, match="no periodic cell"):
        files_records([str(molecule)], progress=False)


def test_build_dataset_with_gaussian_cache(tmp_path: Path, extxyz_file: Path) -> None:
    out = build_dataset(
        "from-files",
        tmp_path / "g.h5",
        patterns=[str(extxyz_file)],
        voxels=["gaussian"],
        spacing=0.3,
        sigma=0.4,
        progress=False,
    )
    with AtomsH5(out) as data:
        cache = data.voxel_cache("gaussian")
        assert cache.shape[:2] == (5, 1)
        assert float(cache.attrs["sigma"]) == 0.4
        assert sorted(data.split_names) == ["test", "train", "val"]
