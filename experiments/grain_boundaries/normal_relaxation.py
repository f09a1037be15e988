"""The builder's n = 0 Cu Σ5 minima, fixed cell vs normal-relaxed, against the independent GRIP-setup reference (#28).

For each potential (ASE EMT; LAMMPS with Mishin's ``Cu_mishin1.eam.alloy``) and boundary (Σ5(310) tilt,
Σ5(100) twist):

* the builder (``grain_boundary_records``, i.e. ``gcd data build grain-boundaries --fractions 0
  --translation-grid 8 8 --fmax 0.01``) over an 8×8 grid of in-plane translations, at fixed cell
  (``--relax-cell fixed``) and normal-relaxed (``--relax-cell normal``), default cells;
* the builder's normal relaxation with the grains doubled (``--repeat`` with twice the periods along z):
  every grid point for LAMMPS, the ``--top`` lowest translations of the default cell for EMT (ASE's EMT is
  pure Python);
* ``grip_reference.py`` (a separate process; it shares no code with the builder's relaxation path) on the
  same grid, and with its grains doubled (the full grid for EAM); for EMT the grid's lowest translation is
  then minimised again to fmax ``--reference-fmax`` (1e-4 eV/Å) at both thicknesses, and that pair is the
  reference (FIRE at 1e-3 leaves thick slabs short of their rest length: RESULTS.md).

Writes ``<out>/<calculator>_<boundary>.json`` per case (resumable: a case whose file exists is skipped) and
prints a summary table. Usage::

    OMP_NUM_THREADS=1 python experiments/grain_boundaries/normal_relaxation.py \\
        --out experiments/grain_boundaries/results/normal_relaxation
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from datamodules.builders.grain_boundaries import (
    BOUNDARIES,
    bicrystal,
    gb_energy,
    grain_boundary_records,
    lattice_of,
)
from lightning_gcd.io import write_json_atomic
from lightning_gcd.relax import Relaxer

REPO = Path(__file__).resolve().parents[2]

GRIP = Path(__file__).resolve().parent / "grip_reference.py"


def builder_grid(
    calculator: str, boundary: str, cell: str, grid: int, fmax: float, max_steps: int, repeat=None
) -> dict:
    t0 = time.perf_counter()
    rec = grain_boundary_records(
        "Cu",
        [boundary],
        calculator=calculator,
        fractions=[0.0],
        translation_grid=(grid, grid),
        repeat=repeat,
        fmax=fmax,
        max_steps=max_steps,
        relax_cell=cell,
        progress=False,
    )
    p = rec.properties
    e = p["gb_energy"]
    k = int(np.argmin(e))
    lengths = rec.atoms[0].cell.lengths()
    spec = BOUNDARIES[boundary]
    nx, ny, _ = repeat if repeat is not None else spec.repeat[lattice_of("Cu")]
    fractions = [[float(t[0] / (lengths[0] / nx)), float(t[1] / (lengths[1] / ny))] for t in p["translation"]]
    return {
        "min_gb_energy": float(e[k]),
        "min_translation": fractions[k],
        "gb_energy": e.tolist(),
        "translation": fractions,
        "stress_zz_max_abs": float(np.abs(p["stress_zz"]).max()),
        "steps_max": int(p["relax_steps"].max()),
        "fmax_left_max": float(p["relax_fmax"].max()),
        "n_atoms": int(len(rec.atoms[0])),
        "lz": float(lengths[2]),
        "repeat": list(repeat or spec.repeat["fcc"]),
        "seconds": time.perf_counter() - t0,
        "lattice_a": float(rec.metadata["lattice_a"]),
        "cohesive_energy": float(rec.metadata["cohesive_energy"]),
    }


def builder_at(calculator: str, boundary: str, translations, fmax: float, max_steps: int, repeat) -> dict:
    """The builder's relaxation path (bicrystal + Relaxer(cell="normal")) at given translation fractions."""
    relaxer = Relaxer("Cu", calculator, None, fmax, max_steps, "normal")
    a, e_coh = relaxer.bulk_reference("fcc")
    spec = BOUNDARIES[boundary]
    probe = bicrystal(spec, "Cu", a, repeat)
    lengths = probe.atoms.cell.lengths()
    out = []
    t0 = time.perf_counter()
    for f in translations:
        crystal = bicrystal(spec, "Cu", a, repeat, (f[0] * lengths[0] / repeat[0], f[1] * lengths[1] / repeat[1]))
        relaxed, energy, steps, _ = relaxer.relax(crystal.atoms)
        out.append(
            {
                "translation": list(f),
                "gb_energy": gb_energy(energy, len(relaxed), e_coh, crystal.area),
                "stress_zz": relaxed.info["stress_zz"],
                "steps": steps,
            }
        )
    best = min(out, key=lambda r: r["gb_energy"])
    return {
        "min_gb_energy": best["gb_energy"],
        "min_translation": best["translation"],
        "rows": out,
        "n_atoms": len(probe.atoms),
        "repeat": list(repeat),
        "seconds": time.perf_counter() - t0,
    }


