"""Occupancy + offset encoding (the GCDM authors' encoder).

Each atom is assigned to the voxel that contains it. Channels: one occupancy channel per species (1 where
an atom of that species sits, 0 elsewhere), then the atom's three fractional offsets inside its voxel, in
[0, 1) (0 in empty voxels). Decoding keeps voxels whose largest occupancy passes ``threshold`` (0.5): an
atom of the argmax species at ``(voxel index + offset) / grid``. Because occupancy is continuous during
diffusion, atoms can appear and vanish while sampling: the "grand canonical" part.

Exact: decode(encode(x)) returns the same atoms, positions within float32 rounding (≪ 1e-4 Å).
Refuses (EncodingError) a grid so coarse that two atoms share a voxel.
"""

from __future__ import annotations

import torch

from lightning_gcd.errors import EncodingError
from lightning_gcd.representations.base import GridShape, VoxelEncoding, check_cells
from lightning_gcd.structures import StructureBatch


class OccupancyOffsetEncoding(VoxelEncoding):
    """Per-species occupancy channels + 3 fractional offset channels."""

    name = "occupancy"

    def __init__(self, species: list[int], threshold: float = 0.5) -> None:
        super().__init__(species)
        self.threshold = threshold

    @property
    def channels(self) -> list[str]:
        return [f"occupancy_Z{z}" for z in self.species] + ["offset_a", "offset_b", "offset_c"]

    def encode(self, batch: StructureBatch, grid_shape: GridShape) -> torch.Tensor:
        check_cells(batch.cell)
        b, n, _ = batch.frac_coords.shape
        device = batch.frac_coords.device
        n_species = len(self.species)
        dims = torch.as_tensor(grid_shape, device=device)
        voxels = int(dims.prod())
        scaled = torch.remainder(batch.frac_coords.double(), 1.0) * dims  # (B, N, 3) in voxel units
        index = scaled.floor().long().clamp(min=torch.zeros_like(dims), max=dims - 1)  # (B, N, 3)
        offset = (scaled - index).clamp(0.0, 1.0 - 1e-7)  # (B, N, 3) in [0, 1)
        flat = (index[..., 0] * grid_shape[1] + index[..., 1]) * grid_shape[2] + index[..., 2]  # (B, N)
        channel = self.species_channel(batch.numbers, batch.mask)  # (B, N)
        self._check_collisions(flat, batch.mask)

        grid = torch.zeros(b, n_species + 3, voxels, dtype=torch.float32, device=device)
        bi, ai = torch.nonzero(batch.mask, as_tuple=True)
        vox = flat[bi, ai]
        grid[bi, channel[bi, ai], vox] = 1.0
        for k in range(3):
            grid[bi, n_species + k, vox] = offset[bi, ai, k].float()
        return grid.view(b, n_species + 3, *grid_shape)

    @staticmethod
    def _check_collisions(flat: torch.Tensor, mask: torch.Tensor) -> None:
        """Raise if any two real atoms of one structure fall into the same voxel."""
        key = torch.where(mask, flat, -1 - torch.arange(flat.shape[1], device=flat.device)[None, :])
        sorted_key, _ = torch.sort(key, dim=1)
        same = (sorted_key[:, 1:] == sorted_key[:, :-1]) & (sorted_key[:, 1:] >= 0)
        if same.any():
            bad = torch.nonzero(same.any(dim=1)).flatten().tolist()
            raise EncodingError(
                f"grid too coarse: two atoms share a voxel in structures {bad[:5]}; use a finer grid (smaller spacing)"
            )

    def decode(self, grids: torch.Tensor, cell: torch.Tensor) -> StructureBatch:
        # grids: (B, C, D, H, W); cell: (B, 3, 3)
        b = grids.shape[0]
        n_species = len(self.species)
        dims = torch.as_tensor(grids.shape[2:], device=grids.device)
        occupancy = grids[:, :n_species].flatten(2)  # (B, S, V)
        offsets = grids[:, n_species : n_species + 3].flatten(2).double().clamp(0.0, 1.0 - 1e-7)  # (B, 3, V)
        best, channel = occupancy.max(dim=1)  # (B, V)
        present = best > self.threshold  # (B, V)
        counts = present.sum(dim=1)
        n_max = max(int(counts.max()) if b else 0, 1)
        frac = torch.zeros(b, n_max, 3, dtype=torch.float64, device=grids.device)
        numbers = torch.zeros(b, n_max, dtype=torch.long, device=grids.device)
        mask = torch.arange(n_max, device=grids.device)[None, :] < counts[:, None]
        bi, vi = torch.nonzero(present, as_tuple=True)  # ordered by structure, then voxel
        slot = torch.arange(len(bi), device=grids.device) - torch.repeat_interleave(
            torch.cumsum(counts, 0) - counts, counts
        )
        index = torch.stack(
            [vi // (dims[1] * dims[2]), (vi // dims[2]) % dims[1], vi % dims[2]], dim=-1
        ).double()  # (M, 3)
        frac[bi, slot] = (index + offsets[bi, :, vi]) / dims.double()
        species = torch.as_tensor(self.species, device=grids.device)
        numbers[bi, slot] = species[channel[bi, vi]]
        return StructureBatch(frac.to(cell.dtype), numbers, mask, cell)
