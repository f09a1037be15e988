"""The learning-rate schedule shared by every model of the package (diffusion models and the spectrum
forward model, ``lightning_gcd.spectra``): below ``models.base`` and the applications' models."""

from __future__ import annotations

import math
from typing import Any

import torch

__all__ = ["warmup_cosine"]


def warmup_cosine(
    optimizer: torch.optim.Optimizer, warmup_steps: int, total: int, min_lr_ratio: float = 0.1, schedule: str = "cosine"
) -> dict[str, Any]:
    """Lightning's optimiser dict: linear warm-up over ``warmup_steps``, then cosine decay to
    ``min_lr_ratio`` at step ``total`` (or constant), stepped every optimiser step."""
    warmup = max(0, int(warmup_steps))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
