"""Grain-boundary in-painting: keep the bulk grains of a structure fixed, generate the boundary regions.

A source structure (``DATASET:INDEX`` of an HDF5 dataset, usually one built by ``gcd data build
grain-boundaries``) has boundary planes normal to z at heights ``boundary_z`` (the file's per-structure
``boundary_z`` property, or given). Everything within ``width`` Å (periodic in z) of a boundary plane is the
**boundary slab** and is generated; everything else is kept exactly:

* voxel model (GCDM): voxels whose centre lies outside the slabs are fixed to the source's encoding (only
  the source atoms in those voxels are encoded); the sampler replaces them at every step by their noised
  known values (the sampling hook ``samplers.KnownValues``) and returns them exactly. Inside the
  slabs occupancy is free, so **the number of boundary atoms can change** — the grand canonical part.
* particle model: atoms farther than ``width`` from every boundary are fixed (replacement in the VE sampler,
  the hook ``samplers.CartesianKnownAtoms``); the source's atoms inside the slabs are
  regenerated, so the atom count stays the source's.

Then ``lightning_gcd.grain_boundaries.relax`` relaxes them and scores their boundary energy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from ase import Atoms

from lightning_gcd.errors import GcdError

SOURCE_PROPERTIES = (
    "n_atoms_perfect",
    "boundary_area",
    "cohesive_energy",
    "lattice_a",
    "gb_energy",
    "n_boundary_atoms",
    "energy",
    "boundary_index",
)


@dataclass
class InpaintSource:
    """A structure to in-paint and what its dataset says about it."""

    atoms: Atoms
    boundary_z: np.ndarray
    path: str = ""
    index: int = -1
    label: str = ""
    properties: dict[str, float] = field(default_factory=dict)
    attrs: dict[str, Any] = field(default_factory=dict)


def read_source(spec: str, boundary_z: Sequence[float] | None = None) -> InpaintSource:
    """Structure INDEX of DATASET (``spec`` = ``DATASET:INDEX``) with its boundary planes and properties."""
    from datamodules.h5format import AtomsH5

    path, sep, index = spec.rpartition(":")
    if not sep or not path or not index.lstrip("-").isdigit():
        raise GcdError(f"--inpaint expects DATASET:INDEX, got '{spec}'")
    i = int(index)
    with AtomsH5(path) as data:
        if not 0 <= i < len(data):
            raise GcdError(f"{path}: index {i} out of range (the file holds {len(data)} structures)")
        atoms = data.atoms(i)
        props = {
            name: np.asarray(data.structure_property(name, i))
            for name in SOURCE_PROPERTIES
            if name in data.property_names
        }
        if boundary_z is None:
            if "boundary_z" not in data.property_names:
                raise GcdError(
                    f"{path}: no boundary_z property; give the boundary planes with --boundary-z Z [Z ...] (Å)"
                )
            boundary_z = data.structure_property("boundary_z", i)
        attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in data.attrs.items()}
        label = data.labels[i]
    scalars = {k: float(v) for k, v in props.items() if v.ndim == 0}
    return InpaintSource(atoms, np.atleast_1d(np.asarray(boundary_z, dtype=np.float64)), path, i, label, scalars, attrs)


def _check_cell(atoms: Atoms) -> float:
    """The cell's z length; boundary planes normal to z need a and b in the xy plane."""
    cell = np.asarray(atoms.cell[:], dtype=np.float64)
    if abs(cell[0, 2]) > 1e-6 or abs(cell[1, 2]) > 1e-6 or cell[2, 2] <= 0:
        raise GcdError(
            "in-painting needs boundary planes normal to z: cell vectors a and b in the xy plane, c with z > 0"
        )
    return float(cell[2, 2])


def slab_free(z: np.ndarray, boundary_z: Sequence[float], width: float, lz: float) -> np.ndarray:
    """True where the height ``z`` (Å) lies within ``width`` of a boundary plane (periodic in z)."""
    from datamodules.builders.grain_boundaries import boundary_distance

    z = np.asarray(z, dtype=np.float64)
    points = np.column_stack([np.zeros_like(z), np.zeros_like(z), z])
    return boundary_distance(points, boundary_z, lz) <= width


def _is_voxel(model: Any) -> bool:
    return "grid_shape" in model.info


