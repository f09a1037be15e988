"""Builder of simple crystal datasets: sc, fcc, bcc, hcp, diamond and two-species rocksalt supercells.

Every structure is an orthorhombic supercell (hcp uses ASE's orthorhombic cell) with Gaussian thermal
displacements of standard deviation ``sigma`` Å per Cartesian component and, optionally, a random
translation of the whole crystal (so a model cannot rely on atoms sitting at the origin).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from ase import Atoms
from ase.build import bulk
from ase.data import atomic_numbers, reference_states
from tqdm.auto import tqdm

from datamodules.h5format import DatasetRecords
from lightning_gcd.errors import GcdError

PHASES: tuple[str, ...] = ("sc", "fcc", "bcc", "hcp", "diamond", "rocksalt")
DEFAULT_ELEMENTS: dict[str, str] = {
    "sc": "Po",
    "fcc": "Cu",
    "bcc": "W",
    "hcp": "Mg",
    "diamond": "Si",
    "rocksalt": "NaCl",
}
ROCKSALT_LATTICE = {"NaCl": 5.64, "MgO": 4.21, "LiF": 4.03, "KCl": 6.29}  # Å, experimental


@dataclass(frozen=True)
class CrystalSpec:
    """One crystal phase: ASE structure name, element (or AB formula for rocksalt), lattice constants in Å."""

    phase: str
    element: str
    a: float
    c: float | None = None

    def unit_cell(self) -> Atoms:
        """The conventional (orthorhombic) cell of this phase."""
        if self.phase == "hcp":
            return bulk(self.element, "hcp", a=self.a, c=self.c, orthorhombic=True)
        return bulk(self.element, self.phase, a=self.a, cubic=True)


def default_spec(phase: str, element: str | None = None, a: float | None = None, c: float | None = None) -> CrystalSpec:
    """Fill element and lattice constants from ASE's reference states where not given."""
    if phase not in PHASES:
        raise GcdError(f"unknown phase '{phase}'; choose from {', '.join(PHASES)}")
    element = element or DEFAULT_ELEMENTS[phase]
    if phase == "rocksalt":
        if a is None:
            if element not in ROCKSALT_LATTICE:
                raise GcdError(
                    f"no default lattice constant for rocksalt {element}; pass one with --lattice rocksalt=A"
                )
            a = ROCKSALT_LATTICE[element]
        return CrystalSpec(phase, element, a)
    if element not in atomic_numbers:
        raise GcdError(f"unknown element '{element}' for phase {phase}")
    ref = reference_states[atomic_numbers[element]] or {}
    if a is None:
        if ref.get("symmetry") == phase and "a" in ref:
            a = float(ref["a"])
        else:
            raise GcdError(f"ASE has no {phase} lattice constant for {element}; pass one with --lattice {phase}=A")
    if phase == "hcp" and c is None:
        ratio = ref.get("c/a", 1.633) if ref.get("symmetry") == "hcp" else 1.633
        c = float(a * ratio)
    return CrystalSpec(phase, element, float(a), c)


def build_crystal(
    spec: CrystalSpec, repeat: Sequence[int], sigma: float, translate: bool, rng: np.random.Generator
) -> Atoms:
    """A rattled, optionally translated supercell of ``spec``; positions wrapped into the cell."""
    atoms = spec.unit_cell() * tuple(int(r) for r in repeat)
    if sigma > 0:
        atoms.positions = atoms.positions + rng.normal(0.0, sigma, size=atoms.positions.shape)
    if translate:
        atoms.positions = atoms.positions + rng.random(3) @ np.asarray(atoms.cell[:])
    atoms.wrap()
    atoms.pbc = True
    return atoms


def crystal_records(
    specs: Sequence[CrystalSpec],
    repeat: Sequence[int] = (2, 2, 2),
    thermal_sigma: float = 0.05,
    count: int = 32,
    seed: int = 0,
    translate: bool = True,
    progress: bool = True,
) -> DatasetRecords:
    """``count`` rattled supercells of each phase in ``specs``.

    Properties written: ``phase_onehot`` (S, P) float32 (a condition vector for phase-conditioned
    models), ``phase_index`` (S,) int32, ``lattice_a`` and ``lattice_c`` (S,) Å, ``thermal_sigma`` (S,) Å.
    ``thermal_sigma`` is the Gaussian displacement σ per Cartesian component.
    """
    if count < 1:
        raise GcdError("--count must be at least 1")
    if thermal_sigma < 0:
        raise GcdError("--sigma-thermal must be non-negative")
    if len(repeat) != 3 or min(repeat) < 1:
        raise GcdError("--repeat takes three positive integers")
    rng = np.random.default_rng(seed)
    atoms_list, labels, phase_index = [], [], []
    total = count * len(specs)
    with tqdm(total=total, desc="crystals", disable=not progress, unit="structure") as bar:
        for p, spec in enumerate(specs):
            rep = "x".join(str(int(r)) for r in repeat)
            for _ in range(count):
                atoms_list.append(build_crystal(spec, repeat, thermal_sigma, translate, rng))
                labels.append(f"{spec.phase} {spec.element} {rep}")
                phase_index.append(p)
                bar.update(1)
    phase_index_arr = np.asarray(phase_index, dtype=np.int32)
    onehot = np.eye(len(specs), dtype=np.float32)[phase_index_arr]
    lattice_a = np.asarray([specs[p].a for p in phase_index], dtype=np.float64)
    lattice_c = np.asarray([specs[p].c if specs[p].c else specs[p].a for p in phase_index], dtype=np.float64)
    return DatasetRecords(
        atoms=atoms_list,
        labels=labels,
        properties={
            "phase_onehot": onehot,
            "phase_index": phase_index_arr,
            "lattice_a": lattice_a,
            "lattice_c": lattice_c,
            "thermal_sigma": np.full(len(atoms_list), thermal_sigma, dtype=np.float64),
        },
        description=f"crystals: {', '.join(f'{s.phase} {s.element}' for s in specs)}; repeat {tuple(repeat)}, "
        f"thermal sigma {thermal_sigma} Å, seed {seed}",
        metadata={
            "builder": "crystals",
            "phases": [s.phase for s in specs],
            "elements": [s.element for s in specs],
            "repeat": np.asarray(repeat, dtype=np.int64),
            "seed": seed,
        },
    )
