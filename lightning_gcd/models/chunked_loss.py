"""A training loss computed chunk by chunk: each chunk's forward and backward pass run in turn.

A batch whose activations do not fit the cache (the torus model's all-pairs tensors of 64-atom cells on a CPU)
trains faster when its structures go through the network a few at a time, each chunk's graph freed before the
next is built. ``loss_in_chunks`` returns the weighted sum of the chunks' losses as one scalar whose backward pass
hands the parameters the gradients already accumulated over the chunks, so that Lightning's training loop
(backward, gradient clipping, optimiser step, DDP's gradient reduction) runs unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn

__all__ = ["loss_in_chunks"]


class _PrecomputedGradients(torch.autograd.Function):
    """``value`` as a tensor whose gradient with respect to ``parameters`` is ``gradients`` (times the
    incoming gradient): the backward pass of losses that were already differentiated."""

    @staticmethod
    def forward(ctx: Any, value: torch.Tensor, gradients: list[torch.Tensor | None], *parameters: torch.Tensor):
        ctx.gradients = gradients
        return value.clone()

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor):
        grads = [None if g is None else g * grad_output.to(g.dtype) for g in ctx.gradients]
        return None, None, *grads


def loss_in_chunks(
    parameters: Sequence[nn.Parameter], chunks: Iterable[tuple[Callable[[], torch.Tensor], float | torch.Tensor]]
) -> torch.Tensor:
    """``Σ_c w_c L_c`` as a scalar whose backward pass gives ``parameters`` the gradient ``Σ_c w_c ∇L_c``.

    Args:
        parameters: the parameters to differentiate (those the optimiser steps).
        chunks: per chunk, a function that computes its loss L_c (a scalar, with its graph) and its weight w_c;
            with weights that sum to one over a batch's chunks (e.g. each chunk's share of the batch's atoms for
            a loss averaged over atoms), the result equals the whole batch's loss and gradient.
    Returns:
        the weighted loss, detached from the chunks' graphs (only one chunk's graph is alive at a time) but
        differentiable with respect to ``parameters``.
    """
    params = [p for p in parameters if p.requires_grad]
    total: list[torch.Tensor | None] = [None] * len(params)
    value: torch.Tensor | None = None
    for compute, weight in chunks:
        loss = compute() * weight
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        total = [g if t is None else (t if g is None else t + g) for t, g in zip(total, grads, strict=True)]
        value = loss.detach() if value is None else value + loss.detach()
    if value is None:
        raise ValueError("loss_in_chunks needs at least one chunk")
    return _PrecomputedGradients.apply(value, total, *params)
