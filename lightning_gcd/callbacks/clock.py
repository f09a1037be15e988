"""A training clock: seconds spent training, across resumes, with an optional budget and a per-process chunk."""

from __future__ import annotations

import time
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

__all__ = ["TrainingClock"]


class TrainingClock(Callback):
    """Counts the wall time spent in training steps (validation counted apart), saves it in checkpoints so a
    resumed run continues the count, and stops training at a budget.

    Args:
        budget_seconds: stop once this much training time has been spent in total (a wall-time budget that
            validation sampling does not eat into); None: no budget.
        chunk_seconds: stop once this process has run this long (a chunk of a longer run that a later
            process resumes from ``last.ckpt``); ``chunk_ended`` then says so. None: no chunk limit.

    Under DDP each rank keeps its own clock and the stop is decided over all ranks: one rank past a limit
    stops every rank at the same step.
    """

    def __init__(self, budget_seconds: float | None = None, chunk_seconds: float | None = None) -> None:
        self.budget_seconds = budget_seconds
        self.chunk_seconds = chunk_seconds
        self.seconds = 0.0
        self.validation_seconds = 0.0
        self.chunk_ended = False
        self._mark = self._started = self._validation_mark = time.perf_counter()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._mark = self._started = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        now = time.perf_counter()
        self.seconds += now - self._mark
        self._mark = now
        if self.budget_seconds is None and self.chunk_seconds is None:
            return
        budget_spent = self.budget_seconds is not None and self.seconds >= self.budget_seconds
        chunk_over = self.chunk_seconds is not None and now - self._started >= self.chunk_seconds
        # Each rank keeps its own clock; under DDP one rank's stop must be every rank's stop (as Lightning's
        # Timer does): a rank that stopped alone leaves the others' gradient reduction without a partner.
        reduce = trainer.strategy.reduce_boolean_decision
        budget_spent, chunk_over = reduce(budget_spent, all=False), reduce(chunk_over, all=False)
        if budget_spent:
            trainer.should_stop = True
        if chunk_over:
            trainer.should_stop = self.chunk_ended = True

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._validation_mark = time.perf_counter()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        now = time.perf_counter()
        self.validation_seconds += now - self._validation_mark
        self._mark = now

    def state_dict(self) -> dict[str, Any]:
        return {"seconds": self.seconds, "validation_seconds": self.validation_seconds}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.seconds = float(state_dict.get("seconds", 0.0))
        self.validation_seconds = float(state_dict.get("validation_seconds", 0.0))
