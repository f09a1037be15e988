"""Benchmark of the Cartesian particle network's edge MLPs: first layer split by input against concatenation.

``lightning_gcd.nets.mpnn.pair_mlp`` applies the first linear layer of each edge MLP (the message layers' and
the read-out's) to the atom features once per atom and gathers the results per edge, instead of running it on
the concatenated ``[h_i, h_j, rbf]`` of every edge. The same weights and function; this times one no-grad
forward pass of ``PeriodicMPNN`` both ways, in turn, on fcc Cu cells with thermal noise (what a sampler
evaluates), and checks that the outputs agree. Network: the crystal and grain-boundary studies' quick particle
recipe (hidden 64, 3 layers, 32 radial functions), cutoff 1.6 × the nearest-neighbour distance. Prints one
JSON object: per case the best-of-repeats time (ms) of each way, the speed-up and the largest difference.

    python experiments/bench_pair_mlp.py [--sizes 32 256 800] [--batch 10] [--repeats 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import platform
from unittest import mock

import numpy as np
import torch
from ase.build import bulk

from lightning_gcd.nets import mpnn
from lightning_gcd.nets.mpnn import PeriodicMPNN
from lightning_gcd.runner.benchmarks import best_of_in_turn, rattled_batch

A_CU = 3.615  # Å, fcc Cu


def concatenated(net, h, src, dst, rbf):
    """The edge MLP on concatenated edge inputs (the form before ``pair_mlp``)."""
    return net(torch.cat([h[src], h[dst], rbf], dim=-1))


def fcc_batch(n_atoms: int, batch: int, seed: int = 0):
    """``batch`` copies of the smallest cubic fcc Cu supercell with at least ``n_atoms`` atoms, 0.1 Å noise."""
    reps = int(np.ceil((n_atoms / 4) ** (1 / 3)))
    return rattled_batch(bulk("Cu", "fcc", a=A_CU, cubic=True).repeat(reps), batch, seed)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[32, 256, 800])
    p.add_argument("--batch", type=int, default=10)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    net = PeriodicMPNN(hidden=64, layers=3, num_rbf=32, cutoff=1.6 * A_CU / np.sqrt(2)).eval()
    cases = []
    for size in args.sizes:
        frac, numbers, mask, cell = fcc_batch(size, args.batch)
        t = torch.full((args.batch,), 0.5)
        ways = {
            "split": contextlib.nullcontext,
            "concatenated": functools.partial(mock.patch.object, mpnn, "pair_mlp", concatenated),
        }
        best, outputs = best_of_in_turn(ways, functools.partial(net, frac, numbers, mask, cell, t), args.repeats)
        cases.append(
            {
                "atoms": int(frac.shape[1]),
                "batch": args.batch,
                "ms": {way: round(1e3 * s, 2) for way, s in best.items()},
                "speedup": round(best["concatenated"] / best["split"], 3),
                "max_abs_diff": float((outputs["split"] - outputs["concatenated"]).abs().max()),
            }
        )
    print(
        json.dumps(
            {
                "benchmark": "pair_mlp",
                "torch": torch.__version__,
                "threads": args.threads,
                "processor": platform.processor(),
                "cases": cases,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
