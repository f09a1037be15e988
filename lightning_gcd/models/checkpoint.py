"""Reading a checkpoint and rebuilding its model without executing code from it.

``torch.load(weights_only=True)`` only unpickles tensors and plain containers, so a malicious or foreign
checkpoint cannot run code; the model class is looked up by name among this package's modules only (the
core's models and the applications' models, e.g. ``lightning_gcd.spectra.SpectrumModel``), and a class that
moved since the checkpoint was written is found under its new name (``MOVED_CLASSES``).

Below every model module (it imports none of them at import time): ``models.loading.load_model`` (which
defaults to ``DiffusionModule``) wraps it, and the applications load their own models with it.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import torch

from lightning_gcd.errors import GcdError
from lightning_gcd.models.retired import drop_retired

ALLOWED_MODULE_PREFIX = "lightning_gcd."

#: model classes that moved (issue #29: the spectrum forward model left the core): old path -> new path
MOVED_CLASSES = {
    "lightning_gcd.models.spectrum.SpectrumModel": "lightning_gcd.spectra.forward_model.SpectrumModel",
}

__all__ = ["ALLOWED_MODULE_PREFIX", "MOVED_CLASSES", "model_from_checkpoint", "read_checkpoint"]


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The checkpoint dict, weights only; one clear error for missing, truncated or foreign files."""
    path = Path(path)
    if not path.is_file():
        raise GcdError(f"{path}: no such checkpoint")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # truncated zip, pickle with code, not a torch file...
        reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise GcdError(
            f"{path}: not a readable lightning_gcd checkpoint (truncated, foreign or unsafe): {reason}"
        ) from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise GcdError(f"{path}: not a Lightning checkpoint (no state_dict)")
    return checkpoint


def model_from_checkpoint(path: str | Path, base: type, map_location: str | torch.device = "cpu") -> Any:
    """Rebuild the model of a checkpoint written by ``gcd fit`` and load its weights (EMA included).

    ``base``: the class the checkpoint's model must derive from; anything else is refused with one line.
    The model's module is imported by name (``gcd_model_class``, or its new name in ``MOVED_CLASSES``),
    within ``lightning_gcd`` only.
    """
    checkpoint = read_checkpoint(path, map_location)
    class_path = checkpoint.get("gcd_model_class")
    class_path = MOVED_CLASSES.get(class_path, class_path) if isinstance(class_path, str) else class_path
    if not isinstance(class_path, str) or not class_path.startswith(ALLOWED_MODULE_PREFIX):
        raise GcdError(f"{path}: checkpoint does not name a lightning_gcd model")
    module_name, _, class_name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), class_name, None)
    except ImportError:
        raise GcdError(f"{path}: holds a {class_path}, which this version of lightning_gcd does not have") from None
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise GcdError(f"{path}: holds a {class_name}, not a {base.__name__}")
    hparams = {k: v for k, v in checkpoint.get("hyper_parameters", {}).items() if not k.startswith("_")}
    hparams = drop_retired(hparams, str(path))  # options removed since it was saved: a warning each
    if not hparams.get("data_info"):
        raise GcdError(f"{path}: checkpoint has no data_info; it was saved before the model was set up")
    model = cls(**hparams)
    model.load_state_dict(checkpoint["state_dict"])
    return model.to(map_location).eval()
