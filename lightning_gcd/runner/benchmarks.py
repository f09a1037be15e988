"""What the network benchmark scripts under ``experiments/`` share: rattled copies of a crystal as a batch, and
a best-of timing loop that times several ways of one computation in turn (so that a change of load on a noisy
machine hits every way, and their ratio stays fair)."""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager

import numpy as np
import torch
from ase import Atoms


def rattled_batch(
    atoms: Atoms, batch: int, seed: int = 0, noise: float = 0.1
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``batch`` copies of ``atoms`` with Gaussian noise of ``noise`` Å on every coordinate (what a sampler
    evaluates): frac_coords (B, N, 3) in [0, 1), numbers (B, N), mask (B, N), cell (B, 3, 3) Å."""
    rng = np.random.default_rng(seed)
    cell = torch.tensor(np.array(atoms.cell), dtype=torch.float32)
    inv = np.linalg.inv(np.array(atoms.cell))
    frac = [(atoms.positions + rng.normal(0, noise, atoms.positions.shape)) @ inv for _ in range(batch)]
    frac_coords = torch.tensor(np.mod(np.stack(frac), 1.0), dtype=torch.float32)
    numbers = torch.tensor(atoms.numbers).expand(batch, -1).contiguous()
    mask = torch.ones(frac_coords.shape[:2], dtype=torch.bool)
    return frac_coords, numbers, mask, cell.expand(batch, 3, 3).contiguous()


def best_of_in_turn(
    ways: dict[str, Callable[[], AbstractContextManager]],
    forward: Callable[[], torch.Tensor],
    repeats: int,
    grad: bool = False,
) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    """Best-of-``repeats`` seconds of one ``forward()`` (no-grad unless ``grad``: then it may run a backward pass
    too) inside each way's context, the ways timed in turn, and each way's last output: ({way: s}, {way: output})."""
    best = dict.fromkeys(ways, float("inf"))
    outputs = {}
    with torch.set_grad_enabled(grad):
        for _ in range(repeats):
            for way, context in ways.items():
                with context():
                    start = time.perf_counter()
                    outputs[way] = forward()
                    best[way] = min(best[way], time.perf_counter() - start)
    return best, outputs
