"""Gaussian density encoding (VoxMol-style): one channel per species, a sum of Gaussians of width σ.

Density of species s at grid point u (fractional ``u / G``)::

    rho_s(u) = sum over atoms a of species s, and their periodic images, of exp(-|r(u) - r_a|^2 / (2 σ^2))

Grid points are voxel corners. Decoding finds local maxima above ``threshold`` (periodic 3×3×3
neighbourhood), then refines each peak by a least-squares quadratic fit of log-density over its 27
neighbours: log of a single Gaussian is exactly quadratic in grid coordinates for any cell shape, so an
isolated atom is recovered exactly; neighbours' tails bias the fit slightly (docs/datasets.md, Voxel encodings, gives
the tested tolerance). Encoding refuses grids on which peaks could be missed (σ too small for the voxel) or merged
(two atoms within one voxel of each other, or closer than 2.5 σ).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lightning_gcd.errors import EncodingError
from lightning_gcd.periodic import perpendicular_widths
from lightning_gcd.representations.base import GridShape, VoxelEncoding, check_cells
from lightning_gcd.structures import StructureBatch

_CUTOFF_SIGMAS = 3.5  # Gaussians are truncated beyond this many σ (relative error < 2e-3)
_MERGE_SIGMAS = 2.5  # two atoms closer than this many σ may merge into one peak


def _quadratic_fit_matrix() -> tuple[torch.Tensor, torch.Tensor]:
    """(27, 3) neighbour offsets and the (10, 27) pseudo-inverse of the quadratic design matrix."""
    r = torch.arange(-1, 2, dtype=torch.float64)
    offs = torch.stack(torch.meshgrid(r, r, r, indexing="ij"), dim=-1).reshape(27, 3)
    u, v, w = offs.unbind(-1)
    design = torch.stack(
        [torch.ones(27, dtype=torch.float64), u, v, w, u * u, v * v, w * w, u * v, u * w, v * w], dim=-1
    )
    return offs, torch.linalg.pinv(design)


class GaussianDensityEncoding(VoxelEncoding):
    """Per-species Gaussian densities of width ``sigma`` Å."""

    name = "gaussian"

    def __init__(self, species: list[int], sigma: float = 0.5, threshold: float = 0.5) -> None:
        super().__init__(species)
        if sigma <= 0:
            raise ValueError(f"sigma must be positive, got {sigma}")
        self.sigma = float(sigma)
        self.threshold = float(threshold)
        self._offsets, self._pinv = _quadratic_fit_matrix()

    @property
    def channels(self) -> list[str]:
        return [f"density_Z{z}" for z in self.species]

    def attrs(self) -> dict[str, object]:
        return {**super().attrs(), "sigma": self.sigma}

    # ----------------------------------------------------------------------------------------------
    def encode(self, batch: StructureBatch, grid_shape: GridShape) -> torch.Tensor:
        check_cells(batch.cell)
        device = batch.frac_coords.device
        cell = batch.cell.double()  # (B, 3, 3)
        dims = torch.as_tensor(grid_shape, device=device, dtype=torch.float64)
        self._check_grid(batch, cell, dims)
        channel = self.species_channel(batch.numbers, batch.mask)  # (B, N)
        widths = perpendicular_widths(cell)  # (B, 3) Å
        radius = torch.ceil(_CUTOFF_SIGMAS * self.sigma / (widths / dims)).amax(dim=0).long()  # (3,)
        ranges = [torch.arange(-int(k), int(k) + 1, device=device, dtype=torch.float64) for k in radius]
        window = torch.stack(torch.meshgrid(*ranges, indexing="ij"), dim=-1).reshape(-1, 3)  # (K, 3)

        b, n, _ = batch.frac_coords.shape
        n_species = len(self.species)
        grid = torch.zeros(b, n_species, int(dims.prod()), dtype=torch.float64, device=device)
        frac = torch.remainder(batch.frac_coords.double(), 1.0)  # (B, N, 3)
        base = torch.round(frac * dims)  # (B, N, 3) nearest grid point
        bi, ai = torch.nonzero(batch.mask, as_tuple=True)
        for chunk in torch.split(torch.arange(len(bi), device=device), 4096):
            cb, ca = bi[chunk], ai[chunk]
            points = base[cb, ca][:, None, :] + window[None]  # (M, K, 3) grid coordinates
            dfrac = points / dims - frac[cb, ca][:, None, :]  # (M, K, 3)
            cart = torch.einsum("mki,mij->mkj", dfrac, cell[cb])
            value = torch.exp(-(cart * cart).sum(-1) / (2 * self.sigma**2))  # (M, K)
            idx = torch.remainder(points, dims).long()
            flat = (idx[..., 0] * grid_shape[1] + idx[..., 1]) * grid_shape[2] + idx[..., 2]  # (M, K)
            target = (cb * n_species + channel[cb, ca])[:, None].expand_as(flat)
            grid.view(-1, grid.shape[-1]).index_put_(
                (target.reshape(-1), flat.reshape(-1)), value.reshape(-1), accumulate=True
            )
        return grid.float().view(b, n_species, *grid_shape)

    def _check_grid(self, batch: StructureBatch, cell: torch.Tensor, dims: torch.Tensor) -> None:
        """Refuse grids where a peak could be missed or two peaks could merge."""
        edges = cell / dims[None, :, None]  # (B, 3, 3) voxel edge vectors
        signs = torch.tensor([[1, 1, 1], [1, 1, -1], [1, -1, 1], [1, -1, -1]], dtype=cell.dtype, device=cell.device)
        diagonals = torch.linalg.norm(torch.einsum("sk,bkj->bsj", signs, edges), dim=-1)  # (B, 4)
        centre_gap = diagonals.min(dim=1).values / 2  # distance from a voxel centre to its nearest corner
        worst_peak = torch.exp(-(centre_gap**2) / (2 * self.sigma**2))
        if (worst_peak <= self.threshold).any():
            raise EncodingError(
                f"grid too coarse for sigma={self.sigma} Å: an atom between grid points would peak below the "
                f"threshold {self.threshold}; use a finer grid or a larger sigma"
            )
        frac = torch.remainder(batch.frac_coords.double(), 1.0)
        n = frac.shape[1]
        eye = torch.eye(n, dtype=torch.bool, device=frac.device)
        chunk = max(1, 4_000_000 // max(1, n * n))  # structures per pairwise block (bounded memory)
        for start in range(0, len(batch), chunk):
            f = frac[start : start + chunk]  # (b, N, 3)
            m = batch.mask[start : start + chunk]
            valid = m[:, :, None] & m[:, None, :] & ~eye  # (b, N, N)
            d = f[:, :, None, :] - f[:, None, :, :]
            d = d - torch.round(d)  # minimum image in fractional space, (b, N, N, 3)
            cheb = (d.abs() * dims).amax(-1)
            dist = torch.linalg.norm(torch.einsum("bnmi,bij->bnmj", d, cell[start : start + chunk]), dim=-1)
            close = ((cheb < 2.0) & valid).flatten(1).any(1)
            if close.any():
                i = start + int(torch.nonzero(close)[0])
                raise EncodingError(f"grid too coarse: two atoms lie within one voxel of each other in structure {i}")
            merged = ((dist < _MERGE_SIGMAS * self.sigma) & valid).flatten(1).any(1)
            if merged.any():
                i = start + int(torch.nonzero(merged)[0])
                raise EncodingError(
                    f"sigma={self.sigma} Å too wide: atoms closer than {_MERGE_SIGMAS}σ in structure {i} would merge"
                )

    # ----------------------------------------------------------------------------------------------
    def decode(self, grids: torch.Tensor, cell: torch.Tensor) -> StructureBatch:
        # grids: (B, S, D, H, W); cell: (B, 3, 3)
        b, n_species = grids.shape[:2]
        dims = torch.as_tensor(grids.shape[2:], device=grids.device, dtype=torch.float64)
        density = grids.double()
        padded = F.pad(density, (1, 1, 1, 1, 1, 1), mode="circular")
        local_max = F.max_pool3d(padded, kernel_size=3, stride=1)  # (B, S, D, H, W)
        peaks = (density >= local_max) & (density > self.threshold)
        bi, si, xi, yi, zi = torch.nonzero(peaks, as_tuple=True)
        center = torch.stack([xi, yi, zi], dim=-1)  # (M, 3)
        offs = self._offsets.to(grids.device)
        neigh = torch.remainder(center[:, None, :] + offs[None].long(), dims.long())  # (M, 27, 3)
        values = density[bi[:, None], si[:, None], neigh[..., 0], neigh[..., 1], neigh[..., 2]]  # (M, 27)
        coef = torch.log(values.clamp_min(1e-12)) @ self._pinv.to(grids.device).T  # (M, 10)
        grad = coef[:, 1:4]
        hess = torch.stack(
            [
                torch.stack([2 * coef[:, 4], coef[:, 7], coef[:, 8]], -1),
                torch.stack([coef[:, 7], 2 * coef[:, 5], coef[:, 9]], -1),
                torch.stack([coef[:, 8], coef[:, 9], 2 * coef[:, 6]], -1),
            ],
            dim=-2,
        )  # (M, 3, 3)
        delta = -torch.linalg.solve(hess, grad[..., None])[..., 0] if len(bi) else grad
        delta = torch.nan_to_num(delta).clamp(-1.0, 1.0)
        frac_all = torch.remainder((center.double() + delta) / dims, 1.0)

        counts = torch.bincount(bi, minlength=b)
        n_max = max(int(counts.max()) if b else 0, 1)
        slot = torch.arange(len(bi), device=grids.device) - torch.repeat_interleave(
            torch.cumsum(counts, 0) - counts, counts
        )
        frac = torch.zeros(b, n_max, 3, dtype=torch.float64, device=grids.device)
        numbers = torch.zeros(b, n_max, dtype=torch.long, device=grids.device)
        frac[bi, slot] = frac_all
        numbers[bi, slot] = torch.as_tensor(self.species, device=grids.device)[si]
        mask = torch.arange(n_max, device=grids.device)[None, :] < counts[:, None]
        return StructureBatch(frac.to(cell.dtype), numbers, mask, cell)
