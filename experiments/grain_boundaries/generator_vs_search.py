"""The generator against random search (issue #28, deliverable 3): which finds low-energy boundaries more often.

Methods, each a list of relaxed candidates with an E_gb (J/m²), a boundary atom fraction [n] and the wall time
it cost:

* ``search``: the annealed random search (``gcd data build grain-boundary-search`` files; pass shards that
  the models did NOT train on, so the search arm is a fresh draw); its cost is each candidate's ``seconds``
  (build, anneal, minimisation);
* ``voxel``, ``particle``: in-painting + the dataset's relaxation (``run.py`` results); cost: the candidate's
  share of its template batch's sampling plus its own relaxation;
* ``voxel_anneal``, ``particle_anneal``: the same generated structures given the search's anneal before the
  relaxation (``run.py --anneal-samples``); cost: sampling + anneal + relaxation.

A generated cell whose relaxation destroyed one of its template's grains (``lightning_gcd.grain_boundaries.grains``:
the grain cores' atoms more than 0.3 Å RMS from the template's sites after a rigid slide) holds no boundary:
it has no [n] and no E_gb and counts as a try that found nothing (column "grains lost").

A periodic cell holds two boundaries, and a generated one need not give both the same number of atoms
(``lightning_gcd.grain_boundaries.layers.boundary_excess`` counts each from the structure and its template):
a cell is **single-phase** when both boundaries have the same [n] (every search candidate), **mixed**
otherwise, and its E_gb is then the mean of two boundaries in different states. The best-known E_gb of a
single-phase [n] is the lowest single-phase cell there of everything read (all methods and ``--reference``
files, e.g. the search shards the models trained on); of a mixed pair ([n]₁, [n]₂) it is the mean of the two
single-phase values (what the two boundaries reach on their own), or a lower mixed cell of that pair. For each
method: the fraction of candidates within 0.01 and 0.05 J/m² of the best-known E_gb of their own [n] or pair,
with 95 % Wilson intervals, overall, per single-phase [n] and for its mixed cells, and the lowest
single-phase E_gb per [n] (the method's lower envelope; its minima are the boundary phases it shows) — (a)
at an equal number of relaxations (every method subsampled at random to the smallest method's count, or
``--relaxations``), (b) at equal wall time (each method's candidates in a random order, as many as fit in the
smallest method's total time, or ``--seconds``). The models' training
time and the search time behind their training set are reported beside (b), not inside it.

[n] of a boundary with n atoms more than the perfect bicrystal there: (n mod P) / P, P atoms per plane.

Usage::

    python experiments/grain_boundaries/generator_vs_search.py \\
        --search runs/gb_search/w_twist100_1.h5 --reference experiments/grain_boundaries/data/search/w_twist100_0.h5 \\
        --runs experiments/grain_boundaries/results/w_search_voxel/results.json \\
               experiments/grain_boundaries/results/w_search_particle/results.json \\
        --out experiments/grain_boundaries/results/w_generator_vs_search

Writes ``comparison.json``, ``comparison.md`` and ``envelope.png`` (E_gb against [n]: every method's lower
envelope, the best-known values and GRIP's published ones) in ``--out``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from datamodules.h5format import AtomsH5
from lightning_gcd.grain_boundaries.grains import grains_kept
from lightning_gcd.io import write_json_atomic, write_text_atomic
from lightning_gcd.runner.results import new_figure, read_json, save_figure
from lightning_gcd.studies.statistics import wilson_interval

NEAR = (0.01, 0.05)  # J/m² above the best-known E_gb at the same [n]
GRIP = {("W", "twist100"): {0.2: 2.297, 0.4: 2.469}}  # J/m², GRIP's published W Σ5(001) twist minima
ORDER = ("search", "voxel", "voxel_anneal", "particle", "particle_anneal", "particle_torus", "particle_torus_anneal")
LABELS = {
    "search": "annealed random search",
    "voxel": "voxel in-painting",
    "voxel_anneal": "voxel in-painting + anneal",
    "particle": "particle in-painting",
    "particle_anneal": "particle in-painting + anneal",
    "particle_torus": "torus particle in-painting",
    "particle_torus_anneal": "torus particle in-painting + anneal",
}


def plane_fraction(n_boundary: int, per_plane: int) -> float:
    """[n] of a boundary with ``n_boundary`` atoms more than the perfect bicrystal, P atoms per plane."""
    return round((n_boundary % per_plane) / per_plane, 4)


def candidate(pair: Sequence[float], gb_energy: float, seconds: float) -> dict[str, Any]:
    """A candidate: its boundaries' [n] (sorted), ``n`` (their [n] when equal, else NaN: mixed), E_gb, cost."""
    a, b = sorted(float(v) for v in pair)
    return {"pair": (a, b), "n": a if a == b else float("nan"), "gb_energy": float(gb_energy), "seconds": seconds}


