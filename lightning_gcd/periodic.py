"""Neighbour search under periodic boundary conditions, in torch (CPU and CUDA, any cell shape).

Conventions (see ``structures.py``): cells are 3×3 matrices whose ROWS are the lattice vectors, in Å;
Cartesian positions are ``frac_coords @ cell``. An edge ``(src, dst, shift)`` stands for the vector

    vectors = r_dst + shift @ cell - r_src            (Å)

which is exactly ASE's ``neighbor_list('ijdD', atoms, cutoff, self_interaction=False)`` with
``i = src``, ``j = dst``, ``S = shift`` and ``D = vectors``:

* every periodic image within ``cutoff`` (strictly ``d < cutoff``, as ASE) is found, also in SMALL
  cells whose perpendicular width is below ``2 * cutoff``; then one pair ``(i, j)`` appears several
  times with different shifts, and an atom can be its own neighbour through a non-zero shift;
* the only excluded edge is an atom with itself at zero shift;
* ``shift`` is relative to the coordinates as given (not wrapped), like ASE's ``S``.

The search methods return the same edges in the same order (sorted by ``src``, ``dst``, then shift):

``dense``      all pairs × all needed image shifts, O(N² K) time and memory (K image shifts).
               Fastest for small structures and tiny cells.
``cell_list``  O(N) at fixed density, in one of two ways per structure:

               * the column sweep (``_sweep_half``), whenever the widest perpendicular width exceeds
                 about twice the cutoff: that axis is the sweep axis x, the two others are cut into
                 columns at least ``cutoff`` wide; atoms sorted by (column, x), with the periodic images
                 x ± 1 of the atoms near the x faces appended, put the candidates of each atom in each
                 neighbouring column into ONE contiguous range, whose ends come from a table (no binary
                 search); in cells with orthogonal axes the range is trimmed to the cutoff sphere. It
                 produces a half list (each pair once) directly; the full list is its mirror image.
               * otherwise (small cells, where one atom's images repeat within the cutoff) binning in
                 fractional space into ``nb_k = floor(w_k / cutoff)`` bins per axis (``w_k`` the
                 perpendicular width along axis k); each atom looks at the ±m neighbouring bins (m = 1
                 for ordinary cells, ``m = ceil(cutoff / bin width)`` for cells thinner than the cutoff),
                 the bin index wrapping around the cell and the wrap count giving the image shift.
                 Distinct bin offsets give distinct (bin, shift) pairs, so nothing is counted twice, even
                 with 1 or 2 bins per axis; no supercell is built; bins are capped at the atom count.
``compiled``   CPU only (numba, ``periodic_compiled.py``): one compiled binned-cell-list loop per
               structure, any cell shape; no per-call tensor-operation overhead. CUDA inputs are copied
               to the CPU for it.
``vesin``      the vesin library (``periodic_vesin.py``, the ``vesin`` extra): vesin on CPU tensors,
               vesin-torch on CUDA ones, one structure per call. Not chosen by ``auto``: on the CPU it is
               level with ``compiled`` on one small cell and slower in every other benchmark case
               (batches of small cells most); on GPUs it is not measured yet.
``auto``       on CPU tensors ``compiled`` when numba is importable (faster than the torch searches
               below and than vesin). On GPUs (or without numba): the sorted-column sweep for every
               structure it applies to, and for the others (small cells) ``dense`` when they have at most
               ``DENSE_REST_MAX_ATOMS`` (= 512) atom slots, else the binned cell list: for small cells the
               dense search beats the cell list many times over. The timings behind this choice are in
               ``experiments/BENCHMARKS.md`` (History).

``neighbor_search`` is the search without sorting or autograd, with options for what metrics need:
``half=True`` (each pair once, as (i, j, S) or (j, i, -S): g(r), coordination counts and minimum
distances are symmetric, so half the work) and ``distances=True`` (computed during the search, in the
precision of the inputs). ``radius_graph(..., half=..., sort=False)`` exposes the same choices.

The search itself runs without autograd; the vectors and distances of the edges found are then
recomputed from the inputs, so they carry gradients with respect to ``frac_coords`` / ``positions``
(and the cell). Edges whose length crosses the cutoff change the graph discontinuously, as with any
radius graph; networks should use a smooth cutoff envelope.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from lightning_gcd import periodic_compiled, periodic_vesin

__all__ = [
    "DENSE_REST_MAX_ATOMS",
    "RadiusGraph",
    "minimum_image",
    "perpendicular_widths",
    "radius_graph",
    "neighbor_pairs",
    "neighbor_search",
    "Neighbors",
]

#: ``method="auto"`` uses the dense search for small cells (no sweep) up to this many atom slots.
DENSE_REST_MAX_ATOMS = 512

# Upper bound on the number of (pair, shift) candidates the dense search materialises at once;
# beyond it the loop over image shifts is chunked.
_DENSE_CHUNK_ELEMENTS = 1 << 22


@dataclass
class RadiusGraph:
    """Directed edges of a periodic radius graph over a padded batch.

    Attributes:
        src: (E,) int64 flat atom index into ``B * N`` (``b * N + i``): the edge's origin (ASE's ``i``).
        dst: (E,) int64 flat atom index of the neighbour (ASE's ``j``).
        vectors: (E, 3) Cartesian ``r_dst + shift @ cell - r_src`` in Å (differentiable).
        distances: (E,) Å, the norms of ``vectors`` (differentiable).
        batch: (E,) int64 structure index of each edge.
        shifts: (E, 3) int64 integer image shift, relative to the coordinates as given (ASE's ``S``).
    """

    src: torch.Tensor
    dst: torch.Tensor
    vectors: torch.Tensor
    distances: torch.Tensor
    batch: torch.Tensor
    shifts: torch.Tensor

    @property
    def num_edges(self) -> int:
        return int(self.src.shape[0])


def minimum_image(displacement_frac: torch.Tensor, cell: torch.Tensor) -> torch.Tensor:
    """Cartesian vector of a fractional difference wrapped to [-0.5, 0.5) per axis.

    Args:
        displacement_frac: (..., 3) fractional difference, e.g. ``frac_j - frac_i``.
        cell: (..., 3, 3) rows are lattice vectors (broadcast against ``displacement_frac``).
    Returns:
        (..., 3) Cartesian vector in Å.

    The result is the true shortest periodic image only when it is shorter than half the smallest
    perpendicular width AND the cell is near-orthogonal; for strongly sheared (triclinic) cells the
    component-wise wrap can pick a longer image. Use ``radius_graph``/``neighbor_pairs`` where
    exactness matters. Differentiable (the wrap is a piecewise constant integer shift).
    """
    wrapped = displacement_frac - torch.floor(displacement_frac + 0.5).detach()
    return torch.einsum("...i,...ij->...j", wrapped, cell)


def perpendicular_widths(cell: torch.Tensor) -> torch.Tensor:
    """(..., 3, 3) cell -> (..., 3) distances between opposite faces, ``w_k = V / |a_l × a_m|``."""
    a, b, c = cell[..., 0, :], cell[..., 1, :], cell[..., 2, :]
    normals = torch.stack([torch.linalg.cross(b, c), torch.linalg.cross(c, a), torch.linalg.cross(a, b)], dim=-2)
    volume = (a * normals[..., 0, :]).sum(dim=-1).abs()  # the triple product (a LAPACK det costs ~80 us per call)
    return volume[..., None] / normals.norm(dim=-1)


def _check_inputs(frac_coords: torch.Tensor, cell: torch.Tensor, mask: torch.Tensor, cutoff: float) -> None:
    if frac_coords.dim() != 3 or frac_coords.shape[-1] != 3:
        raise ValueError(f"frac_coords must be (B, N, 3), got {tuple(frac_coords.shape)}")
    b, n = frac_coords.shape[:2]
    if cell.shape != (b, 3, 3):
        raise ValueError(f"cell must be ({b}, 3, 3), got {tuple(cell.shape)}")
    if mask.shape != (b, n):
        raise ValueError(f"mask must be ({b}, {n}), got {tuple(mask.shape)}")
    if not cutoff > 0:
        raise ValueError(f"cutoff must be positive, got {cutoff}")


def _wrap(frac: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """frac -> (wrapped in [0, 1), integer floor such that frac = wrapped + floor)."""
    fl = torch.floor(frac)
    wrapped = frac - fl
    over = wrapped >= 1.0  # rounding of tiny negative numbers
    fl = torch.where(over, fl + 1, fl)
    wrapped = torch.where(over, torch.zeros_like(wrapped), wrapped)
    return wrapped, fl.long()


def _image_ranges(cell: torch.Tensor, cutoff: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per structure, n_k = ceil(cutoff / w_k): image shifts |S_k| <= n_k cover all pairs of wrapped atoms."""
    widths = perpendicular_widths(cell.double())
    if not torch.all(widths > 0):
        raise ValueError("degenerate cell (zero volume) in radius graph")
    n = torch.ceil(cutoff / widths).long()
    return n, widths


def _shift_grid(n_max: torch.Tensor, device: torch.device) -> torch.Tensor:
    """All integer shifts with |S_k| <= n_max[k]: (K, 3) int64."""
    axes = [torch.arange(-int(m), int(m) + 1, device=device) for m in n_max.tolist()]
    return torch.cartesian_prod(*axes).reshape(-1, 3)


def _finish(
    frac: torch.Tensor,
    cell: torch.Tensor,
    n: int,
    src: torch.Tensor,
    dst: torch.Tensor,
    shifts: torch.Tensor,
    sort: bool = True,
) -> RadiusGraph:
    """Sort edges (optionally) and recompute differentiable vectors from the (unwrapped) inputs."""
    if sort and src.numel():
        # deterministic order, the same for every method: by src, then dst, then shift
        lo = shifts.min()
        span = int(shifts.max() - lo + 1)
        rel = shifts - lo
        code = (rel[:, 0] * span + rel[:, 1]) * span + rel[:, 2]
        total = frac.shape[0] * n
        if float(total) * total * span**3 < 2.0**62:  # one sort on a unique int64 key
            order = torch.argsort((src * total + dst) * span**3 + code)
        else:
            order = torch.argsort(code, stable=True)
            order = order[torch.argsort((src * total + dst)[order], stable=True)]
        src, dst, shifts = src[order], dst[order], shifts[order]
    batch = torch.div(src, n, rounding_mode="floor")
    flat = frac.reshape(-1, 3)
    dfrac = flat[dst] - flat[src] + shifts.to(frac.dtype)
    vectors = _per_structure_matmul(dfrac, cell, batch)
    distances = vectors.norm(dim=-1)
    return RadiusGraph(src, dst, vectors, distances, batch, shifts)


def _per_structure_matmul(rows: torch.Tensor, cell: torch.Tensor, batch: torch.Tensor) -> torch.Tensor:
    """``rows[e] @ cell[batch[e]]`` without an (E, 3, 3) gather: one matmul per structure when the rows
    are grouped by structure (else per structure through a mask). Differentiable."""
    if rows.shape[0] == 0:
        return rows @ cell[0] if cell.shape[0] else rows.clone()
    if cell.shape[0] == 1:
        return rows @ cell[0]
    grouped = bool((batch[1:] >= batch[:-1]).all())
    if grouped:
        counts = torch.bincount(batch, minlength=cell.shape[0]).tolist()
        parts = [part @ cell[i] for i, part in enumerate(torch.split(rows, counts)) if part.shape[0]]
        return torch.cat(parts)
    # ungrouped (an unsorted search): one column of the cell at a time, gathered per row
    out = rows[:, :1] * cell[:, 0].index_select(0, batch)
    out = out + rows[:, 1:2] * cell[:, 1].index_select(0, batch)
    return out + rows[:, 2:3] * cell[:, 2].index_select(0, batch)


def _dense_candidates(
    wrapped: torch.Tensor, cell: torch.Tensor, mask: torch.Tensor, cutoff: float, n_img: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    b, n, _ = wrapped.shape
    device = wrapped.device
    shifts = _shift_grid(n_img.max(dim=0).values, device)  # (K, 3)
    # per structure, drop shifts outside its own range
    pos = torch.einsum("bni,bij->bnj", wrapped, cell)  # (B, N, 3)
    pair_ok = mask[:, :, None] & mask[:, None, :]  # (B, N, N)
    eye = torch.eye(n, dtype=torch.bool, device=device)
    # one (B, Ni, Nj) array per Cartesian component, r_j - r_i: sums over a trailing axis of 3 are slow on
    # the CPU, separate components broadcast against the shifts on a long trailing axis instead
    diff = [(pos[:, None, :, c] - pos[:, :, None, c])[..., None] for c in range(3)]  # 3 × (B, Ni, Nj, 1)
    chunk = max(1, _DENSE_CHUNK_ELEMENTS // max(1, b * n * n))
    cut2 = cutoff * cutoff
    out_src, out_dst, out_shift = [], [], []
    for start in range(0, shifts.shape[0], chunk):
        s = shifts[start : start + chunk]  # (k, 3)
        s_ok = (s.abs()[None, :, :] <= n_img[:, None, :]).all(-1)  # (B, k)
        shift_cart = torch.einsum("ki,bij->bkj", s.to(cell.dtype), cell)  # (B, k, 3)
        d2 = None
        for c in range(3):
            comp = diff[c] + shift_cart[:, None, None, :, c]  # (B, N, N, k)
            d2 = comp.square_() if d2 is None else d2.addcmul_(comp, comp)
        zero = (s == 0).all(-1)  # (k,)
        keep = (d2 < cut2) & pair_ok[..., None] & s_ok[:, None, None, :]
        keep &= ~(eye[None, :, :, None] & zero[None, None, None, :])
        bi, i, j, k = keep.nonzero(as_tuple=True)
        out_src.append(bi * n + i)
        out_dst.append(bi * n + j)
        out_shift.append(s[k])
    return torch.cat(out_src), torch.cat(out_dst), torch.cat(out_shift)


def _cell_list_candidates(
    wrapped: torch.Tensor, cell: torch.Tensor, mask: torch.Tensor, cutoff: float, widths: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    b, n, _ = wrapped.shape
    device = wrapped.device
    n_real = mask.sum(dim=1)  # (B,)
    # bins per axis, each at least `cutoff` wide; capped so that the total number of bins <= atoms
    nb = torch.clamp(torch.floor(widths / cutoff), min=1.0)  # (B, 3) float64
    total = nb.prod(dim=1)
    cap = torch.clamp(n_real.double(), min=1.0)
    factor = torch.where(total > cap, (cap / total) ** (1.0 / 3.0), torch.ones_like(total))
    nb = torch.clamp(torch.floor(nb * factor[:, None] + 1e-9), min=1.0)
    bin_width = widths / nb
    m = torch.ceil(cutoff / bin_width - 1e-12).long().clamp(min=1)  # (B, 3) neighbouring-bin reach
    nb = nb.long()
    n_bins = nb.prod(dim=1)
    bin_offset = torch.cumsum(n_bins, 0) - n_bins  # (B,)

    atom = mask.reshape(-1).nonzero(as_tuple=True)[0]  # flat indices of real atoms
    a_batch = torch.div(atom, n, rounding_mode="floor")
    a_frac = wrapped.reshape(-1, 3)[atom]
    a_nb = nb[a_batch]  # (A, 3)
    a_bin = torch.minimum(torch.floor(a_frac * a_nb.to(a_frac.dtype)).long(), a_nb - 1)
    strides = torch.stack([a_nb[:, 1] * a_nb[:, 2], a_nb[:, 2], torch.ones_like(a_nb[:, 2])], dim=1)
    a_gbin = bin_offset[a_batch] + (a_bin * strides).sum(1)

    # CSR layout of atoms sorted by global bin
    order = torch.argsort(a_gbin, stable=True)
    sorted_atoms = atom[order]
    counts = torch.bincount(a_gbin, minlength=int(n_bins.sum()))
    starts = torch.cumsum(counts, 0) - counts

    offsets = _shift_grid(m.max(dim=0).values, device)  # (K, 3) bin offsets
    # (atom, offset) queries, restricted to each structure's own reach
    q_ok = (offsets.abs()[None, :, :] <= m[a_batch][:, None, :]).all(-1)  # (A, K)
    qa, qk = q_ok.nonzero(as_tuple=True)
    ext = a_bin[qa] + offsets[qk]  # extended bin index of the neighbour image
    q_nb = a_nb[qa]
    img = torch.div(ext, q_nb, rounding_mode="floor")  # image shift of the target bin
    tbin = ext - img * q_nb
    tg = bin_offset[a_batch[qa]] + (tbin * strides[qa]).sum(1)
    cnt = counts[tg]
    total_pairs = int(cnt.sum())
    q_rep = torch.repeat_interleave(torch.arange(qa.shape[0], device=device), cnt, output_size=total_pairs)
    first = torch.cumsum(cnt, 0) - cnt
    within = torch.arange(total_pairs, device=device) - first[q_rep]
    src = atom[qa[q_rep]]
    dst = sorted_atoms[starts[tg[q_rep]] + within]
    shift = img[q_rep]
    # distance filter and self-at-zero-shift removal
    flat = wrapped.reshape(-1, 3)
    e_batch = a_batch[qa[q_rep]]
    vec = torch.einsum("ei,eij->ej", flat[dst] - flat[src] + shift.to(flat.dtype), cell[e_batch])
    keep = (vec * vec).sum(-1) < cutoff * cutoff
    keep &= ~((src == dst) & (shift == 0).all(-1))
    return src[keep], dst[keep], shift[keep]


# ----------------------------------------------------------------------------------------------------
# sweep: sorted columns, one contiguous window per (atom, neighbouring column)
_KEY_ONE = 1 << 40  # fractional coordinate along the sweep axis, quantised to 2^-40 (exact integer keys)
_KEY_COLUMN = 1 << 42  # key = column * 2^42 + quantised coordinate + (image + 1) * 2^40, in [0, 2^42) per column
_SWEEP_MAX_COLUMNS = 1 << 20  # keys stay below 2^62
_SWEEP_CHUNK_ELEMENTS = 1 << 19  # (window, slot) candidates evaluated at once
_SWEEP_SLACK = 1e-5  # relative: columns and windows are this much wider than the cutoff (rounding)
_SWEEP_STATS: dict | None = None  # set to a dict to receive counts of the last sweep (benchmarks, tests)
_SWEEP_PAD_BUDGET = 32_000  # padded candidates worth one more chunk of the sweep (16k-64k performed alike)
_SWEEP_TRIM_MIN_WINDOW = 6.0  # mean atoms per window above which windows are trimmed to the cutoff sphere


@dataclass
class Neighbors:
    """Result of ``neighbor_search`` (no autograd).

    Attributes:
        src, dst: (E,) int64 flat atom indices into ``B * N``.
        shifts: (E, 3) int64 image shifts relative to the coordinates as given (None if not requested).
        distances: (E,) Å in the precision of the inputs (None if not requested).
    """

    src: torch.Tensor
    dst: torch.Tensor
    shifts: torch.Tensor | None = None
    distances: torch.Tensor | None = None


class _SweepUnsuitable(Exception):
    """Raised inside the sweep when its integer keys would overflow: the caller falls back."""


def _sweep_applicable(widths: torch.Tensor, cutoff: float) -> torch.Tensor:
    """(B,) bool: the widest axis is wider than about twice the cutoff, so a window of +-cutoff along it
    holds every periodic image of an atom at most once."""
    return widths.max(dim=1).values * 0.49 > cutoff * (1.0 + _SWEEP_SLACK)


def _sweep_plan(widths: torch.Tensor, cell: torch.Tensor, n_real: torch.Tensor, cutoff: float) -> dict:
    """Per-structure parameters of the sweep, computed on the host (numpy; B is small).

    Returns numpy arrays (B, ...) and ``uniform``: True when every structure with atoms has the same
    parameters and cell, so that the per-atom values are plain Python scalars (fewer, cheaper torch ops).
    """
    wd = widths.detach().double().cpu().numpy()
    cd = cell.detach().double().cpu().numpy()
    nr = n_real.detach().cpu().numpy().astype(np.int64)
    b = wd.shape[0]
    perm = (wd.argmax(axis=1)[:, None] + np.arange(3)[None, :]) % 3
    w = np.take_along_axis(wd, perm, axis=1)
    wide = cutoff * (1.0 + _SWEEP_SLACK)
    ncol = np.maximum(np.floor(w[:, 1:] / wide), 1.0)
    total = ncol.prod(axis=1)
    cap = np.maximum(nr, 1).astype(np.float64)
    factor = np.where(total > cap, np.sqrt(cap / total), 1.0)
    ncol = np.maximum(np.floor(ncol * factor[:, None] + 1e-9), 1.0)
    reach = np.maximum(np.ceil(wide / (w[:, 1:] / ncol) - 1e-12), 1).astype(np.int64)
    ncol = ncol.astype(np.int64)
    n_cols = ncol.prod(axis=1)
    qwin = (np.ceil(wide / w[:, 0] * _KEY_ONE) + 2).astype(np.int64)
    # fine x bins of the window table: 1/16 of the window, coarser where the table would outgrow the atoms
    # (a power of two: bins are found with a shift)
    binq = np.maximum((qwin + 15) // 16, (_KEY_ONE * n_cols) // (8 * np.maximum(nr, 1)) + 1)
    bshift = np.ceil(np.log2(binq.astype(np.float64))).astype(np.int64)
    binq = np.left_shift(np.int64(1), bshift)
    n_fine = (_KEY_ONE + 2 * qwin - 1) // binq + 2
    cell_p = np.take_along_axis(cd, perm[:, :, None], axis=1)  # rows permuted like the axes
    gram = cd @ cd.transpose(0, 2, 1)
    diag = np.sqrt(np.einsum("bii->bi", gram))
    off = np.abs(gram) > 1e-9 * diag[:, :, None] * diag[:, None, :]
    ortho = ~(off & ~np.eye(3, dtype=bool)).any(axis=(1, 2))
    present = nr > 0
    rows = np.concatenate(
        [perm, ncol, reach, qwin[:, None], bshift[:, None], n_fine[:, None], ortho[:, None], cell_p.reshape(b, 9), w],
        axis=1,
    ).astype(np.float64)[present]
    uniform = bool(len(rows) == 0 or (rows == rows[:1]).all())
    if uniform:  # same columns everywhere: offsets are multiples of the structure index
        k = int(np.argmax(present)) if present.any() else 0
        for arr in (perm, w, ncol, reach, qwin, bshift, n_fine, ortho, cell_p):
            arr[:] = arr[k]
        n_cols = ncol.prod(axis=1)
    if int(n_cols.sum()) > _SWEEP_MAX_COLUMNS:
        raise _SweepUnsuitable
    # mean atoms per window (for the choice of trimming): atoms per column times the window's share of x
    mean_window = (
        float(np.mean((nr / n_cols * np.minimum(1.0, 2.0 * wide / w[:, 0]))[present])) if present.any() else 0.0
    )
    return dict(
        perm=perm,
        w=w,
        ncol=ncol,
        reach=reach,
        n_cols=n_cols,
        col_offset=np.cumsum(n_cols) - n_cols,
        mean_window=mean_window,
        qwin=qwin,
        bshift=bshift,
        n_fine=n_fine,
        table_offset=np.cumsum(n_cols * n_fine) - n_cols * n_fine,
        cell_p=cell_p,
        ortho=ortho,
        uniform=uniform,
        wide=wide,
    )


def _sweep_half(
    wrapped: torch.Tensor,
    cell: torch.Tensor,
    mask: torch.Tensor,
    cutoff: float,
    widths: torch.Tensor,
    want_shifts: bool = True,
) -> Neighbors:
    """Half list with distances: every pair closer than ``cutoff`` once, as (i, j, S) or as (j, i, -S),
    shifts relative to ``wrapped``. Every structure with atoms in ``mask`` must pass ``_sweep_applicable``.

    Per structure the widest axis is the sweep axis ``x``; the two others are cut into columns at least
    ``cutoff`` wide (at most one per atom). Atoms are sorted by (column, x), with the images at x + 1 of
    the atoms within ``cutoff`` of x = 0 and at x - 1 of those within ``cutoff`` of x = 1 added, so that
    for each atom and each neighbouring column the candidates within ``cutoff`` along x are ONE
    contiguous range of the sorted array. Its ends come from a table of the first element of every fine
    x bin (1/16 of the window) of every column: no binary search, windows at most a bin longer at each
    end. In cells with orthogonal axes the window in a neighbouring column is only
    ``sqrt(cutoff^2 - gap^2)`` long, ``gap`` the distance from the atom to that column. Half list: only
    the column offsets (dy, dz) > (0, 0) in lexicographic order and, in the atom's own column, only the
    elements after it (images x + 1 sort after every original and images x - 1 before, so each pair is
    seen exactly once). The windows are gathered from one array per coordinate, grouped by length so
    that chunks pad little, and filtered by distance. Tensors are 1-D or (atoms, offsets), and
    per-structure values are Python scalars when all structures agree: broadcasting over a small
    innermost axis and many tiny ops are what costs time on the CPU.
    """
    b, n, _ = wrapped.shape
    device, dtype = wrapped.device, wrapped.dtype
    long = dict(dtype=torch.long, device=device)
    atom = mask.reshape(-1).nonzero().view(-1)

    def nothing() -> Neighbors:
        empty = torch.zeros(0, **long)
        return Neighbors(
            empty, empty, torch.zeros(0, 3, **long) if want_shifts else None, torch.zeros(0, dtype=dtype, device=device)
        )

    n_atoms = atom.shape[0]
    if n_atoms == 0:
        return nothing()
    plan = _sweep_plan(widths, cell, mask.sum(dim=1), cutoff)
    uniform, wide = plan["uniform"], plan["wide"]
    a_b = torch.div(atom, n, rounding_mode="floor") if b > 1 else None

    def per_atom(name: str, col: int | None = None, as_dtype=torch.long):
        """The per-atom value of a plan entry: a Python scalar when uniform, else an (A,) tensor."""
        arr = plan[name] if col is None else plan[name][:, col]
        if uniform:
            return arr[0].item()
        return torch.as_tensor(np.ascontiguousarray(arr), dtype=as_dtype, device=device).index_select(0, a_b)

    def c(x):  # broadcast a per-atom value against the (A, K) grid
        return x[:, None] if isinstance(x, torch.Tensor) else x

    # per atom: fractional coordinates with the sweep axis first, columns, quantised x
    flat = wrapped.reshape(-1, 3).index_select(0, atom)
    if uniform:
        p0 = [int(v) for v in plan["perm"][0]]
        frac = flat if p0 == [0, 1, 2] else flat[:, p0]
        a_perm = None
    else:
        a_perm = torch.as_tensor(plan["perm"], **long).index_select(0, a_b)
        frac = flat.gather(1, a_perm)
    nc_y, nc_z = per_atom("ncol", 0), per_atom("ncol", 1)
    if uniform:
        col_y = torch.floor(frac[:, 1] * nc_y).long().clamp_(0, nc_y - 1)
        col_z = torch.floor(frac[:, 2] * nc_z).long().clamp_(0, nc_z - 1)
    else:
        col_y = torch.minimum(torch.floor(frac[:, 1] * nc_y.to(dtype)).long(), nc_y - 1).clamp_(min=0)
        col_z = torch.minimum(torch.floor(frac[:, 2] * nc_z.to(dtype)).long(), nc_z - 1).clamp_(min=0)
    local_col = col_y * nc_z + col_z
    if uniform:
        n_cols, n_fine = int(plan["n_cols"][0]), int(plan["n_fine"][0])
        col_base = a_b * n_cols if a_b is not None else 0
        table_base = a_b * (n_cols * n_fine) if a_b is not None else 0
    else:
        col_base = per_atom("col_offset")
        table_base = per_atom("table_offset")
    column = local_col + col_base
    qx = torch.floor(frac[:, 0].double() * _KEY_ONE).long().clamp_(0, _KEY_ONE - 1)
    qwin, bshift, n_fine = per_atom("qwin"), per_atom("bshift"), per_atom("n_fine")

    # the extended array, sorted by key: atoms, + images x + 1 of those near x = 0, - those near x = 1
    plus = (qx < qwin).nonzero().view(-1)
    minus = (qx >= _KEY_ONE - qwin).nonzero().view(-1)
    e_atom = torch.cat([torch.arange(n_atoms, device=device), plus, minus])  # index into the atom list
    n_ext = e_atom.shape[0]
    e_img = torch.zeros(n_ext, **long)
    e_img[n_atoms : n_atoms + plus.shape[0]] = 1
    e_img[n_atoms + plus.shape[0] :] = -1
    e_u = qx.index_select(0, e_atom) + e_img * _KEY_ONE  # in [-qwin, 1 + qwin) key units
    e_key, order = torch.sort(column.index_select(0, e_atom) * _KEY_COLUMN + e_u, stable=True)
    e_atom, e_img, e_u = e_atom.index_select(0, order), e_img.index_select(0, order), e_u.index_select(0, order)
    inverse = torch.empty(n_ext, **long)
    inverse[order] = torch.arange(n_ext, device=device)
    own = inverse[:n_atoms]  # sorted position of each atom's original (image 0)
    e_flat = atom.index_select(0, e_atom)
    # table: first[t] = sorted position of the first element in table cell >= t, cells = (column, fine x bin)
    if uniform:
        e_cell = (local_col * n_fine + table_base).index_select(0, e_atom) + ((e_u + qwin) >> bshift)
    else:
        e_cell = (local_col * n_fine + table_base).index_select(0, e_atom) + (
            (e_u + qwin.index_select(0, e_atom)) >> bshift.index_select(0, e_atom)
        )
    n_table = int((plan["n_cols"] * plan["n_fine"]).sum())
    first = torch.zeros(n_table + 1, **long)
    torch.cumsum(torch.bincount(e_cell, minlength=n_table), 0, out=first[1:])

    # Cartesian positions (input precision): of the atoms and of the extended array (one array per axis)
    pos = torch.bmm(wrapped, cell).reshape(-1, 3).index_select(0, atom)  # (A, 3)
    e_imgf = e_img.to(dtype)
    if uniform:
        cp = plan["cell_p"][0]
        coords = [pos[:, k].index_select(0, e_atom) + e_imgf * float(cp[0, k]) for k in range(3)]
    else:
        a_cell = torch.as_tensor(plan["cell_p"], dtype=dtype, device=device).index_select(0, a_b)
        coords = [
            pos[:, k].index_select(0, e_atom) + e_imgf * a_cell[:, 0, k].index_select(0, e_atom) for k in range(3)
        ]

    # windows: (atom, column offset (dy, dz) >= (0, 0)) on an (A, K) grid; out-of-reach ones get length 0
    m_max = plan["reach"].max(axis=0)
    offs = [
        (dy, dz)
        for dz in range(-int(m_max[1]), int(m_max[1]) + 1)
        for dy in range(-int(m_max[0]), int(m_max[0]) + 1)
        if dz > 0 or (dz == 0 and dy > 0)
    ]
    offs = torch.as_tensor([(0, 0)] + offs, **long)  # (K, 2): the own column first
    n_off = offs.shape[0]
    o_y, o_z = offs[:, 0], offs[:, 1]
    ty = col_y[:, None] + o_y  # (A, K) target column before wrapping
    tz = col_z[:, None] + o_z
    img_y = torch.div(ty, c(nc_y), rounding_mode="floor")  # image shifts of the target column
    img_z = torch.div(tz, c(nc_z), rounding_mode="floor")
    row = ((ty - img_y * c(nc_y)) * c(nc_z) + (tz - img_z * c(nc_z))) * c(n_fine) + c(table_base)
    # window half widths along x: the cutoff or, in cells with orthogonal axes, sqrt(cutoff^2 - gap^2) with
    # gap the distance from the atom to the nearest face of the target column (0 in its own column)
    # (worth its ~25 passes over the windows only where windows are long: it removes ~1/3 of a window)
    ortho = per_atom("ortho", as_dtype=torch.bool) if not uniform else bool(plan["ortho"][0])
    if plan["mean_window"] < _SWEEP_TRIM_MIN_WINDOW:
        ortho = False
    if ortho is False:
        g_lo = (qx >> bshift)[:, None]
        g_hi = ((qx + 2 * qwin) >> bshift)[:, None] + 1
        empty_window = None
    else:
        gap2 = None
        for fk, t_k, nc_k, o_k, wk in (
            (frac[:, 1], ty, nc_y, o_y, per_atom("w", 1, torch.float64)),
            (frac[:, 2], tz, nc_z, o_z, per_atom("w", 2, torch.float64)),
        ):
            face = (t_k + (o_k < 0).long()).double() / c(nc_k)  # the face of the target column facing the atom
            g = (face - fk.double()[:, None]).abs_().mul_(c(wk)).masked_fill_(o_k == 0, 0.0)
            gap2 = g * g if gap2 is None else gap2.addcmul_(g, g)
        if ortho is not True:
            gap2 = gap2 * ortho[:, None]
        half_x = (wide * wide - gap2).clamp_(min=0.0).sqrt_()  # Å
        p_qwin = torch.ceil(half_x.mul_(_KEY_ONE / c(per_atom("w", 0, torch.float64)))).long() + 2
        g_lo = (qx[:, None] - p_qwin + c(qwin)) >> c(bshift)
        g_hi = ((qx[:, None] + p_qwin + c(qwin)) >> c(bshift)) + 1
        empty_window = gap2 >= wide * wide
    lo = first.index_select(0, (row + g_lo).view(-1)).view(n_atoms, n_off)
    hi = first.index_select(0, (row + g_hi).view(-1)).view(n_atoms, n_off)
    lo[:, 0] = own + 1  # own column: only the elements after the atom
    length = (hi - lo).clamp_(min=0)
    if empty_window is not None:
        length.masked_fill_(empty_window, 0)
    if not uniform:  # offsets span the largest reach of the batch: drop those beyond each structure's own
        r_y, r_z = per_atom("reach", 0), per_atom("reach", 1)
        length.masked_fill_((o_y.abs() > c(r_y)) | (o_z.abs() > c(r_z)), 0)
    # window centres: r_i - (image shift of the target column) @ cell, so that d = r_candidate - centre
    img_yf, img_zf = img_y.to(dtype), img_z.to(dtype)
    if uniform:
        centre = []
        for k in range(3):
            ck = pos[:, k].contiguous()[:, None].expand(n_atoms, n_off)
            for img, comp in ((img_yf, float(cp[1, k])), (img_zf, float(cp[2, k]))):
                if comp != 0.0:
                    ck = ck - img * comp
            centre.append(ck.reshape(-1))
    else:
        centre = [
            (pos[:, k, None] - img_yf * a_cell[:, 1, k, None] - img_zf * a_cell[:, 2, k, None]).view(-1)
            for k in range(3)
        ]
    lo, length = lo.view(-1), length.view(-1)
    n_p = lo.shape[0]  # window p: atom p // K, column offset p % K

    src_parts, dst_parts, d2_parts, e_parts, p_parts = [], [], [], [], []
    w_max = int(length.max()) if n_p else 0
    if w_max > 0:
        # slightly generous squared cutoff; the exact test d < cutoff is made on the distances below
        cut2 = cutoff * cutoff * (1.0 + 8.0 * float(torch.finfo(dtype).eps))
        pad = torch.full((w_max,), float("nan"), dtype=dtype, device=device)
        coords = [torch.cat([x, pad]) for x in coords]  # NaN padding never passes the distance test
        # windows sorted by length (a small-integer sort), cut into chunks of similar lengths: little padding
        counts = torch.bincount(length, minlength=w_max + 1).tolist()
        start = counts[0]  # windows of length 0 come first
        chunk_start, chunk_len, n_in, sum_in = start, 0, 0, 0
        bounds: list[tuple[int, int, int]] = []  # (start, stop, width)
        for size in range(1, w_max + 1):
            count = counts[size]
            if count == 0:
                continue
            # a new chunk when widening this one to `size` would pad more candidates than a chunk's fixed
            # cost (about 30 small operations) is worth, or when it is full
            if n_in and (n_in * size - sum_in > _SWEEP_PAD_BUDGET or (n_in + count) * size > _SWEEP_CHUNK_ELEMENTS):
                bounds.append((chunk_start, chunk_start + n_in, chunk_len))
                chunk_start, n_in, sum_in = chunk_start + n_in, 0, 0
            while count:  # a length class larger than a chunk: split it
                take = min(count, max(1, _SWEEP_CHUNK_ELEMENTS // size - n_in))
                n_in, sum_in, count, chunk_len = n_in + take, sum_in + take * size, count - take, size
                if count:
                    bounds.append((chunk_start, chunk_start + n_in, size))
                    chunk_start, n_in, sum_in = chunk_start + n_in, 0, 0
        if n_in:
            bounds.append((chunk_start, chunk_start + n_in, chunk_len))
        unsorted = len(bounds) == 1
        if unsorted:  # one chunk holds every non-empty window: no need to order them by length
            if counts[0]:
                by_len = torch.cat([(length == 0).nonzero().view(-1), (length > 0).nonzero().view(-1)])
                sorted_len = length.index_select(0, by_len)
            else:  # every window in order: no gathers by window index below
                by_len, sorted_len = None, length
        else:
            small = torch.uint8 if w_max < 256 else (torch.int16 if w_max < 32768 else torch.int32)
            sorted_len, by_len = torch.sort(length.to(small))
        p_src = atom.repeat_interleave(n_off) if n_off > 1 else atom
        if _SWEEP_STATS is not None:
            _SWEEP_STATS.update(
                windows=n_p,
                candidates=int(length.sum()),
                chunks=len(bounds),
                evaluated=sum((stop - start) * width for start, stop, width in bounds),
            )
        for start, stop, w_chunk in bounds:
            idx = by_len[start:stop] if by_len is not None else None
            lo_c = lo.index_select(0, idx) if idx is not None else lo
            slots = (lo_c[:, None] + torch.arange(w_chunk, device=device)).view(-1)
            d2 = None
            for k in range(3):
                dk = coords[k].index_select(0, slots).view(-1, w_chunk)
                dk = dk.sub_((centre[k].index_select(0, idx) if idx is not None else centre[k])[:, None])
                d2 = dk.square_() if d2 is None else d2.addcmul_(dk, dk)
            hit = d2 < cut2
            if (counts[w_chunk] < stop - start) if unsorted else int(sorted_len[start]) < w_chunk:
                hit &= torch.arange(w_chunk, device=device) < sorted_len[start:stop, None]
            flat_hit = hit.view(-1).nonzero().view(-1)  # (window, slot) in the chunk
            e_pos = slots.index_select(0, flat_hit)
            p_hit = torch.div(flat_hit, w_chunk, rounding_mode="floor")
            if idx is not None:
                p_hit = idx.index_select(0, p_hit)
            src_parts.append(p_src.index_select(0, p_hit))
            dst_parts.append(e_flat.index_select(0, e_pos))
            d2_parts.append(d2.view(-1).index_select(0, flat_hit))  # (a masked_select is ~10x slower)
            if want_shifts:
                e_parts.append(e_pos)
                p_parts.append(p_hit)
    if not src_parts:
        return nothing()

    def cat(parts: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(parts) if len(parts) > 1 else parts[0]

    src, dst, distances = cat(src_parts), cat(dst_parts), cat(d2_parts).sqrt_()
    shifts = None
    if want_shifts:
        # image shifts in the original axes: the x image of the extended element + the column's (y, z) images
        p_img = torch.stack([torch.zeros_like(img_y), img_y, img_z], dim=-1)  # (A, K, 3), permuted axes
        e_img3 = torch.zeros(n_ext, 3, **long)
        e_img3[:, 0] = e_img
        if uniform:
            inv = [int(v) for v in np.argsort(plan["perm"][0])]  # permuted axis of each original axis
            p_shift, e_shift = p_img[..., inv], e_img3[:, inv]
        else:
            p_shift = torch.zeros_like(p_img).scatter_(2, a_perm[:, None, :].expand(n_atoms, n_off, 3), p_img)
            e_shift = torch.zeros_like(e_img3).scatter_(1, a_perm.index_select(0, e_atom), e_img3)
        shifts = p_shift.reshape(-1, 3).index_select(0, cat(p_parts)) + e_shift.index_select(0, cat(e_parts))
    keep = distances < cutoff
    if not bool(keep.all()):
        keep = keep.nonzero().view(-1)
        src, dst, distances = src[keep], dst[keep], distances[keep]
        shifts = shifts[keep] if shifts is not None else None
    return Neighbors(src, dst, shifts, distances)


def _half_mask(src: torch.Tensor, dst: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Of a full directed list, the edges that make a half list: src < dst, or src == dst and the shift
    is lexicographically positive (the reverse edge (dst, src, -shift) fails the same test)."""
    sign = torch.sign(shift)
    first = torch.where(sign[:, 0] != 0, sign[:, 0], torch.where(sign[:, 1] != 0, sign[:, 1], sign[:, 2]))
    return (src < dst) | ((src == dst) & (first > 0))


def neighbor_search(
    frac_coords: torch.Tensor,
    cell: torch.Tensor,
    mask: torch.Tensor | None,
    cutoff: float,
    method: Literal["auto", "cell_list", "dense", "compiled", "vesin"] = "auto",
    half: bool = False,
    shifts: bool = True,
    distances: bool = False,
) -> Neighbors:
    """Unsorted, non-differentiable pair search: the pairs of ``radius_graph`` without sorting or autograd.

    Args:
        frac_coords, cell, mask, cutoff, method: as in ``radius_graph``.
        half: list each pair once, as (i, j, S) or as (j, i, -S) (which one depends on the method), for
            symmetric quantities (g(r), coordination counts, minimum distances): half the work.
        shifts: return the (E, 3) image shifts (relative to the coordinates as given).
        distances: return the (E,) distances, computed in the precision of the inputs.
    Returns:
        ``Neighbors``, grouped by structure when every structure used the same search (see below).

    ``cell_list`` sweeps sorted columns (``_sweep_half``) in every structure whose widest axis exceeds
    about twice the cutoff, and uses the binned cell list in the others (small cells, where images of one
    atom repeat within the cutoff).
    """
    if mask is None:
        mask = torch.ones(frac_coords.shape[:2], dtype=torch.bool, device=frac_coords.device)
    _check_inputs(frac_coords, cell, mask, cutoff)
    mask = mask.bool()
    n = frac_coords.shape[1]
    rest_method = "dense" if method == "dense" or (method == "auto" and n <= DENSE_REST_MAX_ATOMS) else "cell_list"
    if method == "auto":
        # CPU: the compiled search when numba is there; else (and on GPUs) the sweep where it applies,
        # ``rest_method`` for the other structures
        method = "compiled" if frac_coords.device.type == "cpu" and periodic_compiled.available() else "cell_list"
    if method not in ("dense", "cell_list", "compiled", "vesin"):
        raise ValueError(
            f"unknown radius_graph method {method!r}; use 'auto', 'cell_list', 'dense', 'compiled' or 'vesin'"
        )
    with torch.no_grad():
        wrapped, floor = _wrap(frac_coords.detach())
        cell_d = cell.detach()
        n_img, widths = _image_ranges(cell_d, cutoff)
        unwrapped = bool((floor != 0).any())
        need_shifts = shifts or unwrapped
        parts: list[tuple[Neighbors, bool]] = []  # (found, is_half)
        rest = mask
        if method == "vesin":
            src, dst, shift, dist = periodic_vesin.vesin_search(
                wrapped, cell_d, mask, cutoff, half, need_shifts, distances
            )
            dist = None if dist is None else dist.to(wrapped.dtype)
            parts.append((Neighbors(src, dst, shift, dist), half))
            rest = None
        elif method == "compiled":
            src, dst, shift, dist = periodic_compiled.compiled_search(wrapped, cell_d, widths, mask, cutoff, half)
            device = frac_coords.device
            parts.append(
                (
                    Neighbors(
                        src.to(device), dst.to(device), shift.to(device), dist.to(device=device, dtype=wrapped.dtype)
                    ),
                    half,
                )
            )
            rest = None
        elif method == "cell_list":
            sweep = _sweep_applicable(widths, cutoff)
            sweep_all = bool(sweep.all())
            if sweep_all or bool(sweep.any()):
                try:
                    found = _sweep_half(
                        wrapped,
                        cell_d,
                        mask if sweep_all else mask & sweep[:, None],
                        cutoff,
                        widths,
                        want_shifts=need_shifts,
                    )
                    parts.append((found, True))
                    rest = None if sweep_all else mask & ~sweep[:, None]
                except _SweepUnsuitable:
                    pass
        if rest is not None and (not parts or bool(rest.any())):
            if rest_method == "dense":
                # only the structures left to search: the dense work grows with B·N², and a batch may mix
                # large (swept) cells with a few small ones
                sel = rest.any(dim=1).nonzero().view(-1)
                if sel.numel() < rest.shape[0]:
                    src, dst, shift = _dense_candidates(wrapped[sel], cell_d[sel], rest[sel], cutoff, n_img[sel])
                    src = sel[torch.div(src, n, rounding_mode="floor")] * n + src % n
                    dst = sel[torch.div(dst, n, rounding_mode="floor")] * n + dst % n
                else:
                    src, dst, shift = _dense_candidates(wrapped, cell_d, rest, cutoff, n_img)
            else:
                src, dst, shift = _cell_list_candidates(wrapped, cell_d, rest, cutoff, widths)
            if half:
                keep = _half_mask(src, dst, shift)
                src, dst, shift = src[keep], dst[keep], shift[keep]
            dist = None
            if distances:
                flat = wrapped.reshape(-1, 3)
                dfrac = flat[dst] - flat[src] + shift.to(wrapped.dtype)
                dist = _per_structure_matmul(dfrac, cell_d, torch.div(src, n, rounding_mode="floor")).norm(dim=-1)
            parts.append((Neighbors(src, dst, shift if need_shifts else None, dist), half))
        out: list[Neighbors] = []
        for found, is_half in parts:
            if not half and is_half:  # mirror: (i, j, S) and (j, i, -S)
                found = Neighbors(
                    torch.cat([found.src, found.dst]),
                    torch.cat([found.dst, found.src]),
                    None if found.shifts is None else torch.cat([found.shifts, -found.shifts]),
                    None if found.distances is None else found.distances.repeat(2),
                )
            out.append(found)
        if len(out) == 1:
            result = out[0]
        else:
            result = Neighbors(
                torch.cat([f.src for f in out]),
                torch.cat([f.dst for f in out]),
                torch.cat([f.shifts for f in out]) if need_shifts else None,
                torch.cat([f.distances for f in out]) if distances else None,
            )
        if unwrapped and result.shifts is not None:  # relative to the coordinates as given: r'_x = r_x - floor_x
            fl = floor.reshape(-1, 3)
            result.shifts = result.shifts + fl.index_select(0, result.src) - fl.index_select(0, result.dst)
        if not shifts:
            result.shifts = None
        if not distances:
            result.distances = None
    return result


def radius_graph(
    frac_coords: torch.Tensor,
    cell: torch.Tensor,
    mask: torch.Tensor | None,
    cutoff: float,
    method: Literal["auto", "cell_list", "dense", "compiled", "vesin"] = "auto",
    half: bool = False,
    sort: bool = True,
) -> RadiusGraph:
    """All periodic neighbour pairs closer than ``cutoff`` (Å), as ASE's ``neighbor_list('ijdD')``.

    Args:
        frac_coords: (B, N, 3) fractional coordinates (any real values; wrapped internally).
        cell: (B, 3, 3) Å, rows are lattice vectors; any shape, triclinic included.
        mask: (B, N) bool, True for real atoms (None: all real). Padding atoms get no edges.
        cutoff: Å; pairs with ``distance < cutoff`` are edges.
        method: ``"dense"`` (O(N²)), ``"cell_list"`` (O(N)), ``"compiled"``, ``"vesin"`` or ``"auto"`` (see
            the module docstring).
        half: each pair once, as (i, j, S) or (j, i, -S): for symmetric quantities, half the cost.
        sort: sort the edges by (src, dst, shift); ``False`` skips the sort (order then unspecified,
            but grouped by structure when ``half=True`` and every structure uses the same search).
    Returns:
        ``RadiusGraph`` with flat ``src``/``dst`` indices into ``B * N``; edges sorted by (src, dst, shift).
        ``vectors`` and ``distances`` are differentiable with respect to ``frac_coords`` and ``cell``.
    """
    found = neighbor_search(frac_coords, cell, mask, cutoff, method=method, half=half)
    return _finish(frac_coords, cell, frac_coords.shape[1], found.src, found.dst, found.shifts, sort=sort)


def neighbor_pairs(
    positions,
    cell,
    cutoff: float,
    method: Literal["auto", "cell_list", "dense", "compiled", "vesin"] = "auto",
    return_shifts: bool = False,
):
    """Neighbour pairs of ONE periodic structure, same semantics as ASE's ``neighbor_list('ijdD')``.

    Args:
        positions: (N, 3) Cartesian Å, numpy array or torch tensor (may lie outside the cell).
        cell: (3, 3) Å, rows are lattice vectors (numpy, torch or ASE ``Cell``).
        cutoff: Å, pairs with ``d < cutoff``.
        method: as in ``radius_graph``.
        return_shifts: also return the (E, 3) integer image shifts ``S``.
    Returns:
        ``(i, j, d, D)`` (and ``S``): ``D = positions[j] + S @ cell - positions[i]``, ``d = |D|``.
        Numpy in, numpy out (int64 indices, float64 values); torch in, torch out (differentiable with
        respect to ``positions`` and ``cell``). Sorted by ``i`` then ``j``.
    """
    is_numpy = not isinstance(positions, torch.Tensor)
    if is_numpy:
        pos_t = torch.as_tensor(np.asarray(positions, dtype=np.float64))
        cell_t = torch.as_tensor(np.asarray(cell, dtype=np.float64))
    else:
        pos_t = positions
        cell_t = (
            torch.as_tensor(cell, dtype=positions.dtype, device=positions.device)
            if not isinstance(cell, torch.Tensor)
            else cell.to(positions.dtype)
        )
    if pos_t.dim() != 2 or pos_t.shape[1] != 3:
        raise ValueError(f"positions must be (N, 3), got {tuple(pos_t.shape)}")
    n = pos_t.shape[0]
    # fractional coordinates: r = f @ cell  ->  f = r @ cell^-1
    frac = torch.linalg.solve(cell_t.transpose(0, 1), pos_t.transpose(0, 1)).transpose(0, 1)
    mask = torch.ones(1, n, dtype=torch.bool, device=pos_t.device)
    g = radius_graph(frac[None], cell_t[None], mask, cutoff, method=method)
    # recompute vectors from Cartesian positions (exact for positions outside the cell as well)
    vectors = pos_t[g.dst] - pos_t[g.src] + g.shifts.to(pos_t.dtype) @ cell_t
    distances = vectors.norm(dim=-1)
    out = (g.src, g.dst, distances, vectors) + ((g.shifts,) if return_shifts else ())
    if is_numpy:
        out = tuple(x.detach().cpu().numpy() for x in out)
    return out
