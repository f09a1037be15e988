"""Lower envelope E_gb([n]) of annealed grain-boundary searches, beside GRIP's published minima (issue #28).

Reads one or more files of ``gcd data build grain-boundary-search`` (shards of one search, or whole searches;
candidates are told apart by element, boundary and ``build_index``, so a file given twice counts once) and
writes, per (element, boundary):

* ``envelope.json``: per [n] the candidates, the lowest E_gb (J/m²) and the candidate that has it (its
  translation, anneal temperature and steps), the count of candidates within 0.01 and 0.05 J/m² of it, and
  GRIP's value where one is published; the search's cost (wall seconds per candidate);
* ``candidates.csv``: one row per candidate: [n], translation (Å), temperature (K), MD steps, E_gb (J/m²),
  σ_zz (GPa), wall seconds;
* ``envelope_<element>_<boundary>.png``: every candidate (colour: anneal temperature), the lower envelope and
  GRIP's points.

GRIP's values (Chen, Frolov et al., Nat. Commun. 2024; the W Σ5(310)/(001) twist example of enze-chen/grip, its
best structures named ``lammps_<E_gb>_<[n]>_...``): W Σ5(100) twist with Zhou's EAM, 2.297 J/m² at [n] = 0.2
and 2.469 at [n] = 0.4. Usage::

    python experiments/grain_boundaries/search_envelope.py results/search_pilot/*.h5 --out results/search_pilot
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from datamodules.h5format import AtomsH5
from lightning_gcd.io import write_json_atomic, write_text_atomic

GRIP = {("W", "twist100"): {0.2: 2.297, 0.4: 2.469}}  # J/m², [n] -> E_gb
NEAR = (0.01, 0.05)  # J/m²: candidates this close to the per-[n] minimum are counted
FIELDS = ("n_fraction", "translation", "anneal_temperature", "anneal_steps", "gb_energy", "stress_zz", "seconds")


def read_candidates(paths: list[Path]) -> dict[tuple[str, str], dict[tuple, dict]]:
    """(element, boundary) -> candidate id -> the candidate's fields. The id names the search (its seed, anneal
    and [n] settings, potential and tolerance), the cell (atoms of the perfect bicrystal) and the ``build_index``:
    the shards of one search join, the same candidate read twice counts once, and different searches add up."""
    out: dict[tuple[str, str], dict[tuple, dict]] = {}
    for path in paths:
        with AtomsH5(path) as f:
            attrs = f.attrs
            if attrs.get("meta_builder") != "grain-boundary-search":
                raise SystemExit(f"{path}: not a grain-boundary-search file")
            element = str(attrs["meta_element"])
            boundaries = [str(b) for b in attrs["meta_boundaries"]]
            settings = ("seed", "anneal", "fractions", "potential", "fmax")
            search = "|".join(str(np.asarray(attrs[f"meta_{k}"]).tolist()) for k in settings)
            values = {name: f.structure_property(name) for name in (*FIELDS, "boundary_index", "build_index")}
            cells = f.structure_property("n_atoms_perfect")
        for i, index in enumerate(values["build_index"]):
            key = (element, boundaries[int(values["boundary_index"][i])])
            fields = {name: values[name][i] for name in FIELDS}
            out.setdefault(key, {})[(search, int(cells[i]), int(index))] = fields
    return out


def envelope(candidates: dict[tuple, dict], grip: dict[float, float]) -> list[dict]:
    """Per [n] (increasing): the lowest E_gb, its candidate, and how many candidates lie near it."""
    rows = []
    by_n: dict[float, list[tuple[tuple, dict]]] = {}
    for index, c in candidates.items():
        by_n.setdefault(round(float(c["n_fraction"]), 6), []).append((index, c))
    for n, group in sorted(by_n.items()):
        energies = np.array([c["gb_energy"] for _, c in group])
        index, best = group[int(np.argmin(energies))]
        row = {
            "n": n,
            "candidates": len(group),
            "min_gb_energy": float(energies.min()),
            "median_gb_energy": float(np.median(energies)),
            "best_cell_atoms": index[1],
            "best_build_index": index[2],
            "best_translation": [float(v) for v in best["translation"][:2]],
            "best_temperature": float(best["anneal_temperature"]),
            "best_md_steps": int(best["anneal_steps"]),
            **{f"within_{d:g}": int((energies <= energies.min() + d).sum()) for d in NEAR},
        }
        if n in grip:
            row["grip_gb_energy"] = grip[n]
        rows.append(row)
    return rows


def plot(candidates: dict[tuple, dict], rows: list[dict], grip: dict[float, float], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = list(candidates.values())
    n = np.array([c["n_fraction"] for c in values])
    e = np.array([c["gb_energy"] for c in values])
    t = np.array([c["anneal_temperature"] for c in values])
    fig, ax = plt.subplots(figsize=(6.0, 4.2))
    points = ax.scatter(n, e, c=t, s=12, cmap="viridis", alpha=0.7, label="candidates")
    fig.colorbar(points, ax=ax, label="anneal temperature (K)")
    ax.plot([r["n"] for r in rows], [r["min_gb_energy"] for r in rows], "k-o", ms=4, label="lower envelope")
    if grip:
        ax.plot(list(grip), list(grip.values()), "r*", ms=12, label="GRIP (Chen et al. 2024)")
    low = min(min(r["min_gb_energy"] for r in rows), *grip.values()) if grip else min(r["min_gb_energy"] for r in rows)
    ax.set_ylim(low - 0.1, low + max(1.0, 2.5 * (np.median(e) - low)))
    ax.set_xlim(-0.05, 1.0)
    ax.set_xlabel("[n] (boundary atoms per plane, mod 1)")
    ax.set_ylabel("E_gb (J/m²)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+", type=Path, help="grain-boundary-search HDF5 files (shards or searches)")
    parser.add_argument("--out", type=Path, required=True, help="folder for envelope.json, candidates.csv, plots")
    args = parser.parse_args(argv)
    found = read_candidates(args.files)
    args.out.mkdir(parents=True, exist_ok=True)
    summary, lines = (
        {},
        ["element,boundary,cell_atoms,build_index,n,tx,ty,temperature_K,md_steps,gb_energy_J_m2,stress_zz_GPa,s"],
    )
    for (element, boundary), candidates in sorted(found.items()):
        grip = GRIP.get((element, boundary), {})
        rows = envelope(candidates, grip)
        seconds = np.array([c["seconds"] for c in candidates.values()])
        summary[f"{element}_{boundary}"] = {
            "candidates": len(candidates),
            "wall_seconds_per_candidate": float(seconds.mean()),
            "envelope": rows,
        }
        name = f"envelope_{element}_{boundary}.png"
        plot(candidates, rows, grip, f"{element} {boundary}: {len(candidates)} annealed candidates", args.out / name)
        for (_, cell_atoms, index), c in candidates.items():
            lines.append(
                f"{element},{boundary},{cell_atoms},{index},{c['n_fraction']:.4f},{c['translation'][0]:.4f},"
                f"{c['translation'][1]:.4f},{c['anneal_temperature']:g},{int(c['anneal_steps'])},"
                f"{c['gb_energy']:.5f},{c['stress_zz']:.4f},{c['seconds']:.2f}"
            )
        print(f"{element} {boundary}: {len(candidates)} candidates, {seconds.mean():.1f} s each (wall)")
        for r in rows:
            grip_text = f"  GRIP {r['grip_gb_energy']:.3f}" if "grip_gb_energy" in r else ""
            print(f"  [n] = {r['n']:.2f}: {r['candidates']:3d} candidates, min {r['min_gb_energy']:.3f}{grip_text}")
    write_json_atomic(args.out / "envelope.json", summary, indent=1)
    write_text_atomic(args.out / "candidates.csv", "\n".join(lines) + "\n")
    return summary


if __name__ == "__main__":
    main()
