"""Classifier-free guidance (Ho & Salimans 2022) as wrappers around a network, for both calling conventions.

``uncond + scale (cond − uncond)``: scale 0 is the unconditional prediction, 1 the conditional one, > 1 pushes
further toward the condition. Scale 0 (or no condition) calls the network once without a condition and scale 1
once with it, so that they are *exactly* the unconditional and conditional samplers, bit for bit; any other
scale evaluates both branches in one batch of twice the size (the second half with the condition dropped).

* ``ClassifierFreeGuidance`` wraps a grid network ``model(x_t, t, cond, cond_keep)`` (the VP convention) into
  one with the same convention that brings its own condition;
* ``PointCloudGuidance`` does the same for a point-cloud network
  ``model(frac, numbers, mask, cell, t, cond=, cond_keep=)``, through ``classifier_free_prediction``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

__all__ = ["ClassifierFreeGuidance", "PointCloudGuidance", "classifier_free_guidance", "classifier_free_prediction"]


def classifier_free_guidance(uncond: torch.Tensor, cond: torch.Tensor, scale: float) -> torch.Tensor:
    """``uncond + scale * (cond - uncond)``."""
    return uncond + scale * (cond - uncond)


def _both_branches(b: int, device: torch.device) -> torch.Tensor:
    """(2B,) bool: True for the conditional first half of a doubled batch, False for the second."""
    return torch.cat([torch.ones(b, dtype=torch.bool, device=device), torch.zeros(b, dtype=torch.bool, device=device)])


class ClassifierFreeGuidance:
    """A grid network ``model(x_t, t, cond, cond_keep)`` that guides itself with ``cond`` at ``scale``.

    Called as ``guided(x_t (B, ...), t (B,))`` (the condition arguments must be left None: it brings its own),
    it returns the guided raw output. Every conversion of a VP model's output to eps or x0 is affine with
    weights that sum to one, so guidance on the raw output is guidance on eps (``lightning_gcd.diffusion.vp``).

    Args:
        model: ``model(x_t, t, cond, cond_keep) -> (B, ...)``.
        cond: (B, ...) the condition of each sample, or None (then unconditional).
        scale: the guidance weight.
    """

    def __init__(self, model: Callable[..., torch.Tensor], cond: torch.Tensor | None, scale: float) -> None:
        self.model = model
        self.cond = cond
        self.scale = float(scale)

    def parameters(self) -> Iterator[torch.nn.Parameter]:
        """The wrapped network's parameters (so a sampler finds its device), none for a plain function."""
        params = getattr(self.model, "parameters", None)
        return params() if callable(params) else iter(())

    def __call__(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        cond: torch.Tensor | None = None,
        cond_keep: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if cond is not None or cond_keep is not None:
            raise ValueError("ClassifierFreeGuidance brings its own condition; call it with cond=None")
        if self.cond is None or self.scale == 0.0:
            return self.model(x, t, None, None)
        b = x.shape[0]
        given = self.cond.to(x.device)
        if given.shape[0] != b:
            raise ValueError(f"cond has batch size {given.shape[0]}, samples have {b}")
        if self.scale == 1.0:
            return self.model(x, t, given, None)
        out = self.model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([given, given]), _both_branches(b, x.device))
        return classifier_free_guidance(out[b:], out[:b], self.scale)


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
        both = model(
            torch.cat([frac, frac]),
            torch.cat([numbers, numbers]),
            torch.cat([mask, mask]),
            torch.cat([cell, cell]),
            torch.cat([t, t]),
            cond=torch.cat([cond, cond]),
            cond_keep=_both_branches(b, frac.device),
        )
        conditional, unconditional = both[:b], both[b:]
        out = classifier_free_guidance(unconditional, conditional, guidance_scale)
    return out.to(frac.dtype) * mask[..., None].to(frac.dtype)


class PointCloudGuidance:
    """A point-cloud network that guides itself with ``cond`` at ``scale`` (``classifier_free_prediction``).

    Called as ``guided(frac (B, N, 3), numbers, mask, cell, t (B,))``, like the network without a condition.
    """

    def __init__(self, model: Callable[..., torch.Tensor], cond: torch.Tensor | None, scale: float) -> None:
        self.model = model
        self.cond = cond
        self.scale = float(scale)

    def __call__(
        self,
        frac: torch.Tensor,
        numbers: torch.Tensor,
        mask: torch.Tensor,
        cell: torch.Tensor,
        t: torch.Tensor,
        cond: torch.Tensor | None = None,
        cond_keep: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if cond is not None or cond_keep is not None:
            raise ValueError("PointCloudGuidance brings its own condition; call it with cond=None")
        return classifier_free_prediction(self.model, frac, numbers, mask, cell, t, self.cond, self.scale)
