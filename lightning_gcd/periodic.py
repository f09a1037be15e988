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

Two search methods return the same edges in the same order (sorted by ``src``, ``dst``, then shift):

``dense``      all pairs × all needed image shifts, O(N² K) time and memory (K image shifts).
               Fastest for small structures and tiny cells.
``cell_list``  atoms are binned in fractional space into ``nb_k = floor(w_k / cutoff)`` bins per axis
               (``w_k`` the perpendicular width of the cell along axis k), so every bin is at least
               ``cutoff`` wide; each atom then looks at the ±m neighbouring bins (m = 1 for ordinary
               cells, ``m = ceil(cutoff / bin width)`` when the cell itself is thinner than the cutoff),
               the bin index wrapping around the cell and the wrap count giving the image shift.
               Distinct bin offsets give distinct (bin, shift) pairs, so nothing is counted twice,
               even with 1 or 2 bins per axis; no supercell is built. The number of bins is capped at
               the number of atoms, so time and memory are O(N) at fixed density.
``auto``       ``dense`` when every structure has at most ``DENSE_MAX_ATOMS`` (= 32) atom slots, else
               ``cell_list`` (measured crossover on CPU: 32-64 atoms per structure at metal density).

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

__all__ = [
    "DENSE_MAX_ATOMS",
    "RadiusGraph",
    "minimum_image",
    "perpendicular_widths",
    "radius_graph",
    "neighbor_pairs",
]

#: ``method="auto"`` uses the dense search when the padded atom count per structure is at most this.
DENSE_MAX_ATOMS = 32

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
    volume = torch.linalg.det(cell).abs()
    a, b, c = cell[..., 0, :], cell[..., 1, :], cell[..., 2, :]
    areas = torch.stack(
        [torch.linalg.cross(b, c).norm(dim=-1), torch.linalg.cross(c, a).norm(dim=-1),
         torch.linalg.cross(a, b).norm(dim=-1)], dim=-1)
    return volume[..., None] / areas


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


def _finish(frac: torch.Tensor, cell: torch.Tensor, n: int, src: torch.Tensor, dst: torch.Tensor,
            shifts: torch.Tensor) -> RadiusGraph:
    """Sort edges and recompute differentiable vectors from the (unwrapped) inputs."""
    if src.numel():
        # deterministic order, the same for every method: by src, then dst, then shift
        lo = shifts.min()
        span = shifts.max() - lo + 1
        rel = shifts - lo
        order = torch.argsort((rel[:, 0] * span + rel[:, 1]) * span + rel[:, 2], stable=True)
        src, dst, shifts = src[order], dst[order], shifts[order]
        order = torch.argsort(src * frac.shape[0] * n + dst, stable=True)
        src, dst, shifts = src[order], dst[order], shifts[order]
    batch = torch.div(src, n, rounding_mode="floor")
    flat = frac.reshape(-1, 3)
    dfrac = flat[dst] - flat[src] + shifts.to(frac.dtype)
    vectors = torch.einsum("ei,eij->ej", dfrac, cell[batch])
    distances = vectors.norm(dim=-1)
    return RadiusGraph(src, dst, vectors, distances, batch, shifts)


