"""Benchmark of the periodic radius graph: time against atom count, per search method side by side.

Methods: ``auto`` (the compiled search on the CPU; sweep / dense / cell list on a GPU), the torch cell list
(sweep), dense, compiled (numba, CPU only) and vesin (the library, ``method="vesin"``: vesin on the CPU,
vesin-torch on a GPU; its CPU threads follow ``--threads``), timed in turn. Random positions at metal number
density (fcc Cu, 0.0847 atoms/Å³) in cubic boxes, cutoff 3 Å: one structure per call at each of ``--sizes``,
then one call on a batch of small cells (``--batch``, what the networks see in training). Prints one JSON
object: per case the best-of-repeats wall time (ms) of each method, the edge count and ``vesin_over_auto``
(above 1: vesin is slower), and the exponent of a least-squares fit time ∝ N^p for the cell list and the
compiled search (≈ 1 expected). ``radius_graph`` also sorts the edges and recomputes differentiable vectors,
in every method.

    python experiments/bench_graph.py [--sizes 100 1000 10000] [--batch 32 32] [--repeats 5] [--threads 1]
        [--device cpu]
"""

from __future__ import annotations

import argparse
import functools
import importlib.metadata
import json
import os
import platform
import time

import numpy as np
import torch

from lightning_gcd import periodic_vesin
from lightning_gcd.periodic import radius_graph

DENSITY = 0.0847  # atoms / Å^3, fcc Cu
CUTOFF = 3.0
DENSE_MAX_N = 1000  # O(N^2 K) memory: beyond this the dense search is not worth timing
METHODS = ("auto", "cell_list", "dense", "compiled", "vesin")


def best_times(fns: dict, repeats: int) -> dict:
    """Best of ``repeats`` calls of each function, the functions called in turn (timeit's rule: the minimum
    is the least disturbed by other processes; alternating exposes every method to the same load)."""
    for fn in fns.values():
        fn()  # warm-up
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeats):
        for name, fn in fns.items():
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            fn()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            best[name] = min(best[name], time.perf_counter() - t0)
    return best


def time_methods(frac: torch.Tensor, cell: torch.Tensor, args: argparse.Namespace) -> dict:
    """Best times (ms) of ``radius_graph`` on (B, N, 3) ``frac`` in (B, 3, 3) ``cell`` with every method that
    applies, ``auto`` included, the edge count and ``vesin_over_auto``."""
    b, n, _ = frac.shape
    mask = torch.ones(b, n, dtype=torch.bool, device=frac.device)
    methods = {}
    for method in METHODS:
        skip = (method == "dense" and b * n > DENSE_MAX_N) or (method == "compiled" and args.device != "cpu")
        if not (skip or (method == "vesin" and not periodic_vesin.available())):
            methods[method] = functools.partial(radius_graph, frac, cell, mask, CUTOFF, method=method)
    best = best_times(methods, args.repeats)
    row = {f"{method}_ms": round(1e3 * best[method], 3) if method in best else None for method in METHODS}
    row["edges"] = radius_graph(frac, cell, mask, CUTOFF, method="cell_list").num_edges
    row["vesin_over_auto"] = round(best["vesin"] / best["auto"], 2) if "vesin" in best else None
    return row


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
    parser.add_argument(
        "--batch", type=int, nargs=2, default=[32, 32], metavar=("CELLS", "ATOMS"), help="the batch of small cells"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(args.seed)
    rows = []
    for n in args.sizes:
        box = (n / DENSITY) ** (1.0 / 3.0)
        frac = torch.rand(1, n, 3, generator=gen).to(args.device)
        cell = (torch.eye(3) * box)[None].to(args.device)
        rows.append({"n_atoms": n, "box_A": round(box, 2), **time_methods(frac, cell, args)})
    # what the networks see in training: one call on a batch of small cells
    n_cells, n = args.batch
    box = (n / DENSITY) ** (1.0 / 3.0)
    frac = torch.rand(n_cells, n, 3, generator=gen).to(args.device)
    cell = (torch.eye(3) * box).repeat(n_cells, 1, 1).to(args.device)
    batch_row = {"n_structures": n_cells, "atoms_each": n, "box_A": round(box, 2), **time_methods(frac, cell, args)}
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
                "timing": f"best of {args.repeats} calls of each method in turn, after one warm-up call",
                "machine": platform.processor() or platform.machine(),
                "load_average": [round(x, 2) for x in os.getloadavg()],
                "vesin": importlib.metadata.version("vesin") if periodic_vesin.available() else None,
                "density_atoms_per_A3": DENSITY,
                "cutoff_A": CUTOFF,
                "results": rows,
                "batch_of_small_cells": batch_row,
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
