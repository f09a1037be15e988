"""A compiled (numba) periodic pair search for CPU tensors: one pass of a binned cell list per structure.

Why a second implementation beside the torch searches in ``periodic.py``: on the CPU a torch search is
~150 small tensor operations per call, whose fixed cost dominates for the cells the metrics see (a few
thousand atoms, or a batch of small cells from validation sampling); one compiled loop has no such
cost (``experiments/bench_metrics.py``; results in ``experiments/BENCHMARKS.md``). The torch searches stay the GPU
path and the reference the tests compare this one with.

Algorithm (any cell shape, cells smaller than the cutoff included): per structure, the fractional cube
is cut into ``nb_k = floor(w_k / cutoff)`` bins per axis (``w_k`` the perpendicular width, Å), capped so
that there are not many more bins than atoms. A point within ``cutoff`` of an atom differs from it by at
most ``cutoff / w_k`` in fractional coordinate ``k``, so the bins ``b_k + o`` with
``|o| <= r_k = ceil(cutoff · nb_k / w_k)`` hold every neighbour: bin ``(b_k + o) mod nb_k`` at image shift
``floor((b_k + o) / nb_k)``. Distinct offsets give distinct (bin, shift) pairs, so in a cell narrower than
the cutoff the same bin is visited at several shifts, each once. A half list keeps (i, j, S) with
``i < j``, or ``i == j`` and ``S`` lexicographically positive.
"""

from __future__ import annotations

import math

import numpy as np
import torch

try:  # an optional accelerator: without numba the torch searches run everywhere
    import numba
except ImportError:  # pragma: no cover - numba is a dependency; this guards unusual platforms
    numba = None

__all__ = ["available", "compiled_search"]


def available() -> bool:
    """Whether the compiled search can run (numba importable)."""
    return numba is not None


