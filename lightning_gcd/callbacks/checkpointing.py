"""Checkpoint safety: atomic writes, a checkpoint on preemption, the resolved config inside checkpoints.

- ``AtomicCheckpointIO`` writes ``X.ckpt`` to a temporary file in the same folder, fsyncs it and renames
  it over ``X.ckpt``: a kill at any moment leaves either the previous complete file or the new one, never
  a truncated ``last.ckpt``.
- ``PreemptionCheckpoint`` saves ``last.ckpt`` when Lightning stops training on SIGTERM (all ranks stop at
  the same batch: Lightning broadcasts the signal), and turns SIGUSR1 into the same path where SLURM's
  auto-requeue does not own it. ``gcd fit`` then exits cleanly with status 0.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities.exceptions import SIGTERMException

from lightning_gcd.io import atomic_path


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` to a temporary file beside the target, fsync, then ``os.replace`` (``atomic_path``)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None) -> None:
        with atomic_path(path, fsync=True) as tmp:
            torch.save(checkpoint, tmp)


class PreemptionCheckpoint(Callback):
    """Save ``last.ckpt`` when training is stopped by SIGTERM (or SIGUSR1 outside SLURM auto-requeue)."""

    last_saved: str | None = None  # class-wide: the CLI reads it after the exception unwound the CLI object

    def __init__(self) -> None:
        self.saved_path: str | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        environment = trainer._accelerator_connector.cluster_environment
        slurm_requeue = isinstance(environment, SLURMEnvironment) and environment.auto_requeue
        if not slurm_requeue and signal.getsignal(signal.SIGUSR1) in (signal.SIG_DFL, None):
            signal.signal(signal.SIGUSR1, lambda signum, frame: os.kill(os.getpid(), signal.SIGTERM))

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException):
            return
        path = last_checkpoint_path(trainer)
        if path is not None:
            trainer.save_checkpoint(path)
            self.saved_path = PreemptionCheckpoint.last_saved = str(path)


def last_checkpoint_path(trainer: L.Trainer) -> Path | None:
    """Where this run keeps ``last.ckpt`` (the first ModelCheckpoint's folder)."""
    for callback in trainer.checkpoint_callbacks:
        if isinstance(callback, ModelCheckpoint) and callback.dirpath:
            return Path(callback.dirpath) / f"{ModelCheckpoint.CHECKPOINT_NAME_LAST}{ModelCheckpoint.FILE_EXTENSION}"
    return None
