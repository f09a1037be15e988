"""``TorusParticleDiffusion``: the fixed-count particle model in DiffCSP's form, on the shared base module.

Atoms are a fixed-count point cloud in a fixed periodic cell, as for ``ParticleDiffusion``, but the
diffusion runs on fractional coordinates (the flat torus): wrapped-normal noise on a geometric schedule in
fractional units, a normalised score target, a network over all atom pairs in the cell with Fourier
features of fractional differences (or a radius graph), and DiffCSP's predictor–corrector sampler or
Euler–Maruyama (``lightning_gcd.diffusion.torus``, ``lightning_gcd.nets.fourier_pairs``,
``lightning_gcd.samplers``). Switch to it from the Cartesian model with the config's ``model.class_path``;
the data (``data.view: particle``) is the same.

Classifier-free guidance and in-painting (``inpaint_frac``/``inpaint_mask``) work as for
``ParticleDiffusion``. Diffusion posterior guidance is not implemented for this model.
"""

from __future__ import annotations

import functools
from typing import Any, Literal

import torch
from torch import nn

from lightning_gcd.diffusion.torus import TorusDiffusion
from lightning_gcd.errors import GcdError
from lightning_gcd.models.base import Batch, DiffusionModule
from lightning_gcd.models.chunked_loss import loss_in_chunks
from lightning_gcd.models.particle import require_particle_view, with_fixed_count
from lightning_gcd.nets.fourier_pairs import FourierPairNet, block_rows, pair_block_size
from lightning_gcd.samplers import KnownAtoms, PosteriorGuidance, classifier_free_prediction, torus_sampler
from lightning_gcd.structures import StructureBatch

__all__ = ["TorusParticleDiffusion"]


