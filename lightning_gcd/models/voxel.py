"""``GrandCanonicalDiffusion``: VP diffusion of voxel grids with a periodic 3D U-Net (the GCDM).

Grids from the DataModule are mapped to model space [-1, 1]: occupancy/density ``x -> 2x - 1``; offsets
``x -> 2x - 1`` where a voxel is occupied and 0 (the voxel centre) where it is empty, so the network is
not asked to predict meaningless offsets. Samples are mapped back and decoded by the encoding (occupancy:
voxels whose occupancy passes 0.5 become atoms at voxel corner + offset). The number of atoms is whatever
the sample decodes to: the grand canonical part.

Sampling at other sizes: the network is fully convolutional, so a larger cell is sampled on a larger grid
with the training voxel spacing (``template`` cells that are supercells of the training cell).
"""

from __future__ import annotations

from typing import Any, Literal, Sequence

import numpy as np
import torch
from torch import nn

from lightning_gcd.diffusion import GaussianDiffusion
from lightning_gcd.errors import GcdError
from lightning_gcd.models.base import Batch, DiffusionModule
from lightning_gcd.nets.unet3d import PeriodicUNet3d
from lightning_gcd.representations import VoxelEncoding, make_encoding
from lightning_gcd.structures import StructureBatch


class GrandCanonicalDiffusion(DiffusionModule):
    """The grand canonical voxel diffusion model.

    Args:
        base_channels, channel_mults, num_res_blocks, attention, dropout: the periodic U-Net.
        prediction: "x0" (default; the GCDM probe found ε-prediction creates hundreds of false atoms early
            in sampling), "eps" or "v".
        schedule: "cosine" or "linear" VP schedule over ``timesteps`` steps.
        offset_weight: loss weight of the offset channels relative to occupancy.
        **kwargs: the shared options of ``DiffusionModule`` (optimiser, EMA, validation sampling...).
    """

    default_sampler = "ddim"
    default_sample_steps = 50

    def __init__(
        self,
        base_channels: int = 32,
        channel_mults: Sequence[int] = (1, 2, 2),
        num_res_blocks: int = 1,
        attention: bool = True,
        dropout: float = 0.0,
        prediction: Literal["x0", "eps", "v"] = "x0",
        schedule: Literal["cosine", "linear"] = "cosine",
        timesteps: int = 1000,
        offset_weight: float = 1.0,
        **kwargs: Any,
    ) -> None:
        self.diffusion = GaussianDiffusion(prediction=prediction, schedule=schedule, T=timesteps)
        self.encoding: VoxelEncoding | None = None
        super().__init__(**kwargs)
        self.save_hyperparameters()

    # ------------------------------------------------------------------------------------------------
    def data_info_from(self, datamodule: Any) -> dict[str, Any]:
        if datamodule.view != "voxel":
            raise GcdError("GrandCanonicalDiffusion needs data.view: voxel")
        info = super().data_info_from(datamodule)
        reference_cell = np.asarray(info["reference_cell"])
        info.update({
            "encoding": datamodule.encoding_name,
            "encoding_options": dict(datamodule.encoding_options),
            "grid_shape": list(datamodule.grid_shape),
            "spacing": (np.linalg.norm(reference_cell, axis=1) / np.asarray(datamodule.grid_shape)).tolist(),
        })
        return info

    def build_network(self, info: dict[str, Any]) -> nn.Module:
        self.encoding = make_encoding(info["encoding"], info["species"], **info.get("encoding_options", {}))
        hp = self.hparams
        return PeriodicUNet3d(
            in_channels=self.encoding.n_channels,
            base_channels=hp.base_channels,
            channel_mults=tuple(hp.channel_mults),
            num_res_blocks=hp.num_res_blocks,
            attention=hp.attention,
            cond_dim=info.get("cond_dim", 0),
            dropout=hp.dropout,
        )

    # ------------------------------------------------------------------------------------------------
    @property
    def _n_occupancy(self) -> int:
        return len(self.info["species"])

    def to_model_space(self, grid: torch.Tensor) -> torch.Tensor:
        """(B, C, D, H, W) encoding grid -> [-1, 1] model space (see module docstring)."""
        x = grid * 2.0 - 1.0
        if self.info["encoding"] == "occupancy":
            s = self._n_occupancy
            occupied = grid[:, :s].amax(dim=1, keepdim=True) > 0.5
            x = torch.cat([x[:, :s], torch.where(occupied, x[:, s:], torch.zeros_like(x[:, s:]))], dim=1)
        return x

    def from_model_space(self, x: torch.Tensor) -> torch.Tensor:
        return ((x + 1.0) / 2.0).clamp(0.0, 1.0)

    def _channel_weights(self, x: torch.Tensor) -> torch.Tensor | None:
        if self.info["encoding"] != "occupancy" or self.hparams.offset_weight == 1.0:
            return None
        w = torch.ones(1, x.shape[1], 1, 1, 1, device=x.device, dtype=x.dtype)
        w[:, self._n_occupancy:] = self.hparams.offset_weight
        return w

    def diffusion_loss(self, batch: Batch, fixed_noise: bool = False) -> torch.Tensor:
        x0 = self.to_model_space(batch["grid"])
        t_index = noise = None
        if fixed_noise:
            u, noise = self.structure_noise(batch, x0.shape[1:])
            t_index = (u * self.diffusion.T).long().clamp(max=self.diffusion.T - 1)
        return self.diffusion.training_loss(self.network, x0, cond=batch.get("cond"),
                                            cond_drop_prob=0.0 if fixed_noise else self.hparams.cond_drop_prob,
                                            weights=self._channel_weights(x0), t_index=t_index, noise=noise)

    # ------------------------------------------------------------------------------------------------
    def grid_for_cell(self, cell: torch.Tensor) -> tuple[int, int, int]:
        """Voxel counts of a cell at the training spacing, rounded to the U-Net's downsampling factor."""
        factor = self.net.downsampling_factor
        lengths = torch.linalg.norm(cell.double(), dim=-1).cpu().numpy()  # (3,)
        spacing = np.asarray(self.info["spacing"])
        return tuple(int(max(factor, round(length / s / factor) * factor)) for length, s in zip(lengths, spacing))  # type: ignore[return-value]

    def generate(self, template: Batch, steps: int | None = None, sampler: str | None = None,
                 guidance_scale: float | None = None, generator: torch.Generator | None = None,
                 progress: bool = False) -> StructureBatch:
        hp = self.hparams
        cell = template["cell"]
        grids = {self.grid_for_cell(c) for c in cell}
        if len(grids) != 1:
            raise GcdError(f"one sampling batch must share one grid; these cells give grids {sorted(grids)}")
        grid = grids.pop()
        cond = template.get("cond") if self.info.get("cond_dim", 0) else None
        sampler, steps = self.sampler_choice(sampler, steps)
        known = known_mask = None
        if "inpaint_grid" in template:  # in-painting: voxels under inpaint_mask keep the template's values
            known = self.to_model_space(template["inpaint_grid"].float())
            known_mask = template["inpaint_mask"].bool()
            if tuple(known.shape[2:]) != grid:
                raise GcdError(f"the in-painting grid {tuple(known.shape[2:])} is not this cell's sampling grid {grid}")
        x = self.diffusion.sample(
            self.network,
            (len(cell), self.encoding.n_channels, *grid),
            sampler=sampler,
            steps=steps,
            cond=cond,
            guidance_scale=hp.guidance_scale if guidance_scale is None else guidance_scale,
            generator=generator,
            device=self.device,
            progress=progress,
            clip_x0=(-1.0, 1.0),
            known=known,
            known_mask=known_mask,
        )
        return self.encoding.decode(self.from_model_space(x), cell.float())