def inpaint_template(
    model: Any, source: InpaintSource, width: float, n: int
) -> tuple[dict[str, torch.Tensor], np.ndarray]:
    """The sampling template of ``n`` in-paintings of ``source`` and the (N,) mask of its fixed atoms."""
    if width <= 0:
        raise GcdError("--boundary-width must be positive (Å)")
    if n < 1:
        raise GcdError("--n must be at least 1")
    if model.info.get("cond_dim", 0):
        raise GcdError("in-painting supports unconditional models only")
    atoms = source.atoms
    lz = _check_cell(atoms)
    species = {int(z) for z in model.info["species"]}
    if set(int(z) for z in atoms.numbers) - species:
        raise GcdError(f"the source has elements the model was not trained on (model species {sorted(species)})")
    cell = torch.as_tensor(np.asarray(atoms.cell[:]), dtype=torch.float32)
    frac = np.mod(atoms.get_scaled_positions(wrap=False), 1.0)
    template: dict[str, torch.Tensor] = {"cell": cell.expand(n, 3, 3).clone()}
    if _is_voxel(model):
        from lightning_gcd.structures import StructureBatch

        grid = model.grid_for_cell(cell)
        depth = grid[2]
        free_layer = slab_free((np.arange(depth) + 0.5) / depth * lz, source.boundary_z, width, lz)
        layer = np.minimum((frac[:, 2] * depth).astype(int), depth - 1)
        fixed = ~free_layer[layer]
        _check_split(fixed, free_layer.all(), not free_layer.any(), width)
        known = StructureBatch.from_atoms([atoms[np.nonzero(fixed)[0]]], dtype=torch.float64)
        encoded = model.encoding.encode(known, grid)  # (1, C, D, H, W); EncodingError if two bulk atoms share a voxel
        template["inpaint_grid"] = encoded.expand(n, *encoded.shape[1:]).clone()
        template["inpaint_mask"] = (
            torch.as_tensor(~free_layer).view(1, 1, 1, 1, depth).expand(n, 1, 1, 1, depth).clone()
        )
    else:
        free = slab_free(atoms.positions[:, 2], source.boundary_z, width, lz)
        fixed = ~free
        _check_split(fixed, not fixed.any(), fixed.all(), width)
        template["numbers"] = torch.as_tensor(atoms.numbers, dtype=torch.long).expand(n, -1).clone()
        template["mask"] = torch.ones(n, len(atoms), dtype=torch.bool)
        template["inpaint_frac"] = torch.as_tensor(frac, dtype=torch.float32).expand(n, -1, -1).clone()
        template["inpaint_mask"] = torch.as_tensor(fixed).expand(n, -1).clone()
    return template, fixed


def _check_split(fixed: np.ndarray, nothing_fixed: bool, nothing_free: bool, width: float) -> None:
    if nothing_fixed or not fixed.any():
        raise GcdError(f"--boundary-width {width:g} Å covers the whole cell: nothing would stay fixed")
    if nothing_free:
        raise GcdError(f"--boundary-width {width:g} Å leaves no region to generate around the boundary planes")


def inpaint(
    model: Any,
    source: InpaintSource,
    width: float,
    n: int,
    steps: int | None = None,
    sampler: str | None = None,
    seed: int = 0,
    batch_size: int = 16,
    progress: bool = False,
) -> tuple[list[Atoms], np.ndarray]:
    """Generate ``n`` boundaries of ``source`` (bulk fixed); returns the structures and the source's fixed-atom mask."""
    template, fixed = inpaint_template(model, source, width, n)
    generated = model.sample(
        template, batch_size=batch_size, steps=steps, sampler=sampler, seed=seed, progress=progress
    )
    n_perfect = source.properties.get("n_atoms_perfect")
    for k, atoms in enumerate(generated):
        atoms.info.update(
            {
                "sample": k,
                "model": type(model).__name__,
                "seed": seed,
                "inpaint_source": f"{source.path}:{source.index}",
                "boundary_width": float(width),
                "n_fixed": int(fixed.sum()),
                "n_atoms": len(atoms),
            }
        )
        if n_perfect is not None:
            atoms.info["n_boundary_atoms"] = int(len(atoms) - int(n_perfect))
    return generated, fixed


def fixed_atoms_kept(generated: Atoms, source: InpaintSource, fixed: np.ndarray, tol: float = 1e-3) -> bool:
    """Whether every fixed source atom is in ``generated`` (same species, within ``tol`` Å, periodic)."""
    from ase.geometry import get_distances

    keep = source.atoms[np.nonzero(fixed)[0]]
    if len(generated) < len(keep):
        return False
    _, d = get_distances(keep.positions, generated.positions, cell=source.atoms.cell, pbc=True)
    nearest = d.argmin(axis=1)
    return bool(
        (d.min(axis=1) <= tol).all()
        and (generated.numbers[nearest] == keep.numbers).all()
        and len(set(nearest.tolist())) == len(keep)
    )
