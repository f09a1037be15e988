"""Loading a trained model from a checkpoint without executing code from it.

``torch.load(weights_only=True)`` only unpickles tensors and plain containers, so a malicious or foreign
checkpoint cannot run code; the model class is looked up by name among this package's modules only. The
work is done in ``lightning_gcd.models.checkpoint`` (below ``models.base``); this module adds the default
``base=DiffusionModule`` that ``gcd sample`` and the studies rely on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from lightning_gcd.models.base import DiffusionModule
from lightning_gcd.models.checkpoint import ALLOWED_MODULE_PREFIX, model_from_checkpoint, read_checkpoint

__all__ = ["ALLOWED_MODULE_PREFIX", "load_model", "read_checkpoint"]


def load_model(path: str | Path, map_location: str | torch.device = "cpu", base: type = DiffusionModule) -> Any:
    """Rebuild the model of a checkpoint written by ``gcd fit`` and load its weights (EMA included).

    ``base``: the class the checkpoint's model must derive from (``DiffusionModule`` for ``gcd sample``,
    an application's model class for its own models); anything else is refused with one line.
    """
    return model_from_checkpoint(path, base, map_location)
