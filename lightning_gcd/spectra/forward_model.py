"""``SpectrumModel``: the forward model of spectrum-guided sampling, trained with ``gcd fit``
(``model.class_path: lightning_gcd.spectra.SpectrumModel``).

It predicts every atom's spectrum (a-C: C K-edge XANES on the file's energy grid, ``meta_xanes_energy``)
from its periodic neighbourhood with ``SpectrumNet``; the structure's spectrum is the mean over its atoms,
as in Kwon, Hsu et al. 2024. Training data: a per-atom property (``xanes``, (A, K)) and a per-atom mask of
the atoms that carry a computed spectrum (``xanes_mask``); the loss is the mean squared error over masked
atoms only, in standardised units (the training sites' mean spectrum is subtracted and the result divided
by one global standard deviation; both are stored in the checkpoint).

Logged (``val/`` and, with ``gcd test``, ``test/``):

- ``loss``: the standardised MSE;
- ``spectrum_rel_l2``: per atom, ‖pred − FEFF‖ / ‖FEFF‖ averaged over labelled atoms;
- ``spectrum_mae``: mean abs error over labelled atoms and energies (spectrum units);
- ``mean_spectrum_rel_l2``: per structure, the relative L2 between the mean prediction and the mean FEFF
  spectrum over the same labelled sites, averaged over structures;
- ``baseline_rel_l2``, ``baseline_mean_rel_l2``: the same two relative L2 errors when the training sites'
  mean spectrum is predicted for every atom (what the model has to beat).

The DataModule must serve the two per-atom properties: ``data.atom_properties: [xanes, xanes_mask]``.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import numpy as np
import torch

from lightning_gcd.errors import GcdError
from lightning_gcd.models.optim import warmup_cosine
from lightning_gcd.spectra.net import SpectrumNet

Batch = dict[str, torch.Tensor]


class SpectrumModel(L.LightningModule):
    """Per-atom spectrum predictor.

    Args:
        hidden, layers, cutoff, num_rbf: the ``SpectrumNet`` (cutoff in Å; the FEFF clusters reach
            4 Å of full multiple scattering, so 4 Å by default).
        spectrum, spectrum_mask: names of the per-atom properties (target (A, K), mask (A,)).
        lr, weight_decay, warmup_steps: AdamW with linear warm-up and cosine decay to 10 % over the run.
        data_info: filled at the first ``setup`` from the DataModule (energy grid, K, normalisation) and
            stored in checkpoints, so a checkpoint rebuilds the model without the data.
    """

    def __init__(
        self,
        hidden: int = 64,
        layers: int = 3,
        cutoff: float = 4.0,
        num_rbf: int = 32,
        spectrum: str = "xanes",
        spectrum_mask: str = "xanes_mask",
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        warmup_steps: int = 20,
        data_info: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net: SpectrumNet | None = None
        self._val: dict[str, list[torch.Tensor]] = {}
        if data_info is not None:
            self._build(data_info)

    # ------------------------------------------------------------------------------------------------
    @property
    def info(self) -> dict[str, Any]:
        return self.hparams.data_info

    @property
    def energy(self) -> np.ndarray | None:
        grid = self.info.get("energy")
        return None if grid is None else np.asarray(grid, dtype=np.float64)

    def _build(self, info: dict[str, Any]) -> None:
        hp = self.hparams
        self.net = SpectrumNet(
            int(info["n_out"]), hidden=hp.hidden, layers=hp.layers, cutoff=hp.cutoff, num_rbf=hp.num_rbf
        )
        self.register_buffer("spec_mean", torch.as_tensor(info["mean"], dtype=torch.float32))
        self.register_buffer("spec_scale", torch.tensor(float(info["scale"]), dtype=torch.float32))

    def data_info_from(self, datamodule: Any) -> dict[str, Any]:
        from datamodules.h5format import AtomsH5

        hp = self.hparams
        datamodule.setup()
        missing = [n for n in (hp.spectrum, hp.spectrum_mask) if n not in datamodule.atom_properties]
        if missing:
            raise GcdError(
                f"SpectrumModel needs data.atom_properties to include {missing} "
                f"(e.g. data.atom_properties: [{hp.spectrum}, {hp.spectrum_mask}])"
            )
        values = []
        with AtomsH5(datamodule.path, validate=False) as data:
            for i in datamodule.splits["train"]:
                spectra = np.asarray(data.atom_property(hp.spectrum, int(i)), dtype=np.float64)
                keep = np.asarray(data.atom_property(hp.spectrum_mask, int(i)), dtype=bool)
                values.append(spectra[keep])
            energy = data.field_energy(hp.spectrum)
        values = np.concatenate(values) if values else np.zeros((0, 0))
        if values.ndim != 2 or len(values) == 0:
            raise GcdError(f"{datamodule.path}: no labelled atoms ({hp.spectrum_mask}) in the train split")
        mean = values.mean(0)
        return {
            "n_out": int(values.shape[1]),
            "energy": energy,
            "mean": mean.tolist(),
            "scale": float(max((values - mean).std(), 1e-6)),
            "species": list(datamodule.species),
            "n_train_sites": int(len(values)),
        }

    def setup(self, stage: str) -> None:
        if self.net is None:
            datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
            if datamodule is None:
                raise GcdError("the spectrum model needs a datamodule (data: in the config)")
            info = self.data_info_from(datamodule)
            self.hparams["data_info"] = info
            self._build(info)

    # ------------------------------------------------------------------------------------------------
    def forward(
        self,
        frac_coords: torch.Tensor,
        numbers: torch.Tensor,
        mask: torch.Tensor,
        cell: torch.Tensor,
        weights: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, N, K) per-atom spectra in the data's units (zero at padding); differentiable."""
        out = self.net(frac_coords, numbers, mask, cell, weights)
        return (self.spec_mean + self.spec_scale * out) * mask[..., None].to(out.dtype)

    def mean_spectrum(
        self,
        frac_coords: torch.Tensor,
        numbers: torch.Tensor,
        mask: torch.Tensor,
        cell: torch.Tensor,
        weights: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, K) the structure's spectrum: the (weighted) mean of its atoms' predicted spectra."""
        spectra = self(frac_coords, numbers, mask, cell, weights)
        w = mask.to(spectra.dtype) if weights is None else weights.to(spectra.dtype) * mask.to(spectra.dtype)
        return (w[..., None] * spectra).sum(1) / w.sum(1, keepdim=True).clamp(min=1e-6)

    # ------------------------------------------------------------------------------------------------
    def _step(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        hp = self.hparams
        target = batch[f"atom_{hp.spectrum}"].float()
        labelled = batch[f"atom_{hp.spectrum_mask}"].bool() & batch["mask"].bool()
        pred = self(batch["frac_coords"], batch["numbers"], batch["mask"], batch["cell"])
        err = ((pred - target) / self.spec_scale) ** 2
        loss = err[labelled].mean() if labelled.any() else pred.sum() * 0.0
        return loss, pred, target, labelled

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        loss, *_ = self._step(batch)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(batch["index"]))
        return loss

    def _evaluate(self, batch: Batch) -> torch.Tensor:
        loss, pred, target, labelled = self._step(batch)
        n = labelled.sum()
        store = self._val
        store.setdefault("loss", []).append(loss.detach() * n)
        store.setdefault("n", []).append(n.float())
        rel = (pred - target).norm(dim=-1) / target.norm(dim=-1).clamp(min=1e-12)
        base = (self.spec_mean - target).norm(dim=-1) / target.norm(dim=-1).clamp(min=1e-12)
        store.setdefault("rel", []).append(rel[labelled])
        store.setdefault("base", []).append(base[labelled])
        store.setdefault("abs", []).append((pred - target).abs()[labelled].mean(-1))
        w = labelled.float()[..., None]
        has = labelled.any(1)
        mean_pred = (pred * w).sum(1)[has] / w.sum(1)[has]
        mean_true = (target * w).sum(1)[has] / w.sum(1)[has]
        store.setdefault("mean_rel", []).append(
            (mean_pred - mean_true).norm(dim=-1) / mean_true.norm(dim=-1).clamp(min=1e-12)
        )
        store.setdefault("mean_base", []).append(
            (self.spec_mean - mean_true).norm(dim=-1) / mean_true.norm(dim=-1).clamp(min=1e-12)
        )
        return loss

    def validation_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        return self._evaluate(batch)

    def test_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        return self._evaluate(batch)

    def held_out_metrics(self) -> dict[str, float]:
        """The metrics accumulated since the last reset (module docstring)."""
        s = {k: torch.cat([v.reshape(-1) for v in vs]) for k, vs in self._val.items()}
        if not s or float(s["n"].sum()) == 0:
            return {}
        return {
            "loss": float(s["loss"].sum() / s["n"].sum()),
            "spectrum_rel_l2": float(s["rel"].mean()),
            "spectrum_mae": float(s["abs"].mean()),
            "mean_spectrum_rel_l2": float(s["mean_rel"].mean()),
            "baseline_rel_l2": float(s["base"].mean()),
            "baseline_mean_rel_l2": float(s["mean_base"].mean()),
            "n_sites": float(s["n"].sum()),
        }

    def _log_held_out(self, prefix: str) -> None:
        for name, value in self.held_out_metrics().items():
            if name != "n_sites":
                self.log(f"{prefix}/{name}", value, prog_bar=name == "spectrum_rel_l2")
        self.last_metrics = self.held_out_metrics()
        self._val = {}

    def on_validation_epoch_start(self) -> None:
        self._val = {}

    def on_test_epoch_start(self) -> None:
        self._val = {}

    def on_validation_epoch_end(self) -> None:
        self._log_held_out("val")

    def on_test_epoch_end(self) -> None:
        self._log_held_out("test")

    # ------------------------------------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        hp = self.hparams
        optimizer = torch.optim.AdamW(self.net.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
        total = max(1, int(self.trainer.estimated_stepping_batches)) if self._trainer is not None else 1
        return warmup_cosine(optimizer, hp.warmup_steps, total)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["gcd_model_class"] = f"{type(self).__module__}.{type(self).__qualname__}"
