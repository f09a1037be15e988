"""The lightning_gcd HDF5 dataset format (version 1): writer, lazy reader and validation.

Layout (the README documents it for users)::

    /                       attrs: format="lightning_gcd", version=1, species=[Z...], description
    /structures/n_atoms     (S,)      int32
    /structures/offset      (S,)      int64   start of each structure in the per-atom arrays
    /structures/cell        (S,3,3)   float64 Å, rows are lattice vectors
    /structures/positions   (A,3)     float64 Å, Cartesian
    /structures/numbers     (A,)      int16   atomic numbers
    /structures/label       (S,)      utf-8 strings
    /properties/<name>      (S,...)   per-structure values (energy in eV, density in g/cm³, xanes ...)
    /atom_properties/<name> (A,...)   per-atom values
    /voxels/<encoding>      (S,C,D,H,W) float32 cache; attrs: spacing, species, channels, grid_shape
    /splits/<name>          (k,)      int64 structure indices (train, val, test)
    attrs meta_<field>_energy (K,)    float64 eV: the energy grid of a field whose last axis is a curve of K values

Atoms are the source of truth; voxel grids are a cache. Every reader validates the file and raises
``DatasetFormatError`` naming the file and the field. Writers write a temporary file beside the target
and rename it at the end, so an interrupted build never leaves a file that looks valid.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from ase import Atoms

from lightning_gcd.errors import DatasetFormatError
from lightning_gcd.io import atomic_path

FORMAT_NAME = "lightning_gcd"
FORMAT_VERSION = 1
SINGULAR_VOLUME = 1e-6  # Å^3: cells with |det| below this are singular
_STR = h5py.string_dtype(encoding="utf-8")


# --------------------------------------------------------------------------------------------------
# In-memory records and writing
# --------------------------------------------------------------------------------------------------
@dataclass
class DatasetRecords:
    """A whole dataset in memory, ready to write.

    ``properties[name]`` has a first axis of length S (structures); ``atom_properties[name]`` has a first
    axis of length A (all atoms, concatenated in structure order).
    """

    atoms: list[Atoms]
    labels: list[str]
    properties: dict[str, np.ndarray] = field(default_factory=dict)
    atom_properties: dict[str, np.ndarray] = field(default_factory=dict)
    description: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)


atomic_output = atomic_path  # the old name (``datamodules.merge`` and user scripts import it)


def write_dataset(
    path: str | Path,
    records: DatasetRecords,
    splits: Mapping[str, np.ndarray] | None = None,
    voxels: Mapping[str, tuple[np.ndarray, Mapping[str, Any]]] | None = None,
) -> Path:
    """Write ``records`` (plus optional splits and voxel caches) to ``path`` atomically.

    Raises ``DatasetFormatError`` (naming ``path``) when the records themselves are inconsistent.
    """
    path = Path(path)
    _check_records(path, records)
    with atomic_output(path) as tmp:
        with h5py.File(tmp, "w") as h5:
            _write_records(h5, records)
            for name, idx in (splits or {}).items():
                write_split(h5, name, idx)
            for name, (grids, attrs) in (voxels or {}).items():
                write_voxels(h5, name, grids, attrs)
        validate_file(tmp, display_path=path)
    return path


def _check_records(path: Path, records: DatasetRecords) -> None:
    if len(records.atoms) == 0:
        raise DatasetFormatError(path, "structures", "no structures to write (empty selection)")
    if len(records.labels) != len(records.atoms):
        raise DatasetFormatError(
            path, "structures/label", f"{len(records.labels)} labels for {len(records.atoms)} structures"
        )
    for i, atoms in enumerate(records.atoms):
        if len(atoms) == 0:
            raise DatasetFormatError(path, "structures/n_atoms", f"structure {i} has no atoms")
        if not np.all(np.isfinite(atoms.positions)):
            raise DatasetFormatError(path, "structures/positions", f"structure {i} has non-finite coordinates")
        if abs(np.linalg.det(np.asarray(atoms.cell[:]))) < SINGULAR_VOLUME:
            raise DatasetFormatError(path, "structures/cell", f"structure {i} has a singular or missing cell")


def _write_records(h5: h5py.File, records: DatasetRecords) -> None:
    n_atoms = np.array([len(a) for a in records.atoms], dtype=np.int32)
    offset = np.concatenate([[0], np.cumsum(n_atoms)[:-1]]).astype(np.int64)
    numbers = np.concatenate([a.numbers for a in records.atoms]).astype(np.int16)
    h5.attrs["format"] = FORMAT_NAME
    h5.attrs["version"] = FORMAT_VERSION
    h5.attrs["species"] = np.unique(numbers).astype(np.int64)
    h5.attrs["description"] = records.description
    for key, value in records.metadata.items():
        h5.attrs[f"meta_{key}"] = value
    g = h5.create_group("structures")
    g.create_dataset("n_atoms", data=n_atoms)
    g.create_dataset("offset", data=offset)
    g.create_dataset("cell", data=np.stack([np.asarray(a.cell[:], dtype=np.float64) for a in records.atoms]))
    g.create_dataset("positions", data=np.concatenate([a.positions for a in records.atoms]).astype(np.float64))
    g.create_dataset("numbers", data=numbers)
    g.create_dataset("label", data=np.array(records.labels, dtype=object), dtype=_STR)
    props = h5.create_group("properties")
    for name, values in records.properties.items():
        props.create_dataset(name, data=np.asarray(values))
    aprops = h5.create_group("atom_properties")
    for name, values in records.atom_properties.items():
        aprops.create_dataset(name, data=np.asarray(values))


def write_split(h5: h5py.File, name: str, indices: np.ndarray) -> None:
    """Write (or replace) ``/splits/<name>``."""
    g = h5.require_group("splits")
    if name in g:
        del g[name]
    g.create_dataset(name, data=np.asarray(indices, dtype=np.int64))


def write_voxels(h5: h5py.File, name: str, grids: np.ndarray, attrs: Mapping[str, Any]) -> None:
    """Write a voxel cache (S,C,D,H,W) float32, one structure per chunk, lzf-compressed."""
    g = h5.require_group("voxels")
    if name in g:
        del g[name]
    grids = np.asarray(grids, dtype=np.float32)
    ds = g.create_dataset(name, data=grids, chunks=(1, *grids.shape[1:]), compression="lzf")
    for key, value in attrs.items():
        ds.attrs[key] = value


def random_splits(n_structures: int, fractions: Sequence[float], seed: int) -> dict[str, np.ndarray]:
    """Shuffle 0..S-1 with ``seed`` and cut it into train/val/test by ``fractions`` (summing to 1).

    Every non-zero fraction gets at least one structure when there are enough structures.
    """
    fractions = np.asarray(fractions, dtype=float)
    if fractions.shape != (3,) or np.any(fractions < 0) or abs(fractions.sum() - 1.0) > 1e-6:
        raise ValueError(f"split fractions must be three non-negative numbers summing to 1, got {fractions.tolist()}")
    order = np.random.default_rng(seed).permutation(n_structures)
    counts = np.floor(fractions * n_structures).astype(int)
    for k in (1, 2):  # give val/test one structure each when asked for and possible
        if fractions[k] > 0 and counts[k] == 0 and counts[0] > 1:
            counts[k] = 1
    counts[0] = n_structures - counts[1] - counts[2]
    cuts = np.cumsum(counts)[:-1]
    train, val, test = np.split(order, cuts)
    return {"train": np.sort(train), "val": np.sort(val), "test": np.sort(test)}


# --------------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------------
_REQUIRED = {
    # name: (ndim, trailing shape, numpy kind)
    "n_atoms": (1, (), "iu"),
    "offset": (1, (), "iu"),
    "cell": (3, (3, 3), "f"),
    "positions": (2, (3,), "f"),
    "numbers": (1, (), "iu"),
    "label": (1, (), "OSU"),
}


def validate_file(path: str | Path, display_path: str | Path | None = None) -> None:
    """Check a dataset file completely; raise ``DatasetFormatError`` on the first fault found."""
    with open_h5(path, display_path) as h5:
        validate_open(h5, display_path or path)


@contextlib.contextmanager
def open_h5(path: str | Path, display_path: str | Path | None = None, mode: str = "r") -> Iterator[h5py.File]:
    """Open an HDF5 file, turning 'missing', 'truncated' and 'not HDF5' into ``DatasetFormatError``."""
    shown = display_path or path
    if not Path(path).exists():
        raise DatasetFormatError(shown, "", "no such file")
    try:
        h5 = h5py.File(path, mode)
    except OSError as exc:
        raise DatasetFormatError(shown, "", f"not a readable HDF5 file (truncated or not HDF5): {exc}") from None
    try:
        yield h5
    finally:
        h5.close()


def _dataset(h5: h5py.File, path: Path | str, name: str) -> h5py.Dataset:
    obj = h5.get(name)
    if obj is None:
        raise DatasetFormatError(path, name, "missing")
    if not isinstance(obj, h5py.Dataset):
        raise DatasetFormatError(path, name, "is a group, expected a dataset")
    return obj


def _finite(path: Path | str, name: str, values: np.ndarray, per: str = "row") -> None:
    if values.dtype.kind == "f" and not np.all(np.isfinite(values)):
        bad = np.argwhere(~np.isfinite(values.reshape(values.shape[0], -1)).all(axis=1)).ravel()
        raise DatasetFormatError(path, name, f"non-finite values (NaN or inf) at {per} {bad[:5].tolist()}")


def validate_open(h5: h5py.File, path: Path | str) -> None:
    """Validate an open file (see module docstring for what is checked)."""
    fmt = h5.attrs.get("format")
    if isinstance(fmt, bytes):
        fmt = fmt.decode()
    if fmt != FORMAT_NAME:
        raise DatasetFormatError(
            path, "/ attrs format", f"expected '{FORMAT_NAME}', found {fmt!r} (foreign HDF5 file?)"
        )
    version = h5.attrs.get("version")
    if version is None or int(version) != FORMAT_VERSION:
        raise DatasetFormatError(
            path, "/ attrs version", f"unsupported version {version!r}; this reader knows {FORMAT_VERSION}"
        )
    if "structures" not in h5:
        raise DatasetFormatError(path, "structures", "missing group")
    shapes = {}
    for short, (ndim, trailing, kinds) in _REQUIRED.items():
        name = f"structures/{short}"
        ds = _dataset(h5, path, name)
        if ds.ndim != ndim or tuple(ds.shape[1:]) != trailing:
            want = "(n" + "".join(f",{t}" for t in trailing) + ")"
            raise DatasetFormatError(path, name, f"shape {ds.shape}, expected {want}")
        if ds.dtype.kind not in kinds:
            raise DatasetFormatError(path, name, f"dtype {ds.dtype} not allowed")
        shapes[short] = ds.shape
    n_structures = shapes["n_atoms"][0]
    if n_structures == 0:
        raise DatasetFormatError(path, "structures/n_atoms", "the file holds no structures")
    for short in ("offset", "cell", "label"):
        if shapes[short][0] != n_structures:
            raise DatasetFormatError(
                path, f"structures/{short}", f"{shapes[short][0]} rows for {n_structures} structures"
            )
    n_atoms = h5["structures/n_atoms"][()].astype(np.int64)
    offset = h5["structures/offset"][()].astype(np.int64)
    total = int(n_atoms.sum())
    if np.any(n_atoms < 1):
        raise DatasetFormatError(
            path, "structures/n_atoms", f"structures without atoms at {np.flatnonzero(n_atoms < 1)[:5].tolist()}"
        )
    expected_offset = np.concatenate([[0], np.cumsum(n_atoms)[:-1]])
    if not np.array_equal(offset, expected_offset):
        first = int(np.flatnonzero(offset != expected_offset)[0])
        raise DatasetFormatError(
            path, "structures/offset", f"offsets do not add up to the cumulative n_atoms (first at structure {first})"
        )
    for short in ("positions", "numbers"):
        if shapes[short][0] != total:
            raise DatasetFormatError(
                path, f"structures/{short}", f"{shapes[short][0]} rows, but n_atoms sums to {total}"
            )
    cell = h5["structures/cell"][()]
    _finite(path, "structures/cell", cell, per="structure")
    singular = np.flatnonzero(np.abs(np.linalg.det(cell)) < SINGULAR_VOLUME)
    if singular.size:
        raise DatasetFormatError(path, "structures/cell", f"singular cell at structure {singular[:5].tolist()}")
    _check_positions(h5, path, offset, n_atoms)
    numbers = h5["structures/numbers"][()]
    if numbers.size and (numbers.min() < 1 or numbers.max() > 118):
        raise DatasetFormatError(path, "structures/numbers", "atomic numbers must lie in 1..118")
    _check_table(h5, path, "properties", n_structures, "structure")
    _check_table(h5, path, "atom_properties", total, "atom")
    _check_splits(h5, path, n_structures)
    _check_voxels(h5, path, n_structures)


def _check_positions(
    h5: h5py.File, path: Path | str, offset: np.ndarray, n_atoms: np.ndarray, chunk: int = 1_000_000
) -> None:
    ds = h5["structures/positions"]
    for start in range(0, ds.shape[0], chunk):
        block = ds[start : start + chunk]
        bad = ~np.all(np.isfinite(block), axis=1)
        if bad.any():
            atom = start + int(np.flatnonzero(bad)[0])
            structure = int(np.searchsorted(offset, atom, side="right") - 1)
            raise DatasetFormatError(
                path,
                "structures/positions",
                f"non-finite coordinates (NaN or inf) in structure {structure} (atom {atom})",
            )


def _check_table(h5: h5py.File, path: Path | str, group: str, length: int, per: str) -> None:
    if group not in h5:
        return
    for name, ds in h5[group].items():
        if not isinstance(ds, h5py.Dataset):
            raise DatasetFormatError(path, f"{group}/{name}", "is a group, expected a dataset")
        if ds.ndim == 0 or ds.shape[0] != length:
            raise DatasetFormatError(
                path, f"{group}/{name}", f"shape {ds.shape}: first axis must have one row per {per} ({length})"
            )
        if ds.dtype.kind == "f":
            _finite(path, f"{group}/{name}", ds[()], per=per)


def _check_splits(h5: h5py.File, path: Path | str, n_structures: int) -> None:
    if "splits" not in h5:
        return
    for name, ds in h5["splits"].items():
        idx = ds[()]
        if idx.ndim != 1 or idx.dtype.kind not in "iu":
            raise DatasetFormatError(path, f"splits/{name}", "must be a 1-D integer array of structure indices")
        if idx.size and (idx.min() < 0 or idx.max() >= n_structures):
            raise DatasetFormatError(path, f"splits/{name}", f"indices outside 0..{n_structures - 1}")


def _check_voxels(h5: h5py.File, path: Path | str, n_structures: int) -> None:
    if "voxels" not in h5:
        return
    for name, ds in h5["voxels"].items():
        if ds.ndim != 5 or ds.shape[0] != n_structures:
            raise DatasetFormatError(path, f"voxels/{name}", f"shape {ds.shape}, expected ({n_structures},C,D,H,W)")
        for key in ("spacing", "channels", "species"):
            if key not in ds.attrs:
                raise DatasetFormatError(path, f"voxels/{name}", f"missing attribute '{key}'")
        if len(ds.attrs["channels"]) != ds.shape[1]:
            raise DatasetFormatError(
                path, f"voxels/{name}", f"{len(ds.attrs['channels'])} channel names for {ds.shape[1]} channels"
            )


# --------------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------------
class AtomsH5:
    """Lazy reader of a validated dataset file.

    The small per-structure index (n_atoms, offset, cell, label) is loaded at open; positions, numbers,
    properties and voxel grids are read per structure on demand. ``AtomsH5`` holds an open ``h5py.File``;
    open one per process (h5py handles must not cross a fork).
    """

    def __init__(self, path: str | Path, validate: bool = True) -> None:
        self.path = Path(path)
        if validate:
            validate_file(self.path)
        try:
            self._h5 = h5py.File(self.path, "r")
        except OSError as exc:
            raise DatasetFormatError(self.path, "", f"not a readable HDF5 file: {exc}") from None
        g = self._h5["structures"]
        self.n_atoms: np.ndarray = g["n_atoms"][()].astype(np.int64)
        self.offset: np.ndarray = g["offset"][()].astype(np.int64)
        self.cells: np.ndarray = g["cell"][()]
        self.labels: list[str] = [s.decode() if isinstance(s, bytes) else str(s) for s in g["label"][()]]
        self.species: list[int] = [int(z) for z in self._h5.attrs["species"]]
        self.description: str = str(self._h5.attrs.get("description", ""))

    def __len__(self) -> int:
        return len(self.n_atoms)

    def close(self) -> None:
        self._h5.close()

    def __enter__(self) -> AtomsH5:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def attrs(self) -> dict[str, Any]:
        return dict(self._h5.attrs)

    def _slice(self, i: int) -> slice:
        return slice(int(self.offset[i]), int(self.offset[i] + self.n_atoms[i]))

    def positions(self, i: int) -> np.ndarray:
        """(n_i, 3) Cartesian positions in Å of structure ``i``."""
        return self._h5["structures/positions"][self._slice(i)]

    def numbers(self, i: int) -> np.ndarray:
        """(n_i,) atomic numbers of structure ``i``."""
        return self._h5["structures/numbers"][self._slice(i)].astype(np.int64)

    def frac_coords(self, i: int) -> np.ndarray:
        """(n_i, 3) fractional coordinates of structure ``i`` wrapped into [0, 1)."""
        from lightning_gcd.structures import wrap_frac

        return wrap_frac(np.linalg.solve(self.cells[i].T, self.positions(i).T).T)

    def atoms(self, i: int) -> Atoms:
        return Atoms(numbers=self.numbers(i), positions=self.positions(i), cell=self.cells[i], pbc=True)

    # properties ---------------------------------------------------------------------------------
    @property
    def property_names(self) -> list[str]:
        return sorted(self._h5["properties"].keys()) if "properties" in self._h5 else []

    @property
    def atom_property_names(self) -> list[str]:
        return sorted(self._h5["atom_properties"].keys()) if "atom_properties" in self._h5 else []

    def require_property(self, name: str) -> h5py.Dataset:
        if name not in self.property_names:
            raise DatasetFormatError(
                self.path, f"properties/{name}", f"missing (available: {', '.join(self.property_names) or 'none'})"
            )
        return self._h5[f"properties/{name}"]

    def structure_property(self, name: str, i: int | slice | np.ndarray | None = None) -> np.ndarray:
        ds = self.require_property(name)
        return ds[()] if i is None else ds[i]

    def field_energy(self, name: str) -> list[float] | None:
        """The energy grid (eV) that field ``name``'s last axis is sampled on (root attribute
        ``meta_<name>_energy``, e.g. a spectrum's), or None when the file gives none."""
        grid = self._h5.attrs.get(f"meta_{name}_energy")
        return None if grid is None else [float(e) for e in np.ravel(grid)]

    def atom_property(self, name: str, i: int) -> np.ndarray:
        if name not in self.atom_property_names:
            raise DatasetFormatError(self.path, f"atom_properties/{name}", "missing")
        return self._h5[f"atom_properties/{name}"][self._slice(i)]

    # splits and voxels --------------------------------------------------------------------------
    @property
    def split_names(self) -> list[str]:
        return sorted(self._h5["splits"].keys()) if "splits" in self._h5 else []

    def split(self, name: str) -> np.ndarray:
        if name not in self.split_names:
            raise DatasetFormatError(
                self.path, f"splits/{name}", f"missing (available: {', '.join(self.split_names) or 'none'})"
            )
        return self._h5[f"splits/{name}"][()]

    @property
    def voxel_names(self) -> list[str]:
        return sorted(self._h5["voxels"].keys()) if "voxels" in self._h5 else []

    def voxel_cache(self, name: str) -> h5py.Dataset:
        if name not in self.voxel_names:
            raise DatasetFormatError(self.path, f"voxels/{name}", "missing")
        return self._h5[f"voxels/{name}"]

    def min_distance(self, max_structures: int = 64) -> float:
        """Smallest interatomic distance (Å, periodic) over the first ``max_structures`` structures."""
        from ase.neighborlist import neighbor_list

        best = np.inf
        for i in range(min(len(self), max_structures)):
            atoms = self.atoms(i)
            d = neighbor_list("d", atoms, 4.0)
            if d.size:
                best = min(best, float(d.min()))
        return best
