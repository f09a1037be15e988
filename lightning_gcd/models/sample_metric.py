"""``SampleMetric``: how a metric of the structures sampled at validation attaches to a diffusion model.

The base module samples at the end of a validation epoch and evaluates the samples with its structure
metrics; a metric that needs more than the structures (a trained forward model, a reference property) is a
trainer callback (``trainer.callbacks`` in the config) that also implements ``evaluate_samples``. The module
calls it with the samples and the templates they were drawn from, logs what it returns as ``val/<name>`` and
keeps it in ``last_metrics``, so that checkpoint monitors, the history and the reports see it like any other.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch

from lightning_gcd.structures import StructureBatch

__all__ = ["SampleMetric"]


@runtime_checkable
class SampleMetric(Protocol):
    """A callback that scores the validation samples (runs on every rank: it may synchronise them)."""

    def evaluate_samples(
        self, module: Any, samples: StructureBatch, templates: dict[str, torch.Tensor]
    ) -> dict[str, float]:
        """``{name: value}`` of this rank's ``samples`` (B structures) drawn from ``templates`` (rows of B:
        ``cell``, ``cond``, ...), synchronised over ranks; an empty dict where it does not apply."""
        ...