def read_search(path: Path) -> tuple[list[dict[str, float]], dict[str, Any]]:
    """A search file's candidates (``n_fraction``, ``gb_energy``, ``seconds``) and its system."""
    with AtomsH5(path) as f:
        attrs = f.attrs
        if attrs.get("meta_builder") != "grain-boundary-search":
            raise SystemExit(f"{path}: not a grain-boundary-search file")
        fields = {k: f.structure_property(k) for k in ("n_fraction", "gb_energy", "seconds")}
        failed = int(attrs.get("meta_failed", 0))
    system = {"element": str(attrs["meta_element"]), "boundary": str(np.asarray(attrs["meta_boundaries"]).ravel()[0])}
    candidates = [
        candidate((round(float(n), 4),) * 2, e, float(s))
        for n, e, s in zip(fields["n_fraction"], fields["gb_energy"], fields["seconds"], strict=True)
    ]
    # a failed candidate (LAMMPS lost atoms) cost a try and found nothing; its [n] and time are not stored
    candidates += [candidate((float("nan"),) * 2, float("nan"), 0.0) for _ in range(failed)]
    return candidates, system


def boundary_cells(results: dict[str, Any], workdir: Path, kind: str) -> list[tuple[tuple[float, float], float]]:
    """Each of ``kind``'s candidates' two boundary [n] and grain core shift (Å, ``grain_boundaries.grains``: the
    record's own, measured from ``run.py``'s ``samples/<kind>.extxyz`` in ``workdir`` for records written before
    the check), in the order of its records; NaN for an empty structure."""
    from ase.io import read

    from lightning_gcd.grain_boundaries import read_source
    from lightning_gcd.grain_boundaries.grains import grain_core_shift
    from lightning_gcd.grain_boundaries.layers import boundary_excess

    path = workdir / "samples" / f"{kind}.extxyz"
    if not path.is_file():
        raise SystemExit(f"{path}: the structures of {kind} are needed to count atoms per boundary (--workdir)")
    structures = iter(read(path, index=":"))
    sources: dict[int, Any] = {}
    per_plane = _atoms_per_plane(results["dataset"])
    cells = []
    for r in results["models"][kind]["samples"]:
        if r["n_atoms"] == 0:
            cells.append(((float("nan"), float("nan")), float("nan")))
            continue
        atoms = next(structures)
        index = int(r["template"])
        if index not in sources:
            sources[index] = read_source(f"{results['dataset']}:{index}")
        source = sources[index]
        half = int(source.properties["n_boundary_atoms"]) // 2  # search templates: the same count at both
        excess = boundary_excess(atoms, source.atoms, source.boundary_z, (half, half))
        if "grain_core_shift" in r:  # run.py measured it at relaxation (null: unmeasured)
            shift = float("nan") if r["grain_core_shift"] is None else float(r["grain_core_shift"])
        else:  # a results file from before the grain check
            shift = grain_core_shift(atoms, source)
        cells.append((tuple(plane_fraction(e, per_plane) for e in excess), shift))
    return cells


def _atoms_per_plane(dataset: str) -> int:
    with AtomsH5(dataset) as f:
        return int(f.structure_property("atoms_per_plane")[0])


def read_run(path: Path, workdir: Path) -> tuple[dict[str, list[dict[str, Any]]], dict[str, Any], dict[str, float]]:
    """A run.py results file (its structures in ``workdir``): candidates per model, the system, and each model's
    training seconds."""
    results = read_json(path)
    ref = results["reference"]
    system = {"element": ref["element"], "boundary": ref.get("boundary", results["settings"]["system"]["boundary"])}
    methods, training = {}, {}
    for kind, m in results["models"].items():
        methods[kind] = []
        for r, (pair, shift) in zip(m["samples"], boundary_cells(results, workdir, kind), strict=True):
            lost = not grains_kept(shift)  # no boundary left to count or score: a try that found nothing
            energy = float("nan") if r["gb_energy"] is None or lost else float(r["gb_energy"])
            pair = (float("nan"),) * 2 if lost else pair
            seconds = float(r["sample_seconds"]) + float(r["relax_seconds"])
            methods[kind].append({**candidate(pair, energy, seconds), "grains_lost": lost, "grain_core_shift": shift})
        training[kind] = float(m["train"]["train_seconds"])
    return methods, system, training


