"""Benchmark of the torus particle network's all-pairs rounds in blocks of structures against the whole batch.

On a CPU, ``lightning_gcd.nets.fourier_pairs.FourierPairNet`` runs its no-grad all-pairs rounds on blocks of
structures whose pair tensors hold about ``PAIR_BLOCK_ELEMENTS`` numbers, so that they stay near the cache size
(the same function), and the torus model trains a larger batch in chunks of the same size, each chunk's
forward and backward pass in turn (``lightning_gcd.models.chunked_loss``; the same loss and gradients). This
times, both ways and in turn, one no-grad forward pass (what a sampler evaluates) and one forward + backward pass
(a training step's network part) on rattled fcc Cu cells, with the crystal study's torus recipe (hidden 128, 4
layers, 32 frequencies), and checks that the outputs (sampling) and the gradients (training) agree. Prints one
JSON object: per case the best-of-repeats time (ms) of each way, the speed-up and the largest difference.

    python experiments/bench_pair_blocks.py [--sizes 16 32 64] [--batch 64] [--train-batch 32] [--repeats 3]
        [--threads 1] [--block-elements 1048576]
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

from lightning_gcd.models.chunked_loss import loss_in_chunks
from lightning_gcd.nets import fourier_pairs
from lightning_gcd.nets.fourier_pairs import FourierPairNet, block_rows, pair_block_size
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


def training_step(net: FourierPairNet, frac, numbers, mask, cell, t) -> torch.Tensor:
    """One forward and backward pass of a squared-output loss (the cost of a training step's network part), in
    chunks of ``pair_block_size`` structures as the torus model trains; returns the parameters' gradients,
    flattened."""
    b, n = frac.shape[:2]
    chunk = pair_block_size(b, n, net.hidden, on_cpu=True)

    def loss(rows: slice) -> torch.Tensor:
        return net(frac[rows], numbers[rows], mask[rows], cell[rows], t[rows]).square().mean()

    chunks = ((functools.partial(loss, r), len(t[r]) / b) for r in block_rows(b, chunk))
    net.zero_grad()
    loss_in_chunks(list(net.parameters()), chunks).backward()
    return torch.cat([p.grad.flatten() for p in net.parameters() if p.grad is not None])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[16, 32, 64])
    p.add_argument("--batch", type=int, default=64, help="sampling batch")
    p.add_argument("--train-batch", type=int, default=32, help="training batch (the crystal study's torus recipe)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--block-elements",
        type=int,
        default=fourier_pairs.PAIR_BLOCK_ELEMENTS,
        help="pair-tensor elements per block (sampling) and per chunk (training); one structure when it holds more",
    )
    args = p.parse_args()
    fourier_pairs.PAIR_BLOCK_ELEMENTS = args.block_elements
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    net = FourierPairNet(hidden=128, layers=4, frequencies=32)
    whole_batch = 1 << 62  # a block larger than any batch: the whole batch at once
    ways = {
        "blocks": contextlib.nullcontext,
        "whole": functools.partial(mock.patch.object, fourier_pairs, "PAIR_BLOCK_ELEMENTS", whole_batch),
    }
    cases = []
    for pass_, batch, grad in (("sample", args.batch, False), ("train", args.train_batch, True)):
        for size in args.sizes:
            frac, numbers, mask, cell = fcc_batch(size, batch)
            t = torch.full((batch,), 0.5)
            step = training_step if grad else FourierPairNet.__call__
            forward = functools.partial(step, net, frac, numbers, mask, cell, t)
            best, outputs = best_of_in_turn(ways, forward, args.repeats, grad=grad)
            cases.append(
                {
                    "pass": pass_,  # sample: no-grad forward; train: forward + backward, gradients compared
                    "atoms": int(frac.shape[1]),
                    "batch": batch,
                    "block": pair_block_size(batch, int(frac.shape[1]), net.hidden, on_cpu=True),
                    "ms": {way: round(1e3 * s, 1) for way, s in best.items()},
                    "speedup": round(best["whole"] / best["blocks"], 3),
                    "max_abs_diff": float((outputs["blocks"] - outputs["whole"]).abs().max()),
                }
            )
    info = {"torch": torch.__version__, "threads": args.threads, "machine": platform.processor() or platform.machine()}
    info["block_elements"] = args.block_elements
    print(json.dumps({"benchmark": "pair_blocks", **info, "cases": cases}, indent=1))


if __name__ == "__main__":
    main()
