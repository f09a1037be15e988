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

import math
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from lightning_gcd.diffusion import GaussianDiffusion
from lightning_gcd.errors import GcdError
from lightning_gcd.models.base import Batch, DiffusionModule
from lightning_gcd.nets.unet3d import PeriodicUNet3d
from lightning_gcd.representations import VoxelEncoding, make_encoding
from lightning_gcd.samplers import (
    ClassifierFreeGuidance,
    KnownValues,
    PosteriorGuidance,
    Restarts,
    SamplingHook,
    VPPosteriorGuidance,
    vp_sampler,
)
from lightning_gcd.structures import StructureBatch


class GrandCanonicalDiffusion(DiffusionModule):
    """The grand canonical voxel diffusion model.

    Args:
        base_channels, channel_mults, num_res_blocks, attention, dropout: the periodic U-Net.
        prediction: "x0" (default; the GCDM probe found ε-prediction creates hundreds of false atoms early
            in sampling), "eps" or "v".
        schedule: "cosine" or "linear" VP schedule over ``timesteps`` steps.
        offset_weight: loss weight of the offset channels relative to occupancy.
        offset_prediction: what the network predicts for the offset channels (default: ``prediction``).
            ``"v"`` with x0 for occupancy: v's implicit skip connection (x0 = sqrt(ā) x_t - sqrt(1-ā) v)
            makes the identity the default at low noise, so the atoms keep their own displacements
            (with x0 everywhere a briefly trained network outputs ideal offsets there and the samples lose
            the thermal spread). In the crystal quick profile the spread came back but the atom count
            suffered, so it is off by default (``experiments/crystals/RESULTS.md``, History: offset
            parametrisation).
            ``"blend"`` (below) keeps the spread without that cost and is what the crystal configs use.
        offset_sigma_data: σ_d of ``offset_prediction: blend`` (``GaussianDiffusion``) in Å: the offsets' x0
            is ``c x_t/sqrt(ā) + (1 - c) F`` with ``c = σ_d²/(σ² + σ_d²)``: where F is the atom's ideal site
            and its thermal displacement is Gaussian of width σ_d, the exact posterior mean, so a network
            that has learned the lattice (what x0-prediction learns first) still returns the atoms' own
            thermal scatter. Converted to each offset channel's model units with the training voxel spacing
            along its axis (a voxel spans 2 units); the data's thermal σ per component is the natural value.
        loss_space: ``"prediction"`` (default) or ``"x0"``: compare the implied x0 with the clean grid in
            the loss whatever the network predicts (see ``GaussianDiffusion``). With ``offset_prediction:
            v`` this keeps v's identity at low noise for the offsets without v's loss weighting, whose large
            targets at high noise (v ≈ ε there, in every voxel) outweigh the occupancy channels.
        self_condition: give the U-Net its own previous clean-grid estimate as extra input channels
            (``GaussianDiffusion``'s self-conditioning): each sampling step refines which voxels hold atoms
            instead of deciding afresh. Costs one extra no-gradient forward pass on half the training batches.
        geometry_condition: tell the U-Net each grid's voxel spacing (Å per voxel along each axis, as a
            standardised log; never dropped by classifier-free guidance). Where one grid serves cells of
            several sizes (cells of 1.5-3.5 g/cm³ on one 16³ grid) the voxels alone do not say how long a
            bond is. Where it was measured it gave a closer g(r) but fewer atoms and a bonding that no longer
            follows the cell's size, so it is off by default (``experiments/amorphous_carbon/RESULTS.md``,
            History: geometry condition). With cells of one size the input is constant.
        sample_restarts, sample_restart_t: restart sampling (``GaussianDiffusion.sample``'s ``restarts``):
            after the chain, take the sample back to noise level ``sample_restart_t`` (a fraction of the
            training steps, 0-1) and run the chain's steps below it again, ``sample_restarts`` times. The
            attributes of the same names switch it on a loaded model.
        input_perturbation: γ of DDPM-IP (``GaussianDiffusion``; Ning et al. 2023): training inputs are
            noised with ε + γξ while the target keeps ε, a training-side remedy for exposure bias (the
            sampler's own trajectory drifting off the training distribution, where a prior loses
            atoms). 0 (default) is off; the paper's value is 0.1.
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
        offset_prediction: Literal["x0", "eps", "v", "blend"] | None = None,
        offset_sigma_data: float = 0.05,
        loss_space: Literal["prediction", "x0"] = "prediction",
        self_condition: bool = False,
        geometry_condition: bool = False,
        sample_restarts: int = 0,
        sample_restart_t: float = 0.3,
        input_perturbation: float = 0.0,
        **kwargs: Any,
    ) -> None:
        self.diffusion = GaussianDiffusion(
            prediction=prediction,
            schedule=schedule,
            T=timesteps,
            loss_space=loss_space,
            self_condition=self_condition,
            self_condition_clip=(-1.0, 1.0),
            input_perturbation=input_perturbation,
        )
        self.encoding: VoxelEncoding | None = None
        super().__init__(**kwargs)
        self.save_hyperparameters()
        if sample_restarts < 0 or not 0.0 < sample_restart_t < 1.0:
            raise GcdError(
                f"sample_restarts must be >= 0 and sample_restart_t in (0, 1), got {sample_restarts}, "
                f"{sample_restart_t}"
            )
        self.sample_restarts = int(sample_restarts)
        self.sample_restart_t = float(sample_restart_t)

    # ------------------------------------------------------------------------------------------------
    def data_info_from(self, datamodule: Any) -> dict[str, Any]:
        if datamodule.view != "voxel":
            raise GcdError("GrandCanonicalDiffusion needs data.view: voxel")
        info = super().data_info_from(datamodule)
        reference_cell = np.asarray(info["reference_cell"])
        info.update(
            {
                "encoding": datamodule.encoding_name,
                "encoding_options": dict(datamodule.encoding_options),
                "grid_shape": list(datamodule.grid_shape),
                "spacing": (np.linalg.norm(reference_cell, axis=1) / np.asarray(datamodule.grid_shape)).tolist(),
                # voxels per atom of the training grids: the grid of an n-atom sample (``grid_for_cell``), right
                # also where the training cells differ in size but share one grid (cells of several densities)
                "voxels_per_atom": float(np.prod(datamodule.grid_shape)) / info["n_atoms_mean"],
            }
        )
        # log voxel spacing (Å) over the training cells: the scale of ``geometry_features``
        lengths = np.array([np.linalg.norm(a.cell[:], axis=1) for a in datamodule.reference_atoms("train", limit=256)])
        log_spacing = np.log(lengths / np.asarray(datamodule.grid_shape, dtype=np.float64))  # (S, 3)
        info["log_spacing_mean"] = float(log_spacing.mean())
        info["log_spacing_std"] = float(log_spacing.std())
        return info

    def geometry_features(self, cell: torch.Tensor, grid_shape: Sequence[int]) -> torch.Tensor:
        """(B,3,3) cells (Å) sampled on one grid -> (B,3) the U-Net's geometry input: log voxel spacing per
        axis, standardised over the training cells (a spread below 1 % counts as none: one cell size)."""
        spacing = torch.linalg.norm(cell.double(), dim=-1) / torch.as_tensor(
            grid_shape, dtype=torch.float64, device=cell.device
        )  # (B,3) Å
        scale = max(float(self.info["log_spacing_std"]), 0.01)
        return ((spacing.log() - float(self.info["log_spacing_mean"])) / scale).float()

    def denoiser(self, cell: torch.Tensor, grid_shape: Sequence[int]) -> Any:
        """The U-Net as the diffusion's ``model(x_t, t, cond, keep)`` for these cells (B,3,3) on this grid:
        with ``geometry_condition`` it is also told their voxel spacing."""
        if not self.hparams.get("geometry_condition"):
            return self.network
        geometry = self.geometry_features(cell, grid_shape)  # (B,3)

        def model(
            x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None, keep: torch.Tensor | None = None
        ) -> torch.Tensor:
            # the classifier-free guidance branch stacks the batch twice: repeat the geometry to match
            repeats, rest = divmod(x.shape[0], geometry.shape[0])
            assert rest == 0, f"batch {x.shape[0]} is not a multiple of the {geometry.shape[0]} cells' geometry"
            return self.network(x, t, cond, keep, geometry=geometry.repeat(repeats, 1))

        return model

    def build_network(self, info: dict[str, Any]) -> nn.Module:
        self.encoding = make_encoding(info["encoding"], info["species"], **info.get("encoding_options", {}))
        hp = self.hparams
        if hp.get("offset_prediction") and info["encoding"] != "occupancy":
            raise GcdError(
                "offset_prediction applies to the occupancy encoding (it has offset channels); "
                f"this dataset view uses {info['encoding']!r}"
            )
        if hp.get("offset_prediction"):
            n_occ = len(info["species"])
            self.diffusion.set_channel_predictions(
                [hp.prediction] * n_occ + [hp.offset_prediction] * (self.encoding.n_channels - n_occ)
            )
            if hp.offset_prediction == "blend":  # Å -> model units per axis (a voxel spans 2)
                sigma = float(hp.get("offset_sigma_data", 0.05))
                if not sigma > 0:
                    raise GcdError(f"offset_sigma_data must be positive (Å), got {sigma}")
                self.diffusion.blend_sigma_data = tuple(
                    [1.0] * n_occ + [2.0 * sigma / float(s) for s in info["spacing"]]
                )
        return PeriodicUNet3d(
            in_channels=self.encoding.n_channels * (2 if hp.get("self_condition") else 1),
            out_channels=self.encoding.n_channels,
            base_channels=hp.base_channels,
            channel_mults=tuple(hp.channel_mults),
            num_res_blocks=hp.num_res_blocks,
            attention=hp.attention,
            cond_dim=info.get("cond_dim", 0),
            cond_mean=info.get("cond_mean"),
            cond_std=info.get("cond_std"),
            geometry_dim=3 if hp.get("geometry_condition") else 0,
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
        w[:, self._n_occupancy :] = self.hparams.offset_weight
        return w

    def diffusion_loss(self, batch: Batch, fixed_noise: bool = False) -> torch.Tensor:
        x0 = self.to_model_space(batch["grid"])
        t_index = noise = None
        if fixed_noise:
            u, noise = self.structure_noise(batch, x0.shape[1:])
            t_index = (u * self.diffusion.T).long().clamp(max=self.diffusion.T - 1)
        model = self.denoiser(batch["cell"], x0.shape[2:])
        return self.diffusion.training_loss(
            model,
            x0,
            cond=batch.get("cond"),
            cond_drop_prob=0.0 if fixed_noise else self.hparams.cond_drop_prob,
            weights=self._channel_weights(x0),
            t_index=t_index,
            noise=noise,
        )

    # ------------------------------------------------------------------------------------------------
    def soft_atoms(
        self, x0: torch.Tensor, cell: torch.Tensor, min_weight: float = 0.1, max_ratio: float = 1.5
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Differentiable decoding of model-space grids for diffusion posterior sampling.

        Every voxel whose occupancy exceeds ``min_weight`` is a candidate atom at voxel corner + offset
        (the decoder's position) weighted by its occupancy in [0, 1]; the species is the argmax channel.
        Where the occupancies are 0 or 1 this is exactly the hard decoding (a posterior loss that weights
        atoms by ``weights`` does not see weight-0 atoms); in between, gradients reach both the offsets (atoms
        move) and the occupancies (atoms appear and vanish). To keep the neighbour graph small (every
        voxel of a 4 Å sphere is ~10³ edges) only the ``max_ratio`` × (training number density × volume)
        most occupied voxels above ``min_weight`` are candidates; the others get no gradient at that step.

        Returns ``(frac (B,M,3), numbers (B,M), mask (B,M), cell (B,3,3), weights (B,M))``.
        """
        if self.info["encoding"] != "occupancy":
            raise GcdError("diffusion posterior sampling of the voxel model needs the occupancy encoding")
        s = self._n_occupancy
        b, dims = x0.shape[0], x0.shape[2:]
        occupancy = ((x0[:, :s] + 1.0) / 2.0).clamp(0.0, 1.0).flatten(2)  # (B, S, V)
        weight, kind = occupancy.max(dim=1)  # (B, V)
        offsets = ((x0[:, s : s + 3] + 1.0) / 2.0).clamp(0.0, 1.0).flatten(2).transpose(1, 2)  # (B, V, 3)
        grid = torch.as_tensor(dims, device=x0.device, dtype=x0.dtype)
        index = torch.stack(
            torch.meshgrid(*[torch.arange(d, device=x0.device, dtype=x0.dtype) for d in dims], indexing="ij"), dim=-1
        ).reshape(-1, 3)  # (V, 3), C order as flatten
        frac = (index[None] + offsets) / grid  # (B, V, 3)
        volume = torch.linalg.det(cell.double()).abs().max()
        m = max(1, min(weight.shape[1], int(math.ceil(max_ratio * self.info["number_density"] * float(volume)))))
        top, order = torch.topk(weight.detach(), m, dim=1)  # the most occupied voxels first
        mask = top > min_weight
        species = torch.as_tensor(self.info["species"], device=x0.device)
        numbers = torch.where(mask, species[torch.gather(kind, 1, order)], torch.zeros_like(order))
        frac = torch.gather(frac, 1, order[..., None].expand(b, m, 3)) * mask[..., None].to(x0.dtype)
        weights = torch.gather(weight, 1, order) * mask.to(x0.dtype)
        return frac, numbers, mask, cell, weights

    @property
    def restart_t_index(self) -> int:
        """The step index restart sampling goes back to (``sample_restart_t`` of the training steps)."""
        return int(round(self.sample_restart_t * (self.diffusion.T - 1)))

    def sample_evaluations(self, steps: int | None = None, sampler: str | None = None) -> int:
        """U-Net calls per sample with the current sampler settings (restarts included)."""
        _, steps = self.sampler_choice(sampler, steps)
        return self.diffusion.network_evaluations(
            steps, restarts=self.sample_restarts, restart_t_index=self.restart_t_index
        )

    def grid_for_cell(self, cell: torch.Tensor, n_atoms: int | None = None) -> tuple[int, int, int]:
        """Voxel counts of a cell, rounded to the U-Net's downsampling factor.

        Without ``n_atoms``: the training spacing (Å per voxel along each axis). With ``n_atoms``: as many
        voxels per atom as the training grids had (``voxels_per_atom``), shared among the axes in proportion
        to the training spacing, so that 8× the atoms at the same density get twice the voxels per axis.
        For training cells of one size the two agree; where the cells differ in size but share one grid (cells
        of several densities: the voxel spacing in Å follows the density) only the second is right.
        """
        factor = self.net.downsampling_factor
        lengths = torch.linalg.norm(cell.double(), dim=-1).cpu().numpy()  # (3,)
        spacing = np.asarray(self.info["spacing"], dtype=np.float64)
        if n_atoms is not None and self.info.get("voxels_per_atom"):
            voxels = float(n_atoms) * float(self.info["voxels_per_atom"])
            spacing = spacing * (float(np.prod(lengths / spacing)) / voxels) ** (1.0 / 3.0)
        return tuple(
            int(max(factor, round(length / s / factor) * factor)) for length, s in zip(lengths, spacing, strict=True)
        )  # type: ignore[return-value]

    def sampling_bytes(self, template: Batch, batch_size: int) -> int:
        """A low estimate of the memory (bytes) that sampling ``batch_size`` structures like the template's
        largest row at once needs.

        float32, per voxel of the largest grid, times the batch: the sampler's state (about ten grids of
        the encoding's channels: x_t, x0, eps, fresh noise, the previous step's x0 ...) and the U-Net's live
        activations without gradients (each level's skip tensors plus eight working tensors of its width; a
        level has 1/8 of the voxels of the one above). Attention is not counted (PyTorch's fused kernels
        need no voxels² matrix), nor guidance's doubled batch: a grid refused by this estimate cannot fit.
        Measured on the smoke model (8 channels, 64³, CPU): 169 floats per voxel and structure in peak
        resident memory against 140 estimated.
        """
        cell = template["cell"]
        n_atoms = template["n_atoms"].tolist() if "n_atoms" in template else [None] * len(cell)
        voxels = max(math.prod(self.grid_for_cell(c, n)) for c, n in zip(cell, n_atoms, strict=True))
        hp = self.hparams
        floats = 10.0 * self.encoding.n_channels
        for level, mult in enumerate(hp.channel_mults):
            floats += hp.base_channels * mult * (hp.num_res_blocks + 1 + 8) / 8**level
        return int(4 * floats * voxels * int(batch_size))

    def generate(
        self,
        template: Batch,
        steps: int | None = None,
        sampler: str | None = None,
        guidance_scale: float | None = None,
        generator: torch.Generator | None = None,
        progress: bool = False,
        posterior: PosteriorGuidance | None = None,
    ) -> StructureBatch:
        hp = self.hparams
        cell = template["cell"]
        n_atoms = template["n_atoms"].tolist() if "n_atoms" in template else [None] * len(cell)
        grids = {self.grid_for_cell(c, n) for c, n in zip(cell, n_atoms, strict=True)}
        if len(grids) != 1:
            raise GcdError(f"one sampling batch must share one grid; these cells give grids {sorted(grids)}")
        grid = grids.pop()
        cond = template.get("cond") if self.info.get("cond_dim", 0) else None
        sampler, steps = self.sampler_choice(sampler, steps)
        loss = None
        if posterior is not None:
            bound = posterior.bind(self.posterior_target(template))
            cell_f = cell.float()

            def loss(x0: torch.Tensor) -> torch.Tensor:
                return bound(*self.soft_atoms(x0, cell_f))

        hooks: list[SamplingHook] = []
        if loss is not None and posterior.scale > 0:
            hooks.append(VPPosteriorGuidance(loss, posterior.scale))
        if "inpaint_grid" in template:  # in-painting: voxels under inpaint_mask keep the template's values
            known = self.to_model_space(template["inpaint_grid"].float())
            if tuple(known.shape[2:]) != grid:
                raise GcdError(f"the in-painting grid {tuple(known.shape[2:])} is not this cell's sampling grid {grid}")
            hooks.append(KnownValues(known, template["inpaint_mask"].bool()))  # after the posterior: see sample()
        network = self.denoiser(cell, grid)
        if cond is not None:
            scale = hp.guidance_scale if guidance_scale is None else guidance_scale
            network = ClassifierFreeGuidance(network, cond, scale)
        chain = vp_sampler(sampler)
        if self.sample_restarts:
            chain = Restarts(chain, self.sample_restarts, self.restart_t_index)
        x = self.diffusion.sample(
            network,
            (len(cell), self.encoding.n_channels, *grid),
            sampler=chain,
            steps=steps,
            generator=generator,
            device=self.device,
            progress=progress,
            clip_x0=(-1.0, 1.0),
            hooks=hooks,
        )
        return self.encoding.decode(self.from_model_space(x), cell.float())
