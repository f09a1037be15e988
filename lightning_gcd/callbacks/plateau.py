"""Stop training once a sampled rate (e.g. ``val/phase_match``) stops improving beyond its binomial noise."""

from __future__ import annotations

import math
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

__all__ = ["RatePlateauStop", "rate_has_plateaued"]


def _standard_error(rate: float, samples: int) -> float:
    """Binomial standard error of a rate from ``samples`` draws; the rate is kept inside [1/n, 1 - 1/n] so a
    rate of 0 or 1 still carries the uncertainty of one sample."""
    p = min(max(rate, 1.0 / samples), 1.0 - 1.0 / samples)
    return math.sqrt(p * (1.0 - p) / samples)


def rate_has_plateaued(history: list[float], samples: int, window: int = 5, standard_errors: float = 2.0) -> bool:
    """True when the latest rate has gained no more than ``standard_errors`` standard errors of the difference
    over the rate ``window`` validations earlier (both measured on ``samples`` samples)."""
    if len(history) <= window:
        return False
    new, old = history[-1], history[-1 - window]
    spread = math.hypot(_standard_error(new, samples), _standard_error(old, samples))
    return new - old <= standard_errors * spread


class RatePlateauStop(Callback):
    """Stop when the logged rate ``monitor`` has not gained more than ``standard_errors`` binomial standard
    errors over ``window`` validations. The history is saved in checkpoints, so a resumed run continues it.

    Args:
        monitor: a rate in [0, 1] that the model logs at sampled validations (``val/phase_match``).
        samples: the number of samples the rate is measured on (the model's ``val_samples``).
        window: validations to look back.
        standard_errors: the gain, in standard errors of the difference, that counts as progress.
        every_n_steps: count only validations at multiples of this many steps (a validation that Lightning
            runs when a time-limited chunk stops elsewhere is then left out); None counts every validation.
        min_steps: no stop before this global step (validations before it still count in the window): a
            diffusion model's sampled rate can sit near zero for thousands of steps before it rises, and a flat
            window there is the start of training, not its end.
    """

    def __init__(
        self,
        monitor: str = "val/phase_match",
        samples: int = 64,
        window: int = 5,
        standard_errors: float = 2.0,
        every_n_steps: int | None = None,
        min_steps: int = 0,
    ) -> None:
        if samples < 2 or window < 1:
            raise ValueError(f"need samples >= 2 and window >= 1, got {samples}, {window}")
        self.monitor = monitor
        self.samples = int(samples)
        self.window = int(window)
        self.standard_errors = float(standard_errors)
        self.every_n_steps = int(every_n_steps) if every_n_steps else None
        self.min_steps = int(min_steps)
        self.history: list[tuple[int, float]] = []  # (global step, rate)
        self.stopped_step: int | None = None  # the step at which the plateau stopped training

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or self.monitor not in trainer.callback_metrics:
            return
        rate = float(trainer.callback_metrics[self.monitor])
        if not math.isfinite(rate):
            return
        if self.history and self.history[-1][0] == trainer.global_step:
            return  # the same validation seen twice
        if self.every_n_steps and trainer.global_step % self.every_n_steps:
            return
        self.history.append((int(trainer.global_step), rate))
        if trainer.global_step < self.min_steps:
            return
        if rate_has_plateaued([r for _, r in self.history], self.samples, self.window, self.standard_errors):
            trainer.should_stop = True
            self.stopped_step = int(trainer.global_step)

    def state_dict(self) -> dict[str, Any]:
        return {"history": [list(item) for item in self.history], "stopped_step": self.stopped_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = [(int(step), float(rate)) for step, rate in state_dict.get("history", [])]
        self.stopped_step = state_dict.get("stopped_step")