def grip(calculator: str, boundary: str, grid: int, out: Path, extra: list[str]) -> dict:
    cmd = [
        sys.executable,
        str(GRIP),
        "--calculator",
        "emt" if calculator == "emt" else "eam",
        "--boundary",
        boundary,
        "--grid",
        str(grid),
        str(grid),
        "--out",
        str(out),
        "--quiet",
        *extra,
    ]
    if not out.exists():
        subprocess.run(cmd, check=True)
    result = json.loads(out.read_text())
    result["command"] = " ".join(["python", str(GRIP.relative_to(REPO)), *cmd[2:]])
    return result


def run_case(calculator: str, boundary: str, args: argparse.Namespace) -> dict:
    path = args.out / f"{calculator}_{boundary}.json"
    if path.exists():
        return json.loads(path.read_text())
    spec = BOUNDARIES[boundary]
    nx, ny, nz = spec.repeat["fcc"]
    doubled = (nx, ny, 2 * nz)
    case = {
        "calculator": calculator,
        "boundary": boundary,
        "grid": args.grid,
        "fmax": args.fmax,
        "max_steps": args.max_steps,
    }
    print(f"{calculator} {boundary}: builder fixed", flush=True)
    case["builder_fixed"] = builder_grid(calculator, boundary, "fixed", args.grid, args.fmax, args.max_steps)
    print(f"{calculator} {boundary}: builder normal", flush=True)
    case["builder_normal"] = builder_grid(calculator, boundary, "normal", args.grid, args.fmax, args.max_steps)
    print(f"{calculator} {boundary}: builder normal, grains doubled", flush=True)
    if calculator == "lammps":
        case["builder_normal_doubled"] = builder_grid(
            calculator, boundary, "normal", args.grid, args.fmax, args.max_steps, repeat=doubled
        )
    else:
        order = np.argsort(case["builder_normal"]["gb_energy"])[: args.top]
        case["builder_normal_doubled"] = builder_at(
            calculator,
            boundary,
            [case["builder_normal"]["translation"][i] for i in order],
            args.fmax,
            args.max_steps,
            doubled,
        )
    print(f"{calculator} {boundary}: GRIP setup", flush=True)
    base = args.out / f"grip_{calculator}_{boundary}.json"
    case["grip"] = grip(calculator, boundary, args.grid, base, ["--free", str(args.free), "--buffer", str(args.buffer)])
    print(f"{calculator} {boundary}: GRIP setup, grains doubled", flush=True)
    # grain = buffer + free; doubling the grain keeps the buffer and adds a grain's thickness to the free part
    grain = args.free + args.buffer
    extra = ["--free", str(args.free + grain), "--buffer", str(args.buffer)]
    if calculator == "emt":
        extra += ["--best-of", str(base), "--top", str(args.top)]
    case["grip_doubled"] = grip(
        calculator, boundary, args.grid, args.out / f"grip_{calculator}_{boundary}_doubled.json", extra
    )
    if calculator == "emt":
        print(
            f"{calculator} {boundary}: GRIP setup, lowest translation at fmax {args.reference_fmax:g}, both "
            f"thicknesses",
            flush=True,
        )
        case["grip_grid"], case["grip_grid_top_doubled"] = case["grip"], case["grip_doubled"]
        for key, free in (("grip", args.free), ("grip_doubled", args.free + grain)):
            suffix = "_doubled" if key == "grip_doubled" else ""
            name = f"grip_{calculator}_{boundary}_best_fmax{args.reference_fmax:g}{suffix}.json"
            case[key] = grip(
                calculator,
                boundary,
                args.grid,
                args.out / name,
                [
                    "--free",
                    str(free),
                    "--buffer",
                    str(args.buffer),
                    "--best-of",
                    str(base),
                    "--top",
                    "1",
                    "--fmax",
                    str(args.reference_fmax),
                ],
            )
    write_json_atomic(path, case, keep_nan=True, indent=1)
    return case