class TorusParticleDiffusion(DiffusionModule):
    """The torus particle model.

    Args:
        hidden, layers, frequencies: the pair network (width, residual rounds, Fourier frequencies per axis).
        graph: ``"all_pairs"`` (DiffCSP; every pair in the cell, tied to the training cell) or ``"radius"``
            (periodic pairs within ``cutoff`` Å; transfers to other cells of the same density, e.g.
            ``gcd sample --supercell 2 2 2``, with ``atom_scaled_sigma``).
        cutoff, num_rbf, avg_neighbors: the radius graph (``graph="radius"``).
        sigma_min, sigma_max: the geometric noise schedule in fractional units (DiffCSP 0.005, 0.5).
        atom_scaled_sigma: scale sigma by ``(N_train / N)^(1/3)`` per structure (MatterGen), so that a larger
            cell at the same density gets the same Cartesian noise.
        step_lr: the Langevin step of the predictor–corrector, ``step_lr (σ/σ_min)²`` (DiffCSP 1e-5).
        **kwargs: the shared options of ``DiffusionModule``; its ``sampler`` here is "pc" or "em" and
            ``sample_steps`` the number of noise levels.
    """

    default_sampler = "pc"
    default_sample_steps = 1000

    def __init__(
        self,
        hidden: int = 128,
        layers: int = 4,
        frequencies: int = 32,
        graph: Literal["all_pairs", "radius"] = "all_pairs",
        cutoff: float = 5.0,
        num_rbf: int = 32,
        avg_neighbors: float = 30.0,
        sigma_min: float = 0.005,
        sigma_max: float = 0.5,
        atom_scaled_sigma: bool = False,
        step_lr: float = 1e-5,
        **kwargs: Any,
    ) -> None:
        TorusDiffusion(sigma_min=sigma_min, sigma_max=sigma_max)  # fail on a bad schedule before anything else
        super().__init__(**kwargs)
        self.save_hyperparameters()

    @property
    def diffusion(self) -> TorusDiffusion:
        hp = self.hparams
        return TorusDiffusion(
            sigma_min=hp.sigma_min,
            sigma_max=hp.sigma_max,
            atom_scaled_sigma=hp.atom_scaled_sigma,
            n_reference=self.info["n_atoms_mean"] if hp.atom_scaled_sigma else None,
        )

    def data_info_from(self, datamodule: Any) -> dict[str, Any]:
        require_particle_view(datamodule, type(self).__name__)
        return super().data_info_from(datamodule)

    def build_network(self, info: dict[str, Any]) -> nn.Module:
        hp = self.hparams
        return FourierPairNet(
            hidden=hp.hidden,
            layers=hp.layers,
            frequencies=hp.frequencies,
            graph=hp.graph,
            cutoff=hp.cutoff,
            num_rbf=hp.num_rbf,
            avg_neighbors=hp.avg_neighbors,
            cond_dim=info.get("cond_dim", 0),
            cond_mean=info.get("cond_mean"),
            cond_std=info.get("cond_std"),
        )

    def diffusion_loss(self, batch: Batch, fixed_noise: bool = False) -> torch.Tensor:
        frac = batch["frac_coords"]
        t = eps = keep = None
        cond = batch.get("cond")
        if fixed_noise:
            t, eps = self.structure_noise(batch, frac.shape[1:])
            t, eps = t.to(frac.dtype), eps.to(frac.dtype)
        elif cond is not None:
            keep = torch.rand(len(frac), device=frac.device) >= self.hparams.cond_drop_prob
        return self.diffusion.training_loss(
            self.network, frac, batch["numbers"], batch["mask"], batch["cell"], cond=cond, cond_keep=keep, t=t, eps=eps
        )

    def training_loss(self, batch: Batch) -> torch.Tensor:
        """The diffusion loss; on a CPU, an all-pairs batch too large for the cache is trained in chunks of
        ``pair_block_size`` structures, each chunk's forward and backward pass in turn (the same loss and
        gradients, each chunk weighted by its share of the batch's atoms, as the loss averages over atoms)."""
        frac, mask = batch["frac_coords"], batch["mask"]
        b, n = frac.shape[:2]
        on_cpu = frac.device.type == "cpu"
        chunk = pair_block_size(b, n, self.hparams.hidden, on_cpu) if self.hparams.graph == "all_pairs" else b
        if chunk >= b or not torch.is_grad_enabled():
            return self.diffusion_loss(batch)
        atoms = mask.sum().clamp(min=1)
        parts = [{k: v[r] if v.dim() and len(v) == b else v for k, v in batch.items()} for r in block_rows(b, chunk)]
        return loss_in_chunks(
            list(self.net.parameters()),
            ((functools.partial(self.diffusion_loss, part), part["mask"].sum() / atoms) for part in parts),
        )

    def sample_template(
        self,
        n: int,
        supercell=(1, 1, 1),
        cond: torch.Tensor | None = None,
        target: torch.Tensor | None = None,
        cell: Any = None,
        n_atoms: int | None = None,
    ) -> Batch:
        """Cells as the base class; atom count ``n_atoms`` (default: training number density × volume),
        species by the training composition. An all-pairs network samples only cells of its training shape."""
        template = super().sample_template(n, supercell, cond, target, cell=cell, n_atoms=n_atoms)
        template = with_fixed_count(template, self.info, n_atoms)
        if self.hparams.graph == "all_pairs":
            reference = torch.as_tensor(self.info["reference_cell"], dtype=torch.float32)
            if not torch.allclose(template["cell"][0], reference, rtol=0.05, atol=0.05):
                raise GcdError(
                    "this torus model's all-pairs Fourier features are tied to its training cell; "
                    "train it with graph: radius (and atom_scaled_sigma: true) to sample other cells"
                )
        return template

    def sample_evaluations(self, steps: int | None = None, sampler: str | None = None) -> int:
        """Network evaluations of one sampling run (a guidance scale other than 0 or 1 doubles each batch)."""
        sampler, steps = self.sampler_choice(sampler, steps)
        return torus_sampler(sampler, steps, self.hparams.step_lr).evaluations

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
        if posterior is not None:
            raise GcdError(
                "posterior guidance is not available for TorusParticleDiffusion; "
                "use lightning_gcd.models.particle.ParticleDiffusion for it"
            )
        return self._sample(template, None, 1.0, steps, sampler, guidance_scale, generator, progress)

    @torch.no_grad()
    def resample(
        self,
        structures: StructureBatch,
        start_time: float,
        steps: int | None = None,
        sampler: str | None = None,
        generator: torch.Generator | None = None,
    ) -> StructureBatch:
        """Noise ``structures`` to ``sigma(start_time)`` and run the sampler's remaining levels from there.

        Where a structure comes back from shows how far back in the anneal its atoms can still be sorted onto
        sites; ``start_time`` 1 is ordinary sampling. Uses the weights as they are (swap EMA in yourself)."""
        frac = structures.frac_coords.float()
        mask = structures.mask.bool()
        n = mask.sum(1)
        sigma = self.diffusion.sigma(torch.full(n.shape, float(start_time)), n)
        noise = (
            torch.randn(frac.shape, generator=generator, device=generator.device)
            if generator is not None
            else torch.randn(frac.shape)
        ).to(frac.device)
        start = (frac + sigma[:, None, None] * noise) * mask[..., None].float()
        template = {"cell": structures.cell.float(), "numbers": structures.numbers, "mask": mask}
        return self._sample(template, start, float(start_time), steps, sampler, 0.0, generator, False)

    @torch.no_grad()  # nothing here needs gradients; without it a direct generate() keeps every level's graph
    def _sample(
        self,
        template: Batch,
        start: torch.Tensor | None,
        start_time: float,
        steps: int | None,
        sampler: str | None,
        guidance_scale: float | None,
        generator: torch.Generator | None,
        progress: bool,
    ) -> StructureBatch:
        """The sampler from ``start`` (B, N, 3) at ``start_time`` (None: uniform positions at t = 1)."""
        if "numbers" not in template or "mask" not in template:
            raise GcdError("the particle model needs the atom count and species of each structure to sample")
        hp = self.hparams
        cell = template["cell"].float()
        numbers, mask = template["numbers"], template["mask"].bool()
        b, n = numbers.shape
        fmask = mask[..., None].float()
        cond = template.get("cond") if self.info.get("cond_dim", 0) else None
        scale = hp.guidance_scale if guidance_scale is None else guidance_scale
        sampler_name, steps = self.sampler_choice(sampler, steps)
        sampler_ = torus_sampler(sampler_name, steps, hp.step_lr)
        diffusion = self.diffusion

        def draw(uniform: bool = False) -> torch.Tensor:
            fn = torch.rand if uniform else torch.randn
            if generator is None:
                return fn((b, n, 3), device=cell.device) * fmask
            return fn((b, n, 3), generator=generator, device=generator.device).to(cell.device) * fmask

        known = None
        if template.get("inpaint_frac") is not None:
            if template.get("inpaint_mask") is None:
                raise GcdError("in-painting needs both inpaint_frac and inpaint_mask")
            known = KnownAtoms(template["inpaint_frac"].float(), template["inpaint_mask"].bool() & mask, draw)

        def score(frac: torch.Tensor, t: float, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            if known is not None:
                frac = known.impose(frac, sigma)
            tb = torch.full((b,), t, device=cell.device)
            pred = classifier_free_prediction(self.network, frac, numbers, mask, cell, tb, cond, scale)
            return frac, diffusion.score(pred, sigma) * fmask

        start = draw(uniform=True) if start is None else start.to(cell.device)
        frac = (
            sampler_.run(start, score, diffusion, mask.sum(1), draw, progress=progress, start_time=start_time) * fmask
        )
        if known is not None:
            frac = known.finish(frac) * fmask
        return StructureBatch(frac, numbers, mask, cell)
