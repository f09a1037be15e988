"""``gcd fit|validate|test|predict``: LightningCLI over the diffusion models and the AtomsDataModule.

A config composes ``model`` (``class_path`` picks ``GrandCanonicalDiffusion`` or ``ParticleDiffusion``),
``data`` (``AtomsDataModule``), ``trainer``, logger and callbacks. Unknown keys are rejected by the
parser with the key's name.
"""

from __future__ import annotations

from typing import Sequence

from lightning.pytorch.cli import LightningCLI

from datamodules.datamodule import AtomsDataModule
from lightning_gcd.models.base import DiffusionModule

TRAIN_COMMANDS = ("fit", "validate", "test", "predict")


class GcdCLI(LightningCLI):
    """LightningCLI with the project's model base class and DataModule."""


def run_lightning(argv: Sequence[str]) -> int:
    GcdCLI(
        DiffusionModule,
        AtomsDataModule,
        subclass_mode_model=True,
        args=list(argv),
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"prog": "gcd"},
    )
    return 0
