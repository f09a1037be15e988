"""Benchmark of the torus particle network's all-pairs rounds in blocks of structures against the whole batch.

Without gradients (sampling), ``lightning_gcd.nets.fourier_pairs.FourierPairNet`` runs its all-pairs rounds on
blocks of structures whose pair tensors hold about ``PAIR_BLOCK_ELEMENTS`` numbers, so that they stay near the
cache size; the same function. This times one no-grad forward pass both ways, in turn, on rattled fcc Cu cells
(what a sampler evaluates), with the crystal study's torus recipe (hidden 128, 4 layers, 32 frequencies), and
checks that the outputs agree. Prints one JSON object: per case the best-of-repeats time (ms) of each way, the
speed-up and the largest difference.

    python experiments/bench_pair_blocks.py [--sizes 16 32 64] [--batch 64] [--repeats 3] [--threads 1]
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

from lightning_gcd.nets import fourier_pairs
from lightning_gcd.nets.fourier_pairs import FourierPairNet
from lightning_gcd.runner.benchmarks import best_of_in_turn, rattled_batch

A_CU = 3.615  # Å, fcc Cu


def fcc_batch(n_atoms: int, batch: int, seed: int = 0):
    """``batch`` rattled copies (0.1 Å) of an fcc Cu cell of ``n_atoms`` atoms (4 · 2^k): frac, numbers, mask, cell."""
    reps = [1, 1, 1]
    axis = 0
    while 4 * int(np.prod(reps)) < n_atoms:
        reps[axis] *= 2
        axis = (axis + 1) % 3
    return rattled_batch(bulk("Cu", "fcc", a=A_CU, cubic=True).repeat(reps), batch, seed)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[16, 32, 64])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    net = FourierPairNet(hidden=128, layers=4, frequencies=32).eval()
    whole_batch = 1 << 62  # a block larger than any batch: the whole batch at once
    cases = []
    for size in args.sizes:
        frac, numbers, mask, cell = fcc_batch(size, args.batch)
        t = torch.full((args.batch,), 0.5)
        ways = {
            "blocks": contextlib.nullcontext,
            "whole": functools.partial(mock.patch.object, fourier_pairs, "PAIR_BLOCK_ELEMENTS", whole_batch),
        }
        best, outputs = best_of_in_turn(ways, functools.partial(net, frac, numbers, mask, cell, t), args.repeats)
        cases.append(
            {
                "atoms": int(frac.shape[1]),
                "batch": args.batch,
                "block": max(1, fourier_pairs.PAIR_BLOCK_ELEMENTS // (frac.shape[1] ** 2 * net.hidden)),
                "ms": {way: round(1e3 * s, 1) for way, s in best.items()},
                "speedup": round(best["whole"] / best["blocks"], 3),
                "max_abs_diff": float((outputs["blocks"] - outputs["whole"]).abs().max()),
            }
        )
    info = {"torch": torch.__version__, "threads": args.threads, "machine": platform.processor() or platform.machine()}
    print(json.dumps({"benchmark": "pair_blocks", **info, "cases": cases}, indent=1))


if __name__ == "__main__":
    main()
