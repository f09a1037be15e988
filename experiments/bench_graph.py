"""Benchmark of the periodic radius graph: time against atom count, cell list vs dense vs compiled (numba, CPU).

Random positions at metal number density (fcc Cu, 0.0847 atoms/Å³) in a cubic box, cutoff 3 Å,
one structure per call. Prints one JSON object: per N the best-of-repeats wall time (ms) of each method and the
edge count, and the exponent of a least-squares fit time ∝ N^p for the cell list and the compiled search (≈ 1
expected). ``radius_graph`` also sorts the edges and recomputes differentiable vectors, in every method.

    python experiments/bench_graph.py [--sizes 100 1000 10000] [--repeats 5] [--threads 1] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
import torch

from lightning_gcd.periodic import radius_graph

DENSITY = 0.0847  # atoms / Å^3, fcc Cu
CUTOFF = 3.0
DENSE_MAX_N = 1000  # O(N^2 K) memory: beyond this the dense search is not worth timing


def best_time(fn, repeats: int) -> float:
    """Best of ``repeats`` (timeit's rule: the minimum is the least disturbed by other processes)."""
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return float(np.min(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[100, 200, 500, 1000, 2000, 5000, 10000])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch.set_num_threads; 1 by default: on a shared 2-core machine intra-op threads "
        "of small kernels wait on each other and the timings become noise (0: torch's default)",
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(args.seed)
    rows = []
    for n in args.sizes:
        box = (n / DENSITY) ** (1.0 / 3.0)
        frac = torch.rand(1, n, 3, generator=gen).to(args.device)
        cell = (torch.eye(3) * box)[None].to(args.device)
        mask = torch.ones(1, n, dtype=torch.bool, device=args.device)
        row = {"n_atoms": n, "box_A": round(box, 2)}
        for method in ("cell_list", "dense", "compiled"):
            if (method == "dense" and n > DENSE_MAX_N) or (method == "compiled" and args.device != "cpu"):
                row[f"{method}_ms"] = None
                continue
            t = best_time(
                lambda frac=frac, cell=cell, mask=mask, method=method: radius_graph(
                    frac, cell, mask, CUTOFF, method=method
                ),
                args.repeats,
            )
            row[f"{method}_ms"] = round(1e3 * t, 3)
        row["edges"] = radius_graph(frac, cell, mask, CUTOFF, method="cell_list").num_edges
        rows.append(row)
    ns = np.array([r["n_atoms"] for r in rows], dtype=float)
    ts = np.array([r["cell_list_ms"] for r in rows], dtype=float)
    exponent = float(np.polyfit(np.log(ns), np.log(ts), 1)[0])
    big = ns >= 1000  # fixed per-call overheads dominate small N
    exponent_large = float(np.polyfit(np.log(ns[big]), np.log(ts[big]), 1)[0]) if big.sum() >= 2 else None
    compiled = [(r["n_atoms"], r["compiled_ms"]) for r in rows if r.get("compiled_ms") and r["n_atoms"] >= 1000]
    compiled_exp = (
        float(np.polyfit(np.log([c[0] for c in compiled]), np.log([c[1] for c in compiled]), 1)[0])
        if len(compiled) >= 2
        else None
    )
    dense = [(r["n_atoms"], r["dense_ms"]) for r in rows if r.get("dense_ms")]
    dense_exp = (
        float(np.polyfit(np.log([d[0] for d in dense]), np.log([d[1] for d in dense]), 1)[0])
        if len(dense) >= 2
        else None
    )
    print(
        json.dumps(
            {
                "benchmark": "radius_graph",
                "device": args.device,
                "torch": torch.__version__,
                "threads": torch.get_num_threads(),
                "timing": f"best of {args.repeats} after one warm-up call",
                "machine": platform.processor() or platform.machine(),
                "density_atoms_per_A3": DENSITY,
                "cutoff_A": CUTOFF,
                "results": rows,
                "cell_list_time_exponent": round(exponent, 3),
                "cell_list_time_exponent_n_ge_1000": None if exponent_large is None else round(exponent_large, 3),
                "dense_time_exponent": None if dense_exp is None else round(dense_exp, 3),
                "compiled_time_exponent_n_ge_1000": None if compiled_exp is None else round(compiled_exp, 3),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
