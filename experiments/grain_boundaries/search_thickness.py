"""Are the search's grains thick enough? The lowest candidate per [n], its grains thickened and relaxed again (#28).

``gcd data build grain-boundary-search`` uses grains of at least 17 Å (``gb_search.MIN_GRAIN_THICKNESS``). For
the lowest-E_gb candidate at each [n] of a search file, this script inserts ``--periods`` more bulk periods of
each grain at the grain's centre (a copy of the relaxed period just below the centre, so the boundary
structure is untouched), relaxes the thicker cell with the file's own relaxation (normal relaxation, same
potential, same tolerance: ``relaxer_for_file``) and reports E_gb (J/m²) of the candidate as stored, re-relaxed
at its own thickness, and thickened. Usage::

    python experiments/grain_boundaries/search_thickness.py results/search_pilot/w_twist100.h5 --periods 6
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from ase import Atoms

from datamodules.builders.grain_boundaries import BOUNDARIES, bicrystal, gb_energy, relaxer_for_file
from datamodules.h5format import AtomsH5
from lightning_gcd.io import write_json_atomic

BULK_TOLERANCE = 0.3  # Å: a period repeats when every atom, shifted by one period, lands this close to an atom
# (elastic strain of a thin grain stays below it and relaxes out; boundary atoms are farther off)


def thicken(atoms: Atoms, boundary_z: np.ndarray, period: float, periods: int) -> tuple[Atoms, float]:
    """``atoms`` with ``periods`` more grain periods (each ``period`` Å along z) inserted at both grain centres,
    and the largest mismatch (Å) of the copied periods: above ``BULK_TOLERANCE`` the grain centre is not bulk
    (a boundary migrated into it during the anneal) and the thickened cell is not the same boundary."""
    lz = float(atoms.cell.lengths()[2])
    centre_b = float(np.mean(boundary_z))  # grain B lies between the two boundaries, grain A across z = 0
    thick, mismatch_b = _insert_periods(atoms, centre_b, period, periods)
    thick, mismatch_a = _insert_periods(thick, centre_b - lz / 2, period, periods)  # A's centre, moved by none
    return thick, max(mismatch_a, mismatch_b)


def _insert_periods(atoms: Atoms, centre: float, period: float, periods: int) -> tuple[Atoms, float]:
    """Copies of the bulk period nearest ``centre`` (z, Å) inserted above it; (new atoms, mismatch Å)."""
    lz = float(atoms.cell.lengths()[2])
    lengths_xy = np.asarray(atoms.cell.lengths()[:2])
    positions = atoms.positions.copy()
    positions[:, 2] = np.mod(positions[:, 2] - centre + lz / 2, lz)  # the centre at lz / 2, far from the cell ends
    z = positions[:, 2]
    near = np.sort(z[np.abs(z - lz / 2) < period])
    cuts = [(a + b) / 2 for a, b in zip(near[:-1], near[1:], strict=True) if b - a > 0.05]  # between planes
    mismatch, cut = np.inf, lz / 2
    for c in cuts:
        below = positions[(z >= c - period) & (z < c)] + np.array([0.0, 0.0, period])
        above = positions[(z >= c) & (z < c + period)]
        if len(below) != len(above) or not len(below):
            continue
        d = below[:, None, :] - above[None, :, :]
        d[..., :2] -= lengths_xy * np.round(d[..., :2] / lengths_xy)
        worst = float(np.sqrt((d * d).sum(-1)).min(axis=1).max())
        if worst < mismatch:
            mismatch, cut = worst, float(c)
    slab = positions[(z >= cut - period) & (z < cut)]
    copies = np.concatenate([slab + np.array([0.0, 0.0, j * period]) for j in range(1, periods + 1)])
    positions[z >= cut, 2] += periods * period
    positions = np.concatenate([positions, copies])
    positions[:, 2] += centre - lz / 2
    cell = np.asarray(atoms.cell[:]).copy()
    cell[2, 2] = lz + periods * period
    out = Atoms(atoms.get_chemical_symbols()[:1] * len(positions), positions=positions, cell=cell, pbc=True)
    out.wrap()
    return out, mismatch


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("file", type=Path, help="a grain-boundary-search HDF5 file")
    parser.add_argument("--periods", type=int, default=6, help="grain periods added to each grain (default 6)")
    parser.add_argument("--out", type=Path, default=None, help="JSON file for the table (default: print only)")
    args = parser.parse_args(argv)
    with AtomsH5(args.file) as f:
        attrs = dict(f.attrs)
        relaxer = relaxer_for_file(attrs)
        element, a = str(attrs["meta_element"]), float(attrs["meta_lattice_a"])
        e_coh = float(attrs["meta_cohesive_energy"])
        boundaries = [str(b) for b in attrs["meta_boundaries"]]
        p = {k: f.structure_property(k) for k in ("gb_energy", "n_fraction", "boundary_index", "boundary_z")}
        area = f.structure_property("boundary_area")
        rows = []
        for b_index, name in enumerate(boundaries):
            period = float(bicrystal(BOUNDARIES[name], element, a, (1, 1, 1)).atoms.cell.lengths()[2]) / 2
            for n in sorted(set(np.round(p["n_fraction"][p["boundary_index"] == b_index], 6))):
                mask = (p["boundary_index"] == b_index) & (np.round(p["n_fraction"], 6) == n)
                i = int(np.nonzero(mask)[0][np.argmin(p["gb_energy"][mask])])
                atoms = f.atoms(i)
                again = relaxer.relax(atoms)
                thick_atoms, mismatch = thicken(atoms, p["boundary_z"][i], period, args.periods)
                thick = relaxer.relax(thick_atoms)
                row = {
                    "boundary": name,
                    "n": float(n),
                    "index": i,
                    "grain_thickness": float(atoms.cell.lengths()[2]) / 2,
                    "thick_grain_thickness": float(thick[0].cell.lengths()[2]) / 2,
                    "stored": float(p["gb_energy"][i]),
                    "rerelaxed": gb_energy(again[1], len(atoms), e_coh, float(area[i])),
                    "thickened": gb_energy(thick[1], len(thick_atoms), e_coh, float(area[i]))
                    if mismatch < BULK_TOLERANCE
                    else float("nan"),
                    "period_mismatch": mismatch,
                    "thick_stress_zz": float(thick[0].info["stress_zz"]),
                }
                rows.append(row)
                print(
                    f"{element} {name} [n] = {n:.2f}: stored {row['stored']:.4f}, re-relaxed {row['rerelaxed']:.4f}, "
                    f"grains {row['grain_thickness']:.1f} -> {row['thick_grain_thickness']:.1f} Å: "
                    f"{row['thickened']:.4f} J/m² ({row['thickened'] - row['rerelaxed']:+.4f})"
                    + ("" if mismatch < BULK_TOLERANCE else f" (no bulk period at a grain centre: {mismatch:.2f} Å)"),
                    flush=True,
                )
    result = {"file": str(args.file), "periods_added_per_grain": args.periods, "rows": rows}
    if args.out is not None:
        write_json_atomic(args.out, result, indent=1)
    return result


if __name__ == "__main__":
    main()