def summary(case: dict) -> dict:
    fixed, normal, dbl = case["builder_fixed"], case["builder_normal"], case["builder_normal_doubled"]
    g, gd = case["grip"], case["grip_doubled"]
    return {
        "boundary": case["boundary"],
        "calculator": case["calculator"],
        "fixed": fixed["min_gb_energy"],
        "normal": normal["min_gb_energy"],
        "normal_translation": normal["min_translation"],
        "grip": g["min_gb_energy"],
        "grip_translation": g["min_translation"],
        "relative_difference": (normal["min_gb_energy"] - g["min_gb_energy"]) / g["min_gb_energy"],
        "builder_doubling_change": dbl["min_gb_energy"] - normal["min_gb_energy"],
        "grip_doubling_change": gd["min_gb_energy"] - g["min_gb_energy"],
        "builder_atoms": [normal["n_atoms"], dbl["n_atoms"]],
        "grip_atoms": [g["rows"][0]["n_atoms"], gd["rows"][0]["n_atoms"]],
        "grip_grain_thickness": [g["grain_thickness"], gd["grain_thickness"]],
    }


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=REPO / "experiments/grain_boundaries/results/normal_relaxation")
    p.add_argument("--calculators", nargs="+", default=["lammps", "emt"], choices=["lammps", "emt"])
    p.add_argument("--boundaries", nargs="+", default=["tilt310", "twist100"], choices=sorted(BOUNDARIES))
    p.add_argument("--grid", type=int, default=8)
    p.add_argument("--fmax", type=float, default=0.01)
    p.add_argument("--max-steps", type=int, default=5000)
    p.add_argument("--top", type=int, default=4, help="EMT: translations rerun with doubled grains")
    p.add_argument("--free", type=float, default=12.0, help="GRIP setup: free Å per grain")
    p.add_argument("--buffer", type=float, default=12.0, help="GRIP setup: fixed / rigid layer Å")
    p.add_argument("--reference-fmax", type=float, default=1e-4, help="GRIP setup, EMT: fmax of the final pair (eV/Å)")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for calculator in args.calculators:
        for boundary in args.boundaries:
            rows.append(summary(run_case(calculator, boundary, args)))
            print(json.dumps(rows[-1]), flush=True)
    write_json_atomic(args.out / "summary.json", rows, keep_nan=True, indent=1)
    print(
        "| boundary | potential | builder fixed | builder normal | GRIP setup | rel. diff | doubling: builder / GRIP |"
    )
    for r in rows:
        print(
            f"| {r['boundary']} | {r['calculator']} | {r['fixed']:.4f} | {r['normal']:.4f} | {r['grip']:.4f} | "
            f"{100 * r['relative_difference']:+.2f}% | {r['builder_doubling_change']:+.4f} / "
            f"{r['grip_doubling_change']:+.4f} |"
        )
    return rows


if __name__ == "__main__":
    main()
