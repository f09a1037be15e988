"""The periodic pair search of the vesin library over a padded batch, one structure per call.

vesin (https://github.com/Luthaf/vesin) computes the neighbour list of one periodic system: every image
within the cutoff, in any cell shape, cells narrower than twice the cutoff included (several images of one
pair, an atom with its own images), with ASE's convention ``D = r_j + S @ cell - r_i`` and ``d < cutoff``.
This module only adapts it to ``periodic.neighbor_search`` (``method="vesin"``): padded batches, flat
indices ``b * N + i``, int64 outputs. On CPU tensors it calls ``vesin`` (a C++ library through ctypes), its
threads following ``torch.get_num_threads()``; on CUDA tensors ``vesin-torch`` (the same library as a
TorchScript extension). Neither takes a batch, so structures are searched one after the other. Both come
with the ``vesin`` extra (``pip install lightning_gcd[vesin]``).

A half list from vesin lists each pair once, as (i, j, S) with ``i <= j``; an atom's pair with its own image
appears as one of ``S`` and ``-S`` (vesin's choice, not always the lexicographically positive one that the
torch searches keep).

``auto`` does not choose this search: on the CPU the compiled one is as fast or faster in every case of
``experiments/bench_graph.py`` and ``experiments/bench_metrics.py``, which time both side by side (results in
``experiments/BENCHMARKS.md``); on GPUs the comparison with the torch searches is not measured yet.
"""

from __future__ import annotations

import functools
import importlib.util

import numpy as np
import torch

__all__ = ["available", "vesin_search"]


def available() -> bool:
    """Whether vesin is installed (the ``vesin`` extra)."""
    return importlib.util.find_spec("vesin") is not None


@functools.lru_cache(maxsize=4)
def _calculator(cutoff: float, half: bool, n_threads: int):
    """One vesin calculator per setting, kept: it reuses its output buffers from call to call (a new one per
    call spends its time growing them)."""
    import vesin

    return vesin.NeighborList(cutoff=cutoff, full_list=not half, n_threads=n_threads)


def _search_cpu(
    positions: torch.Tensor, cell: torch.Tensor, mask: torch.Tensor, cutoff: float, half: bool, quantities: str
) -> list[list[np.ndarray]]:
    """Per structure with atoms, vesin's ``quantities`` ("ij" then "S" and/or "d") as numpy arrays, with
    ``i``/``j`` turned into flat int64 indices ``b * N + slot``."""
    calculator = _calculator(float(cutoff), bool(half), torch.get_num_threads())
    pos_np = positions.detach().cpu().double().numpy()  # (B, N, 3) Å
    cell_np = cell.detach().cpu().double().numpy()  # (B, 3, 3) Å
    mask_np = mask.detach().cpu().numpy()  # (B, N)
    n = pos_np.shape[1]
    found = []
    for b in range(pos_np.shape[0]):
        real = None if mask_np[b].all() else np.flatnonzero(mask_np[b])  # None: every slot is an atom
        if real is not None and real.size == 0:
            continue
        points = pos_np[b] if real is None else pos_np[b, real]
        # copy=False: views into the calculator's buffers, valid until its next call; copied right here
        out = calculator.compute(points, cell_np[b], True, quantities, copy=False)
        ij = [k.view(np.int64) for k in out[:2]]  # size_t indices, far below 2^63
        ij = [k + b * n for k in ij] if real is None else [real[k] + b * n for k in ij]
        found.append(ij + [q.astype(np.int64) if q.dtype != np.float64 else q.copy() for q in out[2:]])
    return found


def _search_torch(
    positions: torch.Tensor, cell: torch.Tensor, mask: torch.Tensor, cutoff: float, half: bool, quantities: str
) -> list[list[torch.Tensor]]:
    """As ``_search_cpu`` with vesin-torch, on the tensors' device (used for GPUs; results stay there)."""
    import vesin.torch as vesin_torch  # loads a TorchScript extension: only where a GPU needs it

    calculator = vesin_torch.NeighborList(cutoff=cutoff, full_list=not half)
    positions, cell = positions.detach().double(), cell.detach().double()
    n = positions.shape[1]
    found = []
    for b in range(positions.shape[0]):
        real = mask[b].nonzero().view(-1)
        if real.numel() == 0:
            continue
        out = calculator.compute(positions[b, real], cell[b], True, quantities)
        ij = [real[k.long()] + b * n for k in out[:2]]
        found.append(ij + [q if q.is_floating_point() else q.long() for q in out[2:]])
    return found


def vesin_search(
    wrapped: torch.Tensor,
    cell: torch.Tensor,
    mask: torch.Tensor,
    cutoff: float,
    half: bool,
    shifts: bool = True,
    distances: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Pairs closer than ``cutoff`` (Å) among wrapped fractional coordinates, with vesin.

    Args:
        wrapped: (B, N, 3) fractional coordinates in [0, 1).
        cell: (B, 3, 3) lattice vectors as rows, Å.
        mask: (B, N) bool, real atoms.
        half: each pair once (as (i, j, S) with i <= j).
        shifts, distances: which of the two to return (else None).
    Returns:
        ``(src, dst, shifts, distances)`` on the inputs' device: (E,) int64 flat indices ``b * N + i``,
        (E, 3) int64 image shifts relative to ``wrapped``, (E,) float64 distances in Å (computed in
        float64); grouped by structure.
    """
    if not available():
        raise RuntimeError("method='vesin' needs vesin and vesin-torch: pip install 'lightning_gcd[vesin]'")
    positions = torch.einsum("bni,bij->bnj", wrapped.double(), cell.double())  # (B, N, 3) Å
    quantities = "ij" + ("S" if shifts else "") + ("d" if distances else "")
    device = wrapped.device
    if device.type == "cuda":
        parts, cat = _search_torch(positions, cell, mask, cutoff, half, quantities), torch.cat
    else:
        parts = _search_cpu(positions, cell, mask, cutoff, half, quantities)

        def cat(arrays: list[np.ndarray]) -> torch.Tensor:
            return torch.from_numpy(arrays[0] if len(arrays) == 1 else np.concatenate(arrays))

    if parts:
        columns = {name: cat([p[k] for p in parts]).to(device) for k, name in enumerate(quantities)}
    else:  # no atoms anywhere
        long = dict(dtype=torch.long, device=device)
        columns = {"i": torch.zeros(0, **long), "j": torch.zeros(0, **long), "S": torch.zeros(0, 3, **long)}
        columns["d"] = torch.zeros(0, dtype=torch.float64, device=device)
    return columns["i"], columns["j"], columns.get("S") if shifts else None, columns.get("d") if distances else None