def lowest_per_n(groups: Sequence[Sequence[dict[str, Any]]]) -> dict[float, float]:
    """The lowest finite E_gb of the single-phase cells at each [n] over all candidates of all groups."""
    best: dict[float, float] = {}
    for group in groups:
        for c in group:
            if np.isfinite(c["gb_energy"]) and np.isfinite(c["n"]):
                best[c["n"]] = min(best.get(c["n"], np.inf), c["gb_energy"])
    return best


def best_known(groups: Sequence[Sequence[dict[str, Any]]]) -> dict[tuple[float, float], float]:
    """The best-known E_gb per boundary pair ([n]₁, [n]₂): for a single-phase pair the lowest cell of it; for a
    mixed pair the mean of the two single-phase values where both are known, or a lower mixed cell of that pair
    (module docstring), so a method that alone visits a pair is not scored against itself where the boundaries
    have been seen on their own."""
    single = lowest_per_n(groups)
    best = {(n, n): e for n, e in single.items()}
    for group in groups:
        for c in group:
            a, b = c["pair"]
            if a == b or not np.isfinite(c["gb_energy"]):
                continue
            bound = (single[a] + single[b]) / 2 if a in single and b in single else np.inf
            best[(a, b)] = min(best.get((a, b), bound), bound, c["gb_energy"])
    return best


def _hit(c: dict[str, Any], best: dict[tuple[float, float], float], margin: float) -> bool:
    return bool(np.isfinite(c["gb_energy"]) and c["gb_energy"] <= best.get(c["pair"], -np.inf) + margin)


def rates(candidates: Sequence[dict[str, Any]], best: dict[tuple[float, float], float]) -> dict[str, Any]:
    """Hits within each of ``NEAR`` of the best-known E_gb of the candidate's boundary pair: overall, per
    single-phase [n] and over the mixed cells, with 95 % Wilson intervals, and the lowest E_gb of each."""

    def block(group: Sequence[dict[str, float]]) -> dict[str, Any]:
        out: dict[str, Any] = {"candidates": len(group)}
        for d in NEAR:
            k = sum(_hit(c, best, d) for c in group)
            low, high = wilson_interval(k, len(group))
            out[f"within_{d:g}"] = {
                "hits": k,
                "fraction": k / len(group) if group else float("nan"),
                "ci95": [low, high],
            }
        finite = [c["gb_energy"] for c in group if np.isfinite(c["gb_energy"])]
        out["lowest_gb_energy"] = min(finite) if finite else float("nan")
        return out

    per_n = {}
    for n in sorted({c["n"] for c in candidates if np.isfinite(c["n"])}):
        per_n[f"{n:g}"] = {**block([c for c in candidates if c["n"] == n]), "best_known": best.get((n, n), np.nan)}
    mixed = [c for c in candidates if not np.isfinite(c["n"]) and np.isfinite(c["pair"][0])]
    return {
        **block(candidates),
        "mixed": block(mixed),
        "failed": sum(not np.isfinite(c["gb_energy"]) for c in candidates),
        "grains_lost": sum(bool(c.get("grains_lost")) for c in candidates),
        "grain_core_shift_range": _shift_range(candidates),
        "seconds": float(sum(c["seconds"] for c in candidates)),
        "per_n": per_n,
    }


