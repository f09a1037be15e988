"""The LightningModule base shared by the voxel (GCDM) and particle diffusion models.

What it owns, identically for both models: the optimiser and LR schedule, EMA weights (kept in every
checkpoint, swapped in for validation and sampling), the training/validation loss logging, and the
sample-and-evaluate step at the end of validation: generate structures, decode them to a
``StructureBatch``, feed them to the structure metrics, log ``val/<metric>`` and keep the samples for
the callbacks (W&B tables, extxyz export). Subclasses differ only in representation, network and sampler:
they implement ``data_info_from``, ``build_network``, ``diffusion_loss`` and ``generate``.

It names no application: a validation metric that needs more than the structures is a trainer callback
implementing ``SampleMetric`` (``models.sample_metric``), and posterior guidance is a ``PosteriorGuidance``
(``samplers.dps``) passed to ``generate``/``sample``; the application packages supply both.
"""

from __future__ import annotations

import contextlib
import random
from abc import abstractmethod
from collections.abc import Sequence
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
from torch import nn
from torchmetrics import MeanMetric

from lightning_gcd.errors import GcdError
from lightning_gcd.models.ema import EMA
from lightning_gcd.models.optim import warmup_cosine
from lightning_gcd.models.sample_metric import SampleMetric
from lightning_gcd.samplers.dps import PosteriorGuidance
from lightning_gcd.structures import StructureBatch

Batch = dict[str, torch.Tensor]


