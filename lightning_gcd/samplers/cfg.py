"""Classifier-free guidance as a wrapper around any point-cloud network."""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["classifier_free_prediction"]


def classifier_free_prediction(
    model: Callable[..., torch.Tensor],
    frac: torch.Tensor,
    numbers: torch.Tensor,
    mask: torch.Tensor,
    cell: torch.Tensor,
    t: torch.Tensor,
    cond: torch.Tensor | None,
    guidance_scale: float,
) -> torch.Tensor:
    """``uncond + scale (cond − uncond)`` of ``model(frac, numbers, mask, cell, t, cond=, cond_keep=)``.

    Scale 0 (or no condition) calls the model once without a condition, 1 once with it; any other
    scale evaluates both branches in one doubled batch. Returns (B, N, 3) in the frac dtype, zero at padding.
    """
    b = frac.shape[0]
    if cond is None or guidance_scale == 0.0:
        out = model(frac, numbers, mask, cell, t, cond=None, cond_keep=None)
    elif guidance_scale == 1.0:
        out = model(frac, numbers, mask, cell, t, cond=cond, cond_keep=None)
    else:
        keep = torch.cat(
            [torch.ones(b, dtype=torch.bool, device=frac.device), torch.zeros(b, dtype=torch.bool, device=frac.device)]
        )
        both = model(
            torch.cat([frac, frac]),
            torch.cat([numbers, numbers]),
            torch.cat([mask, mask]),
            torch.cat([cell, cell]),
            torch.cat([t, t]),
            cond=torch.cat([cond, cond]),
            cond_keep=keep,
        )
        conditional, unconditional = both[:b], both[b:]
        out = unconditional + guidance_scale * (conditional - unconditional)
    return out.to(frac.dtype) * mask[..., None].to(frac.dtype)