def _shift_range(candidates: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Smallest and largest grain core shift (Å) of the candidates whose grains were kept and of those lost."""
    out = {}
    for name, lost in (("kept", False), ("lost", True)):
        shifts = [c["grain_core_shift"] for c in candidates if c.get("grains_lost") is lost]
        shifts = [v for v in shifts if np.isfinite(v)]
        out[name] = [min(shifts), max(shifts)] if shifts else None
    return out


def envelope_minima(lowest: dict[float, float]) -> list[float]:
    """The [n] values where a lower envelope (``[n] -> lowest E_gb``) is below both neighbours, [n] periodic
    mod 1: the boundary phases it shows (GRIP's W twist: [n] = 0.2 and 0.4). Needs at least three [n]."""
    ns = sorted(n for n, e in lowest.items() if np.isfinite(e))
    if len(ns) < 3:
        return []
    e = [lowest[n] for n in ns]
    return [ns[i] for i in range(len(ns)) if e[i] < e[i - 1] and e[i] < e[(i + 1) % len(ns)]]


def subsample(candidates: Sequence[dict[str, float]], count: int, rng: np.random.Generator) -> list[dict[str, float]]:
    """``count`` candidates drawn at random without replacement (all of them, in a random order, if fewer)."""
    order = rng.permutation(len(candidates))[:count]
    return [candidates[int(i)] for i in order]


def within_time(candidates: Sequence[dict[str, float]], seconds: float, rng: np.random.Generator) -> list[dict]:
    """The candidates, in a random order, that fit in ``seconds`` of wall time (a prefix of cumulative cost)."""
    shuffled = subsample(candidates, len(candidates), rng)
    spent = np.cumsum([c["seconds"] for c in shuffled])
    return shuffled[: int(np.searchsorted(spent, seconds, side="right"))]


def compare(
    methods: dict[str, list[dict[str, float]]],
    reference: Sequence[Sequence[dict[str, float]]] = (),
    relaxations: int | None = None,
    seconds: float | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """The whole comparison (module docstring) of ``methods`` (name -> candidates)."""
    best = best_known([*methods.values(), *reference])
    single = {a: e for (a, b), e in best.items() if a == b}
    relaxations = relaxations or min(len(c) for c in methods.values())
    seconds = seconds or min(sum(c["seconds"] for c in group) for group in methods.values())
    equal_relaxations, equal_time = {}, {}
    for i, (name, group) in enumerate(methods.items()):
        equal_relaxations[name] = rates(subsample(group, relaxations, np.random.default_rng([seed, i, 0])), best)
        equal_time[name] = rates(within_time(group, seconds, np.random.default_rng([seed, i, 1])), best)

    minima = {name: [f"{n:g}" for n in envelope_minima(lowest_per_n([g]))] for name, g in methods.items()}
    return {
        "best_known": {f"{n:g}": e for n, e in sorted(single.items())},
        "best_known_mixed": {f"{a:g}|{b:g}": e for (a, b), e in sorted(best.items()) if a != b},
        "best_known_minima": [f"{n:g}" for n in envelope_minima(single)],
        "envelope_minima": minima,
        "relaxations": int(relaxations),
        "seconds": float(seconds),
        "all_candidates": {name: rates(group, best) for name, group in methods.items()},
        "equal_relaxations": equal_relaxations,
        "equal_wall_time": equal_time,
    }


# ----------------------------------------------------------------------------------------------------
def _fraction(block: dict[str, Any], d: float) -> str:
    w = block[f"within_{d:g}"]
    if not block["candidates"]:
        return "—"
    low, high = w["ci95"]
    return f"{w['hits']}/{block['candidates']} = {w['fraction']:.1%} [{low:.1%}, {high:.1%}]"


def _energy(value: float) -> str:
    return f"{value:.3f}" if np.isfinite(value) else "—"


def markdown(result: dict[str, Any]) -> str:
    system = result["system"]
    lines = [
        f"# Generator vs annealed random search: {system['element']} {system['boundary']}",
        "",
        "Hits: candidates within 0.01 / 0.05 J/m² of the best-known E_gb at their own [n] (fraction, 95 % Wilson "
        "interval). Best known: the lowest single-phase E_gb of every candidate read, reference files included; "
        "a mixed cell (its two boundaries at different [n]) is scored against the mean of its boundaries' "
        "single-phase values. Grains lost: candidates whose relaxation destroyed a template grain (core shift "
        "above 0.3 Å, `lightning_gcd.grain_boundaries.grains`): no boundary is left, so they count as tries that "
        "found nothing.",
        "",
    ]
    for key, title in (
        ("equal_relaxations", f"Equal relaxations: {result['relaxations']} candidates per method (random subsample)"),
        ("equal_wall_time", f"Equal wall time: {result['seconds']:.0f} s per method (sampling + relaxation)"),
    ):
        lines += [
            f"## {title}",
            "",
            "| method | candidates | within 0.01 | within 0.05 | lowest E_gb (J/m²) | wall time (s) | mixed cells "
            "(within 0.05) | grains lost |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for name, block in result[key].items():
            mixed = block["mixed"]
            lines.append(
                f"| {LABELS.get(name, name)} | {block['candidates']} | {_fraction(block, 0.01)} | "
                f"{_fraction(block, 0.05)} | {_energy(block['lowest_gb_energy'])} | {block['seconds']:.0f} | "
                f"{mixed['candidates']} ({mixed['within_0.05']['hits']}) | {block.get('grains_lost', 0)} |"
            )
        lines.append("")
    names = list(result["all_candidates"])
    lines += [
        "## Lower envelope: lowest E_gb (J/m²) per [n], all candidates (hits within 0.05 / candidates)",
        "",
        "| [n] | best known | " + " | ".join(LABELS.get(n, n) for n in names) + " | GRIP |",
        "|---|---|" + "---|" * len(names) + "---|",
    ]
    grip = GRIP.get((system["element"], system["boundary"]), {})
    for n, best in result["best_known"].items():
        cells = []
        for name in names:
            b = result["all_candidates"][name]["per_n"].get(n)
            cells.append(f"{b['lowest_gb_energy']:.3f} ({b['within_0.05']['hits']}/{b['candidates']})" if b else "—")
        g = grip.get(float(n))
        lines.append(f"| {n} | {best:.3f} | " + " | ".join(cells) + (f" | {g:.3f} |" if g else " | — |"))
    lines += [
        "",
        "Boundary phases — [n] where an envelope is below both neighbours: best known "
        + (", ".join(result["best_known_minima"]) or "none")
        + "; "
        + "; ".join(f"{LABELS.get(k, k)}: {', '.join(v) or 'none'}" for k, v in result["envelope_minima"].items())
        + ".",
    ]
    training = result.get("training_seconds", {})
    if training:
        lines += [
            "",
            "Training (not inside the wall-time budget): "
            + "; ".join(f"{LABELS.get(k, k)} {v:.0f} s" for k, v in training.items())
            + f"; the search behind the training set: {result.get('training_search_seconds', float('nan')):.0f} s.",
        ]
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], path: Path) -> None:
    fig = new_figure((6.4, 4.2))
    ax = fig.add_subplot()
    best = result["best_known"]
    xs = [float(n) for n in best]
    ax.plot(xs, list(best.values()), color="0.2", lw=2.5, alpha=0.35, label="best known")
    markers = dict(zip(ORDER, "os^DvPX", strict=True))
    for name, block in result["all_candidates"].items():
        per_n = block["per_n"]  # an [n] the method never reached breaks its line (NaN), not bridged
        single = sum(per_n[n]["candidates"] for n in per_n)
        ax.plot(
            xs,
            [per_n[n]["lowest_gb_energy"] if n in per_n else np.nan for n in best],
            marker=markers.get(name, "."),
            lw=1,
            label=f"{LABELS.get(name, name)} ({block['candidates']}, {single} single-phase)",
        )
    grip = GRIP.get((result["system"]["element"], result["system"]["boundary"]), {})
    if grip:
        ax.scatter(list(grip), list(grip.values()), marker="*", s=120, color="k", zorder=5, label="GRIP (published)")
    ax.set_xlabel("[n] (boundary atoms per plane, mod 1)")
    ax.set_ylabel("lowest E_gb (J/m²)")
    ax.set_title(f"{result['system']['element']} {result['system']['boundary']}: lower envelope per method")
    ax.legend(fontsize=7)
    save_figure(fig, path, dpi=120)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--search", nargs="+", type=Path, required=True, help="search files: the random-search arm")
    p.add_argument("--runs", nargs="+", type=Path, required=True, help="run.py results.json files (the generators)")
    p.add_argument("--reference", nargs="*", type=Path, default=[], help="more search files: best-known values only")
    p.add_argument(
        "--workdir", type=Path, default=Path("runs/grain_boundaries"), help="run.py --workdir (the structures)"
    )
    p.add_argument("--relaxations", type=int, default=None, help="candidates per method (default: the fewest)")
    p.add_argument("--seconds", type=float, default=None, help="wall time per method (default: the least)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)

    methods: dict[str, list[dict[str, float]]] = {"search": []}
    systems, training = [], {}
    for path in args.search:
        candidates, system = read_search(path)
        methods["search"] += candidates
        systems.append(system)
    for path in args.runs:
        found, system, seconds = read_run(path, args.workdir)
        for name, candidates in found.items():
            if name in methods:
                raise SystemExit(f"{path}: model {name} given twice")
            methods[name] = candidates
        training.update({k: v for k, v in seconds.items() if not k.endswith("_anneal")})
        systems.append(system)
    reference, training_search = [], 0.0
    for path in args.reference:
        candidates, system = read_search(path)
        reference.append(candidates)
        training_search += sum(c["seconds"] for c in candidates)
        systems.append(system)
    if any(s != systems[0] for s in systems):
        raise SystemExit(f"the files describe different systems: {systems}")
    methods = {name: methods[name] for name in sorted(methods, key=lambda n: (ORDER + (n,)).index(n))}
    result = {
        "system": systems[0],
        "inputs": {"search": [str(p) for p in args.search], "runs": [str(p) for p in args.runs]},
        "reference_files": [str(p) for p in args.reference],
        **compare(methods, reference, args.relaxations, args.seconds, args.seed),
        "training_seconds": training,
        "training_search_seconds": training_search,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out / "comparison.json", result, indent=2)
    write_text_atomic(args.out / "comparison.md", markdown(result))
    plot(result, args.out / "envelope.png")
    print(markdown(result))
    return result


if __name__ == "__main__":
    main()