class DiffusionModule(L.LightningModule):
    """Base of the diffusion models.

    Args:
        lr: peak learning rate of AdamW.
        weight_decay: AdamW weight decay.
        warmup_steps: linear warm-up steps.
        lr_schedule: "cosine" (decay to ``min_lr_ratio * lr`` over the run) or "constant" after warm-up.
        min_lr_ratio: final LR as a fraction of ``lr`` for the cosine schedule.
        lr_total_steps: length of the cosine schedule in optimiser steps (default: the trainer's estimated
            total, which changes with ``max_epochs``; fix it to extend a run without changing its schedule).
        ema_decay: EMA decay of the weights; 0 disables EMA.
        cond_drop_prob: probability of dropping the condition in training (classifier-free guidance).
        standardize_condition: the network standardises the condition with the training structures' mean
            and spread per component (stored in ``data_info``; see ``condition_statistics``), so that what
            differs between structures, not what they share, reaches it at unit scale.
        val_samples: structures generated (over all ranks) at the end of each sampled validation.
        sample_every_n_epochs: generate and evaluate every this many validation epochs (0: never).
        sample_steps: sampler steps at validation and the default of ``gcd sample`` (None: the model's
            ``default_sample_steps``).
        sampler: sampler used at validation and by default in ``gcd sample`` (model specific names;
            None: the model's ``default_sampler``).
        guidance_scale: classifier-free guidance scale at validation (1 = plain conditional).
        sample_seed: seed of the validation samples (rank r uses seed + r), so runs are comparable.
        metrics: options of ``StructureMetrics`` (``r_max``, ``n_bins``, ``tolerance``, ...); further metrics
            of the samples attach as callbacks (``SampleMetric``).
        compile: opt-in ``torch.compile`` of the network's forward (``compile_backend``); checkpoints keep
            the plain module's weights.
        matmul_precision: ``torch.set_float32_matmul_precision`` ("high" enables TF32 on Ampere+ GPUs).
        data_info: filled from the DataModule at the first ``setup`` and stored in checkpoints, so a
            checkpoint rebuilds its network without the dataset.
    """

    default_sampler: str = ""
    default_sample_steps: int = 50

    def __init__(
        self,
        lr: float = 2e-4,
        weight_decay: float = 0.0,
        warmup_steps: int = 100,
        lr_schedule: Literal["cosine", "constant"] = "cosine",
        min_lr_ratio: float = 0.1,
        lr_total_steps: int | None = None,
        ema_decay: float = 0.999,
        cond_drop_prob: float = 0.1,
        standardize_condition: bool = True,
        val_samples: int = 16,
        sample_every_n_epochs: int = 1,
        sample_steps: int | None = None,
        sampler: str | None = None,
        guidance_scale: float = 1.0,
        sample_seed: int = 0,
        metrics: dict[str, Any] | None = None,
        compile: bool = False,
        compile_backend: str = "inductor",
        matmul_precision: Literal["highest", "high", "medium"] | None = None,
        data_info: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net: nn.Module | None = None
        self.ema: EMA | None = None
        self.structure_metrics: nn.Module | None = None
        self.last_samples: StructureBatch | None = None
        self.last_metrics: dict[str, float] = {}
        self.last_curves: dict[str, Any] = {}
        self._val_templates: list[Batch] = []
        self._ema_context: Any = None
        # val/loss: the structure-weighted mean, synchronised exactly over ranks (Lightning's mean of a logged
        # tensor divides the ranks' summed batch sizes by the world size in integers: wrong when they differ)
        self.val_loss_mean = MeanMetric()
        if data_info is not None:
            self._build(data_info)

    # ------------------------------------------------------------------------------------------------
    # to implement
    def data_info_from(self, datamodule: Any) -> dict[str, Any]:
        """What the network and sampler need to know of the data (JSON-able: lists, numbers, strings).

        Subclasses extend this dict with their representation's needs.
        """
        datamodule.setup()
        train = datamodule.reference_atoms("train", limit=256)
        counts = [len(a) for a in train]
        volumes = [a.get_volume() for a in train]
        cell_densities = [len(a) / a.get_volume() for a in train]  # atoms / Å^3 per cell
        grid = datamodule.condition_grid() if hasattr(datamodule, "condition_grid") else None
        statistics = {}
        if datamodule.cond_dim and self.hparams.get("standardize_condition", False):
            mean, std = condition_statistics(datamodule.condition_values("train"))
            statistics = {"cond_mean": mean.tolist(), "cond_std": std.tolist()}
        return {
            **statistics,
            "condition_grid": grid,  # the abscissa of the condition's K components where the data give one, or None
            "species": list(datamodule.species),
            "conditions": list(datamodule.conditions),
            "cond_dim": int(datamodule.cond_dim),
            "reference_cell": np.asarray(train[0].cell[:]).tolist(),
            "n_atoms_max": int(datamodule.n_max),
            "number_density": float(np.sum(counts) / np.sum(volumes)),  # atoms / Å^3
            "n_atoms_mean": float(np.mean(counts)),
            "number_density_range": [float(min(cell_densities)), float(max(cell_densities))],  # atoms / Å^3, per cell
            "composition": {
                str(z): float(np.mean([np.mean(a.numbers == z) for a in train])) for z in datamodule.species
            },
        }

    @abstractmethod
    def build_network(self, info: dict[str, Any]) -> nn.Module:
        """The denoising network for this data."""

    @abstractmethod
    def diffusion_loss(self, batch: Batch, fixed_noise: bool = False) -> torch.Tensor:
        """Scalar training loss of one batch.

        ``fixed_noise=True`` (validation) draws each structure's diffusion time and noise from its dataset
        index (``structure_noise``), so the validation loss does not depend on batching or on the number of
        DDP ranks, and is comparable from one epoch to the next.
        """

    @abstractmethod
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
        """Generate one structure per row of ``template``.

        ``template`` carries ``cell`` (B,3,3) and optionally ``numbers``/``mask`` (B,N) (the particle model
        uses them as the atom count and species; the voxel model ignores them: its count is free),
        ``cond`` (B,K) and, with ``posterior`` (diffusion posterior sampling, ``samplers.dps``), the
        targets ``target`` (B,K) its loss compares the decoded structures with. In-painting: the voxel model
        takes ``inpaint_grid`` (B,C,D,H,W, encoding space) and ``inpaint_mask`` (bool, broadcastable; True =
        keep), the particle model ``inpaint_frac`` (B,N,3) and ``inpaint_mask`` (B,N) (True = fixed atom).
        """

    @staticmethod
    def posterior_target(template: Batch) -> torch.Tensor:
        """(B, K) the rows' targets of posterior guidance (``template["target"]``)."""
        if "target" not in template:
            raise GcdError("diffusion posterior sampling needs a target: template['target'] (sample_template(target=))")
        return template["target"].float()

    # ------------------------------------------------------------------------------------------------
    def _build(self, info: dict[str, Any]) -> None:
        self.net = self.build_network(info)
        self.ema = EMA(self.net, self.hparams.ema_decay) if self.hparams.ema_decay > 0 else None

    def setup(self, stage: str) -> None:
        if self.hparams.matmul_precision:
            torch.set_float32_matmul_precision(self.hparams.matmul_precision)
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if self.net is None:
            if datamodule is None:
                raise GcdError("the model needs a datamodule (data: in the config) to size its network")
            info = self.data_info_from(datamodule)
            self.hparams["data_info"] = info
            self._build(info)
        if datamodule is not None and self.structure_metrics is None and self.hparams.val_samples > 0:
            from lightning_gcd.metrics.phase_match import ideal_for_dataset
            from lightning_gcd.metrics.suite import StructureMetrics

            reference = datamodule.reference_atoms("val")
            options = dict(self.hparams.metrics or {})
            ideals = ideal_for_dataset(datamodule.path, strict=False)  # crystal datasets: the unrattled lattice
            if len(ideals) == 1 and "ideal" not in options:  # one phase: every sample targets it
                options["ideal"] = next(iter(ideals.values()))
            self.structure_metrics = StructureMetrics(reference, **options)

    def sampler_choice(self, sampler: str | None = None, steps: int | None = None) -> tuple[str, int]:
        """The sampler and step count to use: the call's, else the config's, else the model's defaults."""
        hp = self.hparams
        return (
            sampler or hp.sampler or self.default_sampler,
            int(steps or hp.sample_steps or self.default_sample_steps),
        )

    @property
    def info(self) -> dict[str, Any]:
        return self.hparams.data_info

    def network(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        assert self.net is not None, "network not built: call setup() or load a checkpoint"
        if self.hparams.compile:
            compiled = self.__dict__.get("_compiled_net")
            if compiled is None:  # kept outside the module tree, so state_dict keys stay those of self.net
                compiled = torch.compile(self.net, backend=self.hparams.compile_backend)
                self.__dict__["_compiled_net"] = compiled
            return compiled(*args, **kwargs)
        return self.net(*args, **kwargs)

    # ------------------------------------------------------------------------------------------------
    # training
    def training_loss(self, batch: Batch) -> torch.Tensor:
        """The loss of one training batch, a scalar; a model may compute it in chunks of structures
        (``lightning_gcd.models.chunked_loss``) where that trains faster."""
        return self.diffusion_loss(batch)

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        loss = self.training_loss(batch)
        self.log(
            "train/loss",
            loss,
            on_step=True,
            on_epoch=True,
            prog_bar=True,
            batch_size=len(batch["index"]),
            sync_dist=True,
        )
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Batch, batch_idx: int) -> None:
        if self.ema is not None:
            self.ema.update(self.net)

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        optimizer = torch.optim.AdamW(self.net.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
        if hp.lr_total_steps:
            total = int(hp.lr_total_steps)
        else:
            total = max(1, int(self.trainer.estimated_stepping_batches)) if self._trainer is not None else 1
        return warmup_cosine(optimizer, hp.warmup_steps, total, hp.min_lr_ratio, hp.lr_schedule)

    # ------------------------------------------------------------------------------------------------
    # validation: loss with EMA weights, then sample and evaluate
    def on_validation_epoch_start(self) -> None:
        self._val_templates = []
        if self.ema is not None:
            self._ema_context = self.ema.swapped_in(self.net)
            self._ema_context.__enter__()

    def structure_noise(self, batch: Batch, shape: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-structure (u (B,) uniform in [0, 1), noise (B, *shape) standard normal) seeded by ``batch["index"]``."""
        us, noises = [], []
        for index in batch["index"].tolist():
            generator = torch.Generator().manual_seed(int(self.hparams.sample_seed) * 1_000_003 + int(index))
            us.append(torch.rand((), generator=generator))
            noises.append(torch.randn(tuple(shape), generator=generator))
        device = batch["cell"].device
        return torch.stack(us).to(device), torch.stack(noises).to(device)

    def validation_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        loss = self.diffusion_loss(batch, fixed_noise=True)
        self.val_loss_mean.update(loss.detach(), weight=len(batch["index"]))
        self.log("val/loss", self.val_loss_mean, on_epoch=True, prog_bar=True, batch_size=len(batch["index"]))
        keep = {k: v for k, v in batch.items() if k in ("cell", "numbers", "mask", "cond", "index")}
        self._val_templates.append({k: v.detach() for k, v in keep.items()})
        return loss

    def on_validation_epoch_end(self) -> None:
        try:
            if self._should_sample():
                self._sample_and_evaluate()
        finally:
            if self._ema_context is not None:
                self._ema_context.__exit__(None, None, None)
                self._ema_context = None

    def _should_sample(self) -> bool:
        every = int(self.hparams.sample_every_n_epochs)
        if self.structure_metrics is None or every <= 0 or not self._val_templates:
            return False
        if self.trainer.sanity_checking:
            return False
        if self.trainer.state.fn != "fit":
            return True
        if self.trainer.should_stop and not _on_validation_schedule(self.trainer):
            return False  # the validation Lightning adds when training stops between scheduled ones
        return self.current_epoch % every == 0

    def _templates(self, n: int) -> Batch:
        """``n`` rows cycled from this rank's validation batches (their cells, counts, conditions)."""
        rows: dict[str, list[torch.Tensor]] = {}
        for batch in self._val_templates:
            for key, value in batch.items():
                rows.setdefault(key, []).append(value)
        cat = {
            key: torch.cat(values) if key not in ("numbers", "mask") else _pad_cat(values)
            for key, values in rows.items()
        }
        size = len(cat["cell"])
        pick = torch.arange(n, device=cat["cell"].device) % size
        return {key: value[pick] for key, value in cat.items()}

    @torch.no_grad()
    def _sample_and_evaluate(self) -> None:
        world, rank = self.trainer.world_size, self.trainer.global_rank
        # this rank's share of val_samples (the first val_samples % world ranks one more); at least one, so
        # that every rank takes part in the metrics' synchronisation
        n_local = max(1, int(self.hparams.val_samples) // world + int(rank < int(self.hparams.val_samples) % world))
        generator = torch.Generator(device=self.device).manual_seed(int(self.hparams.sample_seed) + rank)
        templates = self._templates(n_local)
        samples = self.generate(templates, generator=generator)
        metrics = self.structure_metrics
        metrics.reset()
        metrics.update(samples)
        values = metrics.compute()  # synchronised over ranks by torchmetrics
        self.last_metrics = {k: float(v) for k, v in values.items()}
        for metric in self.sample_metrics():
            self.last_metrics.update(metric.evaluate_samples(self, samples, templates))
        self.last_curves = metrics.curves() if hasattr(metrics, "curves") else {}
        self.last_samples = samples
        for name, value in self.last_metrics.items():  # NaN too (e.g. no matched sample): same names every time
            self.log(f"val/{name}", value, rank_zero_only=True, sync_dist=False)

    def sample_metrics(self) -> list[SampleMetric]:
        """The trainer's callbacks that score the validation samples (``SampleMetric``), in their order."""
        return [c for c in self.trainer.callbacks if isinstance(c, SampleMetric)]

    # ------------------------------------------------------------------------------------------------
    # checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Record the model class (so ``load_model`` rebuilds it without unpickling code) and the RNG states."""
        checkpoint["gcd_model_class"] = f"{type(self).__module__}.{type(self).__qualname__}"
        checkpoint["gcd_rng"] = rng_state()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep the RNG states to restore them when training starts (after the sanity check, which draws).

        A resumed run's network is the checkpoint's: where the data description saved with it differs from
        the one just read from the data (a grown dataset, a checkpoint from before condition
        standardisation), the network is rebuilt from the saved one before its weights are loaded."""
        self._pending_rng = checkpoint.get("gcd_rng")
        saved = checkpoint.get("hyper_parameters", {}).get("data_info")
        if saved is not None and self.net is not None and saved != self.hparams.get("data_info"):
            self.hparams["data_info"] = saved
            self._build(saved)

    def on_train_start(self) -> None:
        """Restore the checkpoint's RNG states: a resumed run draws the same noise as an uninterrupted one."""
        if getattr(self, "_pending_rng", None) is not None:
            restore_rng_state(self._pending_rng, self.trainer.global_rank)
            self._pending_rng = None

    # ------------------------------------------------------------------------------------------------
    # sampling outside training
    def sample_template(
        self,
        n: int,
        supercell: Sequence[float] = (1, 1, 1),
        cond: torch.Tensor | None = None,
        target: torch.Tensor | None = None,
        cell: Any = None,
        n_atoms: int | None = None,
    ) -> Batch:
        """``n`` rows of the training reference cell scaled by ``supercell``, or of ``cell`` ((3, 3) Å), and
        the condition ``cond`` (K,) and the posterior-guidance target ``target`` (K,), if any.

        ``n_atoms``: the size to generate, stored as ``template["n_atoms"]`` (B,): the particle model's
        atom count, the voxel model's grid (``grid_for_cell``). Default: the particle model takes the
        training number density × volume, the voxel model the training voxel spacing.
        """
        if len(supercell) != 3 or min(supercell) <= 0:
            raise GcdError(f"supercell needs three positive factors, got {list(supercell)}")
        if cell is not None:
            if tuple(supercell) != (1, 1, 1):
                raise GcdError("give either a cell or supercell factors, not both")
            cell = torch.as_tensor(np.asarray(cell, dtype=np.float64), dtype=torch.float32)
            if cell.shape != (3, 3) or not abs(float(torch.linalg.det(cell.double()))) > 1e-6:
                raise GcdError(
                    f"the cell must be a (3, 3) matrix of lattice vectors (rows, Å) with a volume, got {cell.tolist()}"
                )
        else:
            cell = (
                torch.as_tensor(self.info["reference_cell"], dtype=torch.float32)
                * torch.as_tensor(supercell, dtype=torch.float32)[:, None]
            )
        template: Batch = {"cell": cell.expand(n, 3, 3).clone()}
        if n_atoms is not None:
            if int(n_atoms) < 1:
                raise GcdError(f"the number of atoms must be at least 1, got {n_atoms}")
            template["n_atoms"] = torch.full((n,), int(n_atoms), dtype=torch.long)
        if cond is not None:
            template["cond"] = cond.float().reshape(1, -1).expand(n, -1).clone()
        elif self.info.get("cond_dim", 0):
            names = ", ".join(self.info.get("conditions", []))
            raise GcdError(
                f"this model was trained with a condition ({names}): pass one (gcd sample --condition-from "
                "DATASET:INDEX, or the option of the application that reads it from a file)"
            )
        if target is not None:
            template["target"] = target.float().reshape(1, -1).expand(n, -1).clone()
        return template

    @torch.no_grad()
    def sample(
        self,
        template: Batch,
        batch_size: int = 16,
        steps: int | None = None,
        sampler: str | None = None,
        guidance_scale: float | None = None,
        seed: int = 0,
        progress: bool = True,
        posterior: PosteriorGuidance | None = None,
    ) -> list:
        """Generate one structure per template row with the EMA weights; returns ASE ``Atoms``.

        ``posterior``: diffusion posterior sampling toward ``template["target"]`` (``samplers.dps``).
        """
        from tqdm.auto import tqdm

        self.eval()
        generator = torch.Generator(device=self.device).manual_seed(seed)
        n = len(template["cell"])
        out: list = []
        context = self.ema.swapped_in(self.net) if self.ema is not None else contextlib.nullcontext()
        with context, tqdm(total=n, desc="sampling", unit="structure", disable=not progress) as bar:
            for start in range(0, n, batch_size):
                chunk = {k: v[start : start + batch_size].to(self.device) for k, v in template.items()}
                structures = self.generate(
                    chunk,
                    steps=steps,
                    sampler=sampler,
                    guidance_scale=guidance_scale,
                    generator=generator,
                    progress=progress,  # a second bar over the batch's noise levels: one batch can take an hour
                    posterior=posterior,
                )
                out.extend(structures.to_atoms())
                bar.update(len(chunk["cell"]))
        return out


def condition_statistics(values: np.ndarray, floor: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Per-component mean and spread (K,) of training conditions ``values`` (S, K) for standardising them.

    A component's spread is at least ``floor`` × the mean spread over components (1 where no component
    varies), so components that barely vary in training (a flat stretch of a curve-valued condition, a
    constant label) are not blown up: a measured condition's noise there would otherwise dominate the
    standardised input.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2 or len(values) == 0:
        raise GcdError(f"condition statistics need (structures, components) values, got shape {values.shape}")
    mean, std = values.mean(0), values.std(0)
    typical = float(std.mean())
    return mean, (np.maximum(std, floor * typical) if typical > 0 else np.ones_like(std))


def rng_state() -> dict[str, Any]:
    """Python, NumPy and torch (CPU, CUDA) RNG states as weights-only-loadable types (tensors, ints)."""
    version, mt_state, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": [version, torch.tensor(mt_state, dtype=torch.int64), gauss],
        "numpy": [torch.from_numpy(np_keys.astype(np.int64)), int(np_pos), int(np_has_gauss), float(np_gauss)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any], rank: int = 0) -> None:
    """Inverse of ``rng_state``; ranks other than 0 then reseed from it so ranks keep distinct streams."""
    version, mt_state, gauss = state["python"]
    random.setstate((version, tuple(int(x) for x in mt_state.tolist()), gauss))
    keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state(("MT19937", keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if rank:
        seed = int(torch.randint(0, 2**62, (1,))) + rank
        torch.manual_seed(seed)
        np.random.seed(seed % 2**32)
        random.seed(seed)


def _on_validation_schedule(trainer: L.Trainer) -> bool:
    """Whether the validation now running is one the trainer's schedule asked for (every ``val_check_interval``
    training batches, or at the end of an epoch), not the extra one Lightning runs when a callback stops
    training between two (a time-limited chunk's end, a ``max_time`` timer). Sampling at that extra validation
    would cost as much as at a scheduled one, at a step no other run of the schedule is measured at."""
    epoch_loop = trainer.fit_loop.epoch_loop
    if getattr(trainer, "_val_check_time_interval", None) is not None:  # time-based: every validation counts
        return True
    if trainer.val_check_batch == float("inf"):  # a dataset without a length: validated at each epoch's end
        return bool(epoch_loop.batch_progress.is_last_batch)
    # every val_check_batch batches (of the run, or of the epoch, whose last batch is then on the schedule):
    # an epoch's last batch off that count is not, as in Lightning's own rule
    batches = epoch_loop.total_batch_idx if trainer.check_val_every_n_epoch is None else epoch_loop.batch_idx
    return (batches + 1) % int(trainer.val_check_batch) == 0


def _pad_cat(values: list[torch.Tensor]) -> torch.Tensor:
    """Concatenate (b, N_i) tensors along batch, padding N to the largest with zeros."""
    n = max(v.shape[1] for v in values)
    return torch.cat([torch.nn.functional.pad(v, (0, n - v.shape[1])) for v in values])