def _kernel(frac, cell, widths_all, mask, cutoff, half, src, dst, shifts, dist):  # pragma: no cover - compiled
    """frac (B, N, 3) float64 in [0, 1), cell (B, 3, 3), widths_all (B, 3) perpendicular widths (Å, from
    ``periodic.perpendicular_widths``), mask (B, N) bool; writes the pairs into the
    preallocated (E,) src, dst, dist and (E, 3) shifts while they fit, and returns the number of pairs
    (more than E: call again with larger arrays). The arrays are never rebound inside the loop: growing
    them there made every write cost ~100 ns of reference counting."""
    b_count, n, _ = frac.shape
    cut2 = cutoff * cutoff
    capacity = src.shape[0]
    count = 0
    pos = np.empty((n, 3))
    nb = np.empty(3, np.int64)
    reach = np.empty(3, np.int64)
    bins = np.empty(n, np.int64)
    real = np.empty(n, np.int64)
    for b in range(b_count):
        a = cell[b]
        widths = widths_all[b]
        n_real = 0
        for i in range(n):
            if mask[b, i]:
                real[n_real] = i
                n_real += 1
        if n_real == 0:
            continue
        for k in range(3):
            nb[k] = max(1, int(math.floor(widths[k] / cutoff)))
        total = nb[0] * nb[1] * nb[2]
        if total > 2 * n_real + 8:  # sparse cells: not many more bins than atoms
            factor = ((2.0 * n_real + 8.0) / total) ** (1.0 / 3.0)
            for k in range(3):
                nb[k] = max(1, int(math.floor(nb[k] * factor)))
        for k in range(3):
            reach[k] = int(math.ceil(cutoff * nb[k] / widths[k]))
        # Cartesian positions and bins of the real atoms; counting sort by bin
        n_bins = nb[0] * nb[1] * nb[2]
        start = np.zeros(n_bins + 1, np.int64)
        for r in range(n_real):
            i = real[r]
            for k in range(3):
                pos[i, k] = frac[b, i, 0] * a[0, k] + frac[b, i, 1] * a[1, k] + frac[b, i, 2] * a[2, k]
            bx = min(int(frac[b, i, 0] * nb[0]), nb[0] - 1)
            by = min(int(frac[b, i, 1] * nb[1]), nb[1] - 1)
            bz = min(int(frac[b, i, 2] * nb[2]), nb[2] - 1)
            bins[i] = (bx * nb[1] + by) * nb[2] + bz
            start[bins[i] + 1] += 1
        for t in range(n_bins):
            start[t + 1] += start[t]
        fill = start[:-1].copy()
        order = np.empty(n_real, np.int64)
        for r in range(n_real):
            i = real[r]
            order[fill[bins[i]]] = i
            fill[bins[i]] += 1
        base = b * n
        for r in range(n_real):
            i = real[r]
            t = bins[i]
            bz0 = t % nb[2]
            by0 = (t // nb[2]) % nb[1]
            bx0 = t // (nb[1] * nb[2])
            for ox in range(-reach[0], reach[0] + 1):
                tx = bx0 + ox
                sx = tx // nb[0]
                cx = tx - sx * nb[0]
                for oy in range(-reach[1], reach[1] + 1):
                    ty = by0 + oy
                    sy = ty // nb[1]
                    cy = ty - sy * nb[1]
                    for oz in range(-reach[2], reach[2] + 1):
                        tz = bz0 + oz
                        sz = tz // nb[2]
                        cz = tz - sz * nb[2]
                        positive = sx > 0 or (sx == 0 and (sy > 0 or (sy == 0 and sz > 0)))
                        zero = sx == 0 and sy == 0 and sz == 0
                        # centre: r_i - S @ cell, so that d = r_j - centre
                        c0 = pos[i, 0] - (sx * a[0, 0] + sy * a[1, 0] + sz * a[2, 0])
                        c1 = pos[i, 1] - (sx * a[0, 1] + sy * a[1, 1] + sz * a[2, 1])
                        c2 = pos[i, 2] - (sx * a[0, 2] + sy * a[1, 2] + sz * a[2, 2])
                        target = (cx * nb[1] + cy) * nb[2] + cz
                        for q in range(start[target], start[target + 1]):
                            j = order[q]
                            if j == i:
                                if zero or (half and not positive):
                                    continue
                            elif half and j < i:
                                continue
                            d0 = pos[j, 0] - c0
                            d1 = pos[j, 1] - c1
                            d2 = pos[j, 2] - c2
                            s = d0 * d0 + d1 * d1 + d2 * d2
                            if s < cut2:
                                if count < capacity:
                                    src[count] = base + i
                                    dst[count] = base + j
                                    shifts[count, 0] = sx
                                    shifts[count, 1] = sy
                                    shifts[count, 2] = sz
                                    dist[count] = math.sqrt(s)
                                count += 1
    return count


if numba is not None:
    _kernel = numba.njit(cache=True)(_kernel)


def _expected_pairs(wrapped: np.ndarray, cell: np.ndarray, mask: np.ndarray, cutoff: float, half: bool) -> int:
    """A generous estimate of the pair count (uniform density, 1.5× and a floor), to size the output."""
    n_real = mask.sum(axis=1).astype(np.float64)
    volume = np.abs(np.linalg.det(cell))
    per_atom = 4.0 / 3.0 * math.pi * cutoff**3 * n_real / np.maximum(volume, 1e-12)
    total = float((n_real * per_atom).sum()) * (0.5 if half else 1.0)
    return int(1.5 * total) + 1024


def compiled_search(
    wrapped: torch.Tensor, cell: torch.Tensor, widths: torch.Tensor, mask: torch.Tensor, cutoff: float, half: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pairs closer than ``cutoff`` (Å) among the wrapped CPU coordinates.

    Args:
        wrapped: (B, N, 3) fractional coordinates in [0, 1).
        cell: (B, 3, 3) lattice vectors as rows, Å.
        widths: (B, 3) perpendicular widths of the cells, Å (``periodic.perpendicular_widths``).
        mask: (B, N) bool, real atoms.
        half: each pair once (as (i, j, S) with i < j, or i == j and S lexicographically positive).
    Returns:
        ``(src, dst, shifts, distances)``: (E,) flat indices ``b * N + i``, (E, 3) int64 image shifts
        (relative to ``wrapped``), (E,) float64 distances (Å, computed in float64); grouped by structure.
    """
    if numba is None:
        raise RuntimeError("the compiled pair search needs numba (pip install numba)")
    frac_np = np.ascontiguousarray(wrapped.detach().cpu().numpy(), dtype=np.float64)
    cell_np = np.ascontiguousarray(cell.detach().cpu().numpy(), dtype=np.float64)
    widths_np = np.ascontiguousarray(widths.detach().cpu().numpy(), dtype=np.float64)
    mask_np = np.ascontiguousarray(mask.detach().cpu().numpy(), dtype=np.bool_)
    capacity = _expected_pairs(frac_np, cell_np, mask_np, float(cutoff), bool(half))
    while True:
        src, dst = np.empty(capacity, np.int64), np.empty(capacity, np.int64)
        shifts, dist = np.empty((capacity, 3), np.int64), np.empty(capacity, np.float64)
        count = _kernel(frac_np, cell_np, widths_np, mask_np, float(cutoff), bool(half), src, dst, shifts, dist)
        if count <= capacity:
            break
        capacity = count  # exact now: the second pass fills every pair
    return (
        torch.from_numpy(src[:count]),
        torch.from_numpy(dst[:count]),
        torch.from_numpy(shifts[:count]),
        torch.from_numpy(dist[:count]),
    )