def _dense_candidates(wrapped: torch.Tensor, cell: torch.Tensor, mask: torch.Tensor, cutoff: float,
                      n_img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    b, n, _ = wrapped.shape
    device = wrapped.device
    shifts = _shift_grid(n_img.max(dim=0).values, device)  # (K, 3)
    # per structure, drop shifts outside its own range
    pos = torch.einsum("bni,bij->bnj", wrapped, cell)  # (B, N, 3)
    pair_ok = mask[:, :, None] & mask[:, None, :]  # (B, N, N)
    eye = torch.eye(n, dtype=torch.bool, device=device)
    diff = pos[:, None, :, :] - pos[:, :, None, :]  # (B, Ni, Nj, 3): r_j - r_i
    chunk = max(1, _DENSE_CHUNK_ELEMENTS // max(1, b * n * n))
    cut2 = cutoff * cutoff
    out_src, out_dst, out_shift = [], [], []
    for start in range(0, shifts.shape[0], chunk):
        s = shifts[start:start + chunk]  # (k, 3)
        s_ok = (s.abs()[None, :, :] <= n_img[:, None, :]).all(-1)  # (B, k)
        shift_cart = torch.einsum("ki,bij->bkj", s.to(cell.dtype), cell)  # (B, k, 3)
        vec = diff[:, :, :, None, :] + shift_cart[:, None, None, :, :]  # (B, N, N, k, 3)
        d2 = (vec * vec).sum(-1)
        zero = (s == 0).all(-1)  # (k,)
        keep = (d2 < cut2) & pair_ok[..., None] & s_ok[:, None, None, :]
        keep &= ~(eye[None, :, :, None] & zero[None, None, None, :])
        bi, i, j, k = keep.nonzero(as_tuple=True)
        out_src.append(bi * n + i)
        out_dst.append(bi * n + j)
        out_shift.append(s[k])
    return torch.cat(out_src), torch.cat(out_dst), torch.cat(out_shift)


def _cell_list_candidates(wrapped: torch.Tensor, cell: torch.Tensor, mask: torch.Tensor, cutoff: float,
                          widths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
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


def radius_graph(frac_coords: torch.Tensor, cell: torch.Tensor, mask: torch.Tensor | None, cutoff: float,
                 method: Literal["auto", "cell_list", "dense"] = "auto") -> RadiusGraph:
    """All periodic neighbour pairs closer than ``cutoff`` (Å), as ASE's ``neighbor_list('ijdD')``.

    Args:
        frac_coords: (B, N, 3) fractional coordinates (any real values; wrapped internally).
        cell: (B, 3, 3) Å, rows are lattice vectors; any shape, triclinic included.
        mask: (B, N) bool, True for real atoms (None: all real). Padding atoms get no edges.
        cutoff: Å; pairs with ``distance < cutoff`` are edges.
        method: ``"dense"`` (O(N²)), ``"cell_list"`` (O(N)) or ``"auto"`` (dense when
            ``N <= DENSE_MAX_ATOMS``, else cell list).
    Returns:
        ``RadiusGraph`` with flat ``src``/``dst`` indices into ``B * N``; edges sorted by (src, dst, shift).
        ``vectors`` and ``distances`` are differentiable with respect to ``frac_coords`` and ``cell``.
    """
    if mask is None:
        mask = torch.ones(frac_coords.shape[:2], dtype=torch.bool, device=frac_coords.device)
    _check_inputs(frac_coords, cell, mask, cutoff)
    mask = mask.bool()
    b, n, _ = frac_coords.shape
    if method == "auto":
        method = "dense" if n <= DENSE_MAX_ATOMS else "cell_list"
    with torch.no_grad():
        wrapped, floor = _wrap(frac_coords.detach())
        cell_d = cell.detach()
        n_img, widths = _image_ranges(cell_d, cutoff)
        if method == "dense":
            src, dst, shift = _dense_candidates(wrapped, cell_d, mask, cutoff, n_img)
        elif method == "cell_list":
            src, dst, shift = _cell_list_candidates(wrapped, cell_d, mask, cutoff, widths)
        else:
            raise ValueError(f"unknown radius_graph method {method!r}; use 'auto', 'cell_list' or 'dense'")
        # shifts relative to the coordinates as given: r'_x = r_x - floor_x
        fl = floor.reshape(-1, 3)
        shift = shift + fl[src] - fl[dst]
    return _finish(frac_coords, cell, n, src, dst, shift)


def neighbor_pairs(positions, cell, cutoff: float, method: Literal["auto", "cell_list", "dense"] = "auto",
                   return_shifts: bool = False):
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
        cell_t = torch.as_tensor(cell, dtype=positions.dtype, device=positions.device) \
            if not isinstance(cell, torch.Tensor) else cell.to(positions.dtype)
    if pos_t.dim() != 2 or pos_t.shape[1] != 3:
        raise ValueError(f"positions must be (N, 3), got {tuple(pos_t.shape)}")
    n = pos_t.shape[0]
    if method == "auto":
        method = "dense" if n <= DENSE_MAX_ATOMS else "cell_list"
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
