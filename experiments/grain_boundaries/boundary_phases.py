"""Which boundary phase a structure is: the per-plane occupancy profile across its boundaries (issue #28, D4).

Grain-boundary phases of a Σ5(100) twist differ in the number of atoms at the boundary ([n]) and in how the
atomic planes next to it are filled. For each method (the annealed search and every generator of ``run.py``
results) and each [n] asked for (default: the [n] where the best-known lower envelope has a local minimum,
the phases), the lowest-E_gb single-phase structure (both boundaries at that [n]) is taken and cut into its
atomic layers normal to z (atoms whose heights follow each other within 0.5 Å); around each boundary the layer
near the boundary plane most unlike a bulk plane is the boundary layer (a reconstructed one holds more or
fewer atoms than a plane and is spread over about an ångström), and the occupancy (atoms / P, P atoms per
full plane) and thickness of it and of the three layers on either side make the profile, averaged over the
cell's two boundaries. A generator "recovers" a phase when its best structure at that [n] is within 0.05 J/m²
of the best-known E_gb there and its profile matches the best-known structure's (L1 distance of the
occupancies, reported).

Usage::

    python experiments/grain_boundaries/boundary_phases.py \\
        --search experiments/grain_boundaries/data/search/w_twist100_0.h5 runs/gb_search/w_twist100_1.h5 \\
        --runs experiments/grain_boundaries/results/w_search_voxel/results.json \\
               experiments/grain_boundaries/results/w_search_particle/results.json \\
        --workdir runs/gb_w --out experiments/grain_boundaries/results/w_generator_vs_search

Writes ``phases.json`` and ``phases.png`` (one panel per [n]: occupancy against layer index, one line per
method, E_gb in the legend) in ``--out``.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms

from datamodules.h5format import AtomsH5
from lightning_gcd.grain_boundaries.layers import atomic_layers
from lightning_gcd.io import write_json_atomic
from lightning_gcd.runner.results import new_figure, read_json, save_figure

LAYERS = 3  # atomic layers on each side of the boundary layer in the profile
NEAR = 0.05  # J/m²: a generator's best within this of the best-known E_gb at the same [n]


@functools.cache
def _comparison_module():
    path = Path(__file__).resolve().parent / "generator_vs_search.py"
    spec = importlib.util.spec_from_file_location("generator_vs_search", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def occupancy_profile(
    atoms: Atoms, boundary_z: Sequence[float], per_plane: int, reach: float = 4.0
) -> tuple[np.ndarray, np.ndarray]:
    """(2 LAYERS + 1,) occupancy (atoms / P) and thickness (Å) of the layers around each boundary, averaged over
    the two: index LAYERS is the boundary layer — of the layers within ``reach`` Å of the boundary plane, the one
    most unlike a bulk plane (thickest plus farthest from P atoms: the reconstructed one) — and +k the k-th layer
    from it towards the grain between the two planes. NaN where no layer lies within ``reach`` of a plane."""
    lz = float(atoms.cell.lengths()[2])
    centres, counts, thickness = atomic_layers(atoms)
    planes = np.sort(np.mod(np.asarray(boundary_z, dtype=np.float64), lz))
    occupancy, spread = np.zeros(2 * LAYERS + 1), np.zeros(2 * LAYERS + 1)
    for i, b in enumerate(planes):
        d = (centres - b + lz / 2) % lz - lz / 2
        near = np.nonzero(np.abs(d) <= reach)[0]
        if near.size == 0:  # atoms missing around the boundary (a failed generation): no fingerprint
            return np.full(2 * LAYERS + 1, np.nan), np.full(2 * LAYERS + 1, np.nan)
        towards = 1 if (planes[1 - i] - b) % lz < lz / 2 else -1
        # the boundary layer: the most irregular one (thickness + how far its count is from a full plane); ties
        # (an unreconstructed boundary) go to the nearest layer, then to the side of the grain between the planes
        score = np.round(thickness[near] + np.abs(counts[near] / per_plane - 1.0), 2)
        order = np.lexsort((-towards * d[near], np.round(np.abs(d[near]), 2), -score))
        core = int(near[order[0]])
        for k in range(-LAYERS, LAYERS + 1):
            j = (core + towards * k) % len(centres)
            occupancy[k + LAYERS] += counts[j] / per_plane / 2
            spread[k + LAYERS] += thickness[j] / 2
    return occupancy, spread


def search_best(paths: Sequence[Path], wanted: Sequence[float]) -> dict[float, dict[str, Any]]:
    """The lowest-E_gb search structure at each wanted [n], with its boundary planes."""
    best: dict[float, dict[str, Any]] = {}
    for path in paths:
        with AtomsH5(path) as f:
            n = np.round(f.structure_property("n_fraction"), 4)
            e = f.structure_property("gb_energy")
            for value in wanted:
                sel = np.nonzero((n == value) & np.isfinite(e))[0]
                if sel.size == 0:
                    continue
                i = int(sel[np.argmin(e[sel])])
                if value not in best or e[i] < best[value]["gb_energy"]:
                    best[value] = {
                        "atoms": f.atoms(i),
                        "boundary_z": f.structure_property("boundary_z", i),
                        "gb_energy": float(e[i]),
                        "per_plane": int(f.structure_property("atoms_per_plane", i)),
                        "source": f"{path}:{i}",
                    }
    return best


def generated_best(
    results: dict[str, Any], workdir: Path, kind: str, wanted: Sequence[float], candidates: Sequence[dict[str, Any]]
):
    """The lowest-E_gb relaxed single-phase structure (both boundaries at that [n]) ``kind`` generated at each
    wanted [n], with its template's boundary planes scaled to its relaxed cell; ``candidates``: each record's
    two boundary [n] and E_gb (``generator_vs_search.read_run``'s: NaN where the grains were lost)."""
    from ase.io import read

    from lightning_gcd.grain_boundaries import read_source

    path = workdir / "samples" / f"{kind}.extxyz"
    if not path.is_file():
        return {}
    scored = iter(c for c, r in zip(candidates, results["models"][kind]["samples"], strict=True) if r["n_atoms"])
    best: dict[float, dict[str, Any]] = {}
    for atoms in read(path, index=":"):
        info = atoms.info
        cell = next(scored)
        (a, b), e = cell["pair"], cell["gb_energy"]
        if a == b and a in wanted and np.isfinite(e) and (a not in best or e < best[a]["gb_energy"]):
            best[a] = {"atoms": atoms, "gb_energy": e, "info": info}
    for entry in best.values():
        info = entry.pop("info")
        template = info.get("template", str(info.get("inpaint_source", "")).rpartition(":")[2])
        source = read_source(f"{results['dataset']}:{int(template)}")
        scale = entry["atoms"].cell.lengths()[2] / source.atoms.cell.lengths()[2]
        entry["boundary_z"] = source.boundary_z * scale
        entry["source"] = f"{results['dataset']}:{int(template)} ({kind})"
    return best


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--search", nargs="+", type=Path, required=True, help="search files (the best-known structures)")
    p.add_argument("--runs", nargs="*", type=Path, default=[], help="run.py results.json files")
    p.add_argument("--workdir", type=Path, default=Path("runs/grain_boundaries"), help="run.py --workdir (samples)")
    p.add_argument("--n", nargs="*", type=float, default=None, help="[n] values (default: the envelope's minima)")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)

    gvs = _comparison_module()
    everything = {"search": []}
    for path in args.search:
        everything["search"] += gvs.read_search(path)[0]
    for path in args.runs:
        everything.update(gvs.read_run(path, args.workdir)[0])
    best_energy = {a: e for (a, b), e in gvs.best_known(list(everything.values())).items() if a == b}
    wanted = [round(v, 4) for v in args.n] if args.n else gvs.envelope_minima(best_energy)
    if not wanted:
        raise SystemExit("no [n] to profile: the best-known envelope has no local minimum; pass --n")
    search = search_best(args.search, wanted)
    if not search:
        raise SystemExit(f"no search structure at [n] = {wanted}")
    per_plane = next(iter(search.values()))["per_plane"]
    methods = {"search": search}
    for path in args.runs:
        results = read_json(path)
        for kind in results["models"]:
            # counted and scored once, by read_run above
            methods[kind] = generated_best(results, args.workdir, kind, wanted, everything[kind])

    out: dict[str, Any] = {"atoms_per_plane": per_plane, "layers": LAYERS, "phases": {}}
    for n in wanted:
        ref = methods["search"].get(n)
        reference_profile = occupancy_profile(ref["atoms"], ref["boundary_z"], per_plane)[0] if ref else None
        row = {"best_known_gb_energy": best_energy.get(n, float("nan")), "methods": {}}
        for name, found in methods.items():
            entry = found.get(n)
            if entry is None:
                continue
            profile, thickness = occupancy_profile(entry["atoms"], entry["boundary_z"], per_plane)
            gap = entry["gb_energy"] - row["best_known_gb_energy"]
            row["methods"][name] = {
                "gb_energy": entry["gb_energy"],
                "above_best_known": gap,
                "profile": profile.tolist(),
                "layer_thickness": thickness.tolist(),
                "profile_l1_to_search_best": float(np.abs(profile - reference_profile).sum())
                if reference_profile is not None
                else float("nan"),
                "recovered": bool(gap <= NEAR),
                "structure": entry["source"],
            }
        out["phases"][f"{n:g}"] = row
    args.out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out / "phases.json", out, indent=2)
    plot(out, args.out / "phases.png")
    for n, row in out["phases"].items():
        print(
            f"[n] = {n}: best known {row['best_known_gb_energy']:.3f} J/m²; "
            + "; ".join(
                f"{k} {m['gb_energy']:.3f} (profile L1 {m['profile_l1_to_search_best']:.2f})"
                for k, m in row["methods"].items()
            )
        )
    return out


def plot(out: dict[str, Any], path: Path) -> None:
    phases = out["phases"]
    fig = new_figure((3.4 * len(phases), 3.4))
    ks = list(range(-LAYERS, LAYERS + 1))
    for i, (n, row) in enumerate(phases.items()):
        ax = fig.add_subplot(1, len(phases), i + 1)
        for name, m in row["methods"].items():
            ax.plot(ks, m["profile"], marker="o", lw=1, label=f"{name} {m['gb_energy']:.3f}")
        ax.axvline(0, color="0.7", lw=0.8)
        ax.axhline(1, color="0.85", lw=0.8)
        ax.set_xlabel("layer from the boundary layer")
        ax.set_title(f"[n] = {n}")
        if i == 0:
            ax.set_ylabel("occupancy (atoms / full plane)")
        ax.legend(fontsize=6, title="E_gb J/m²", title_fontsize=6)
    save_figure(fig, path, dpi=120)


if __name__ == "__main__":
    main()
