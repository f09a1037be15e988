"""One builder of the studies' Lightning ``Trainer``: a run's settings in, a ``Trainer`` out.

A study trains a model for a fixed budget and then samples it, so the defaults are those of a batch job:
one device, no logger, no progress bar, no model summary, no validation and no checkpoints unless the
run asks for them. ``trainer_options`` is the pure part (a dict, testable without training);
``build_trainer`` constructs the ``Trainer``.
"""

from __future__ import annotations

import inspect
import logging
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "SETTINGS_READ",
    "STUDY_DEFAULTS",
    "build_trainer",
    "checkpointing",
    "quiet_lightning",
    "set_threads",
    "trainer_options",
]

#: what a study's Trainer does unless its settings or the call say otherwise
STUDY_DEFAULTS: dict[str, Any] = {
    "accelerator": "cpu",
    "devices": 1,
    "logger": False,
    "enable_progress_bar": False,
    "enable_model_summary": False,
    "enable_checkpointing": False,
    "num_sanity_val_steps": 0,
    "limit_val_batches": 0,
}

#: the entries of a study's settings that the builder reads; its other entries are the study's own and never
#: reach the Trainer, even where a name happens to match one of its arguments
SETTINGS_READ = ("accelerator", "devices", "strategy", "precision", "num_nodes", "deterministic")


def _trainer_parameters() -> set[str]:
    import lightning as L

    return set(inspect.signature(L.Trainer.__init__).parameters) - {"self"}


def trainer_options(settings: Mapping[str, Any] | None = None, **overrides: Any) -> dict[str, Any]:
    """The ``Trainer`` keyword arguments of a run: ``STUDY_DEFAULTS``, then the ``SETTINGS_READ`` entries of
    ``settings`` that are not None (a study's other settings are ignored), then ``overrides``; ``callbacks``
    and ``plugins`` are concatenated, not replaced. An override naming no ``Trainer`` argument raises
    ``TypeError`` here, not deep in Lightning."""
    known = _trainer_parameters()
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise TypeError(f"not Trainer arguments: {', '.join(unknown)}")
    options = dict(STUDY_DEFAULTS)
    chosen = {k: v for k, v in (settings or {}).items() if k in SETTINGS_READ and v is not None}
    for source in (chosen, overrides):
        for key, value in source.items():
            if key in ("callbacks", "plugins"):
                options[key] = [*options.get(key, []), *_as_list(value)]
            else:
                options[key] = value
    return options


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, Sequence) else [value]


def build_trainer(settings: Mapping[str, Any] | None = None, **overrides: Any):
    """A ``lightning.Trainer`` with ``trainer_options(settings, **overrides)``."""
    import lightning as L

    return L.Trainer(**trainer_options(settings, **overrides))


def checkpointing(folder: str | Path, every_n_train_steps: int | None = None) -> dict[str, Any]:
    """Trainer options of a resumable run: ``folder/last.ckpt`` kept current (after every validation, or every
    ``every_n_train_steps`` steps), written atomically (``AtomicCheckpointIO``), so a killed run leaves a
    complete last.ckpt to resume from with ``trainer.fit(..., ckpt_path=...)``."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    from lightning_gcd.callbacks.checkpointing import AtomicCheckpointIO

    if every_n_train_steps:
        when: dict[str, Any] = {"save_top_k": 0, "every_n_train_steps": every_n_train_steps}
    else:
        # after every validation: ModelCheckpoint writes last.ckpt at a validation only when it also saved a top-k
        # checkpoint there, so keep one (the newest; no monitor) beside it — with save_top_k=0 it never writes
        when = {"save_top_k": 1}
    # no version counter: resumed from a last.ckpt that another saver wrote (an older version, the other mode),
    # ModelCheckpoint would otherwise write last-v1.ckpt, and the next resume would read the stale last.ckpt
    saver = ModelCheckpoint(dirpath=folder, save_last=True, enable_version_counter=False, **when)
    return {"enable_checkpointing": True, "plugins": [AtomicCheckpointIO()], "callbacks": [saver]}


def set_threads(threads: int | None) -> None:
    """Torch's intra-op threads for this process (a study's ``threads`` setting; None or 0 leaves torch's)."""
    if threads:
        import torch

        torch.set_num_threads(int(threads))


def quiet_lightning() -> None:
    """Lightning's INFO lines and the warnings every short study run triggers, silenced: a study prints its own
    progress lines."""
    import lightning  # noqa: F401  (importing it sets its logger to INFO: import first, then lower it)

    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "lightning_fabric", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*number of training batches.*")
    warnings.filterwarnings("ignore", message=".*Total length of.*")
    warnings.filterwarnings("ignore", message=".*isinstance.treespec, LeafSpec.*")
