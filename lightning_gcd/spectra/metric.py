"""``SpectrumL2``: the spectrum error of the validation samples of a spectrum-conditioned model (``val/spectrum_l2``).

A trainer callback that the diffusion models call after sampling at validation (``models.sample_metric``):
the mean over samples of ‖forward-model mean spectrum − condition‖ / ‖condition‖, i.e. the samples' spectrum
error as the forward model sees it, for a model conditioned on the structure's mean spectrum alone. Samples
that decode no atom are left out. In a config::

    trainer:
      callbacks:
        - class_path: lightning_gcd.spectra.SpectrumL2
          init_args: {forward_ckpt: runs/forward/checkpoints/last.ckpt}

(before issue #29 this was the model option ``spectrum_forward_ckpt``).
"""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import numpy as np
import torch

from lightning_gcd.errors import GcdError
from lightning_gcd.models.checkpoint import model_from_checkpoint
from lightning_gcd.spectra.forward_model import SpectrumModel
from lightning_gcd.structures import StructureBatch

__all__ = ["SpectrumL2"]


class SpectrumL2(L.Callback):
    """Logs ``val/<name>`` (default ``val/spectrum_l2``) at every sampled validation.

    Args:
        forward_ckpt: a ``SpectrumModel`` checkpoint (``gcd fit`` of ``lightning_gcd.spectra.SpectrumModel``)
            on the training data's energy grid.
        name: the metric's name under ``val/``.
    """

    def __init__(self, forward_ckpt: str, name: str = "spectrum_l2") -> None:
        self.forward_ckpt = str(forward_ckpt)
        self.name = name
        self._forward: SpectrumModel | None = None

    def forward_model(self, module: Any) -> SpectrumModel:
        """The forward model on ``module``'s device, loaded once and checked against the model's condition:
        one spectrum (``data.conditions`` of one name) of the forward model's length."""
        if self._forward is None:
            conditions = list(module.info.get("conditions", []))
            forward = model_from_checkpoint(self.forward_ckpt, SpectrumModel).float().eval()
            if len(conditions) != 1 or int(module.info.get("cond_dim", 0)) != int(forward.info["n_out"]):
                got = f"{conditions} ({module.info.get('cond_dim', 0)} values)"
                raise GcdError(
                    f"SpectrumL2 needs a model conditioned on the mean spectrum alone (data.conditions: [xanes], "
                    f"{forward.info['n_out']} values); this one has {got}"
                )
            own = module.info.get("condition_grid") or module.info.get("spectrum_energy")  # the latter: before #29
            energy = forward.info.get("energy")
            if energy is not None and own is not None and not np.allclose(energy, own):
                raise GcdError(f"{self.forward_ckpt}: its energy grid differs from the training data's")
            self._forward = forward
        return self._forward.to(module.device)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.forward_model(pl_module)  # load and check it now: a wrong file fails before training

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.forward_model(pl_module)

    def evaluate_samples(
        self, module: Any, samples: StructureBatch, templates: dict[str, torch.Tensor]
    ) -> dict[str, float]:
        """``{name: mean relative spectrum error}`` over all ranks' non-empty samples; {} without a condition."""
        if "cond" not in templates:
            return {}
        forward = self.forward_model(module)
        with torch.no_grad():
            pred = forward.mean_spectrum(
                samples.frac_coords.float(), samples.numbers, samples.mask, samples.cell.float()
            )  # (B, K)
        cond = templates["cond"].float()
        err = (pred - cond).norm(dim=-1) / cond.norm(dim=-1).clamp(min=1e-12)  # (B,)
        err = torch.where(samples.mask.any(dim=1), err, torch.full_like(err, float("nan")))
        world = module.trainer.world_size
        if world > 1:  # the ranks' sample counts may differ by one: pad to gather, NaN is skipped
            width = int(math.ceil(module.hparams.val_samples / world))
            err = module.all_gather(torch.nn.functional.pad(err, (0, width - len(err)), value=float("nan"))).flatten()
        return {self.name: float(err.nanmean())}
