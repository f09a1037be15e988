"""RatePlateauStop's rule and state, TrainingClock's budget and state."""

from __future__ import annotations

import math

import pytest

from lightning_gcd.callbacks import RatePlateauStop, TrainingClock
from lightning_gcd.callbacks.plateau import rate_has_plateaued


def test_plateau_rule_counts_binomial_standard_errors() -> None:
    se = math.hypot(math.sqrt(0.5 * 0.5 / 64), math.sqrt(0.5 * 0.5 / 64))  # two rates of 0.5 on 64 samples
    flat = [0.1, 0.2, 0.3, 0.4, 0.5, 0.5]
    assert not rate_has_plateaued(flat[:5], 64)  # fewer than window + 1 validations
    assert rate_has_plateaued([0.5] * 6, 64)
    assert not rate_has_plateaued([0.5 - 2.5 * se, 0.5, 0.5, 0.5, 0.5, 0.5], 64)  # gained 2.5 SE: still learning
    assert rate_has_plateaued([0.5 - 1.5 * se, 0.5, 0.5, 0.5, 0.5, 0.5], 64)
    assert rate_has_plateaued([0.0] * 6, 64)  # stuck at zero is a plateau too (SE of one sample)
    assert not rate_has_plateaued([0.0, 0, 0, 0, 0, 0.2], 64)


class _Trainer:
    def __init__(self) -> None:
        self.sanity_checking = False
        self.callback_metrics: dict = {}
        self.global_step = 0
        self.should_stop = False
        self.strategy = _OneProcess()


class _OneProcess:
    @staticmethod
    def reduce_boolean_decision(decision: bool, all: bool = True) -> bool:
        return decision


def test_plateau_stop_sets_should_stop_and_keeps_its_history_in_checkpoints() -> None:
    stop = RatePlateauStop(samples=64, window=2, every_n_steps=10)
    trainer = _Trainer()
    for step, rate in [(10, 0.1), (10, 0.1), (15, 0.9), (20, 0.5), (30, 0.52)]:
        trainer.global_step, trainer.callback_metrics = step, {"val/phase_match": rate}
        stop.on_validation_end(trainer, None)
    # step 10 seen once, step 15 (not a multiple of 10) ignored; 0.52 vs 0.1 two validations back: progress
    assert stop.history == [(10, 0.1), (20, 0.5), (30, 0.52)] and not trainer.should_stop
    trainer.global_step, trainer.callback_metrics = 40, {"val/phase_match": 0.5}
    stop.on_validation_end(trainer, None)
    assert trainer.should_stop and stop.stopped_step == 40
    resumed = RatePlateauStop(samples=64, window=2)
    resumed.load_state_dict(stop.state_dict())
    assert resumed.history == stop.history and resumed.stopped_step == 40
    with pytest.raises(ValueError):
        RatePlateauStop(samples=1)


def test_plateau_stop_waits_for_min_steps_and_counts_the_earlier_validations() -> None:
    """A flat start (sc's first validations sat at 3% before rising to 97%) does not stop a run before
    ``min_steps``; from there the window reaches back over the earlier validations."""
    stop = RatePlateauStop(samples=64, window=2, min_steps=40)
    trainer = _Trainer()
    for step in (10, 20, 30):
        trainer.global_step, trainer.callback_metrics = step, {"val/phase_match": 0.03}
        stop.on_validation_end(trainer, None)
        assert not trainer.should_stop  # flat from step 30 on: without min_steps it would stop there
    trainer.global_step, trainer.callback_metrics = 40, {"val/phase_match": 0.03}
    stop.on_validation_end(trainer, None)
    assert trainer.should_stop and stop.stopped_step == 40 and len(stop.history) == 4


def test_training_clock_budget_and_resume() -> None:
    clock = TrainingClock(budget_seconds=0.0)
    trainer = _Trainer()
    clock.on_train_start(trainer, None)
    clock.on_train_batch_end(trainer)
    assert trainer.should_stop and clock.seconds > 0 and not clock.chunk_ended
    chunk = TrainingClock(chunk_seconds=0.0)
    chunk.on_train_start(trainer, None)
    chunk.on_train_batch_end(trainer)
    assert chunk.chunk_ended
    resumed = TrainingClock()
    resumed.load_state_dict({"seconds": 12.5, "validation_seconds": 3.0})
    resumed.on_train_start(trainer, None)
    resumed.on_train_batch_end(trainer)
    assert resumed.seconds > 12.5 and resumed.state_dict()["validation_seconds"] == 3.0
