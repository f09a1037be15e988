"""``MetricsHistory``: the metrics, curves and samples of every validation as plain local files.

What ``gcd compare`` reads, for users without a W&B server. In ``trainer.default_root_dir`` (the run
directory of ``gcd fit``), on global rank 0, after every validation of ``fit``/``validate`` (not the
sanity check):

``metrics.jsonl``   one JSON object per validation: ``epoch``, ``global_step``, ``model`` (class name),
                    ``sampled`` (true when the model generated and evaluated samples this time),
                    ``time`` (Unix seconds), ``val/loss`` and, for sampled validations, every structure
                    metric under its logged name ``val/<name>`` (``val/rdf_l1``, ``val/n_atoms_error``,
                    ``val/coordination/<Z>/<k>`` ...). Non-finite values (NaN, inf) are written as
                    ``null`` so the file is strict JSON.
``curves.json``     the curves of the latest sampled validation (``StructureMetrics.curves()``: ``r``,
                    ``g``, ``g_reference``, ``coordination`` {Z: fractions} ...), numpy as lists, written
                    atomically (``lightning_gcd.io.write_json_atomic``).
``samples/epoch_<E>.extxyz``   the structures generated at that validation (this rank's share under
                    DDP: rank 0 writes its own samples).

Usage in a config::

    trainer:
      callbacks:
        - class_path: lightning_gcd.callbacks.MetricsHistory
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

# the I/O helpers live in lightning_gcd.io; re-exported under their old import names
from lightning_gcd.io import to_jsonable, write_extxyz_atomic, write_json_atomic

__all__ = [
    "MetricsHistory",
    "to_jsonable",
    "write_json_atomic",
    "write_extxyz_atomic",
    "METRICS_FILE",
    "CURVES_FILE",
    "SAMPLES_DIR",
]

METRICS_FILE = "metrics.jsonl"
CURVES_FILE = "curves.json"
SAMPLES_DIR = "samples"


def _scalar(value: Any) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def validation_record(trainer: L.Trainer, pl_module: L.LightningModule, sampled: bool) -> dict[str, Any]:
    """The JSON line of one validation (see the module docstring)."""
    record: dict[str, Any] = {
        "epoch": int(trainer.current_epoch),
        "global_step": int(trainer.global_step),
        "model": type(pl_module).__name__,
        "sampled": bool(sampled),
        "time": round(time.time(), 3),
        "val/loss": _scalar(trainer.callback_metrics.get("val/loss")),
    }
    if sampled:
        for name, value in (getattr(pl_module, "last_metrics", None) or {}).items():
            key = name if name.startswith("val/") else f"val/{name}"
            record[key] = _scalar(value)
    return record


class NewSamples:
    """Tells whether ``pl_module.last_curves`` changed since the last call (one sampled validation)."""

    def __init__(self) -> None:
        self._seen: Any = None

    def __call__(self, pl_module: L.LightningModule) -> bool:
        curves = getattr(pl_module, "last_curves", None)
        if not curves or curves is self._seen:
            return False
        self._seen = curves  # the base module builds a new dict at every sampled validation
        return True


class MetricsHistory(Callback):
    """Append the metrics of each validation to ``<default_root_dir>/metrics.jsonl``; keep the latest
    curves in ``curves.json`` and the samples in ``samples/epoch_<E>.extxyz`` (rank 0 only).

    Args:
        save_samples: write the generated structures of each sampled validation as extxyz.
    """

    def __init__(self, save_samples: bool = True) -> None:
        self.save_samples = bool(save_samples)
        self._new_samples = NewSamples()

    @staticmethod
    def directory(trainer: L.Trainer) -> Path:
        return Path(trainer.default_root_dir)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        sampled = self._new_samples(pl_module)
        root = self.directory(trainer)
        root.mkdir(parents=True, exist_ok=True)
        record = validation_record(trainer, pl_module, sampled)
        with open(root / METRICS_FILE, "a") as handle:
            handle.write(json.dumps(to_jsonable(record), allow_nan=False) + "\n")
        if not sampled:
            return
        curves = dict(pl_module.last_curves)
        curves.update(epoch=record["epoch"], global_step=record["global_step"], model=record["model"])
        write_json_atomic(root / CURVES_FILE, curves)
        samples = getattr(pl_module, "last_samples", None)
        if self.save_samples and samples is not None:
            write_extxyz_atomic(root / SAMPLES_DIR / f"epoch_{record['epoch']}.extxyz", samples.to_atoms())
