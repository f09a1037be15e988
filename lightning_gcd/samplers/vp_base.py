"""The interface of the VP (voxel) samplers: one update per step of a respaced chain, the loop around them.

A VP chain visits step indices ``timesteps`` (``T-1`` down to 0; ``x_t = sqrt(ā) x0 + sqrt(1-ā) eps``, see
``lightning_gcd.diffusion.vp``). At each step the loop lets the hooks ``impose`` on ``x`` (in-painting), asks
the denoiser for ``(x0, eps)`` and an optional guidance term, and the sampler's ``update`` turns those into the
mean of ``x`` at the next index and the standard deviation of the noise to add. The last step returns the
predicted x0 (minus the guidance term, if any). A sampler that keeps history between steps (DPM-Solver++)
clears it in ``start``, which ``run`` calls at the beginning of every chain (restarts run several).
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

import torch

from lightning_gcd.samplers.base import Sampler

if TYPE_CHECKING:
    from lightning_gcd.diffusion.vp import GaussianDiffusion
    from lightning_gcd.samplers.hooks import SamplingHook

__all__ = ["Denoised", "VPDenoiser", "VPRun", "VPSampler", "VPStep"]


class VPStep(NamedTuple):
    """One step of a chain, from index ``index`` to ``index_next`` (-1 after the last step)."""

    index: int
    index_next: int
    #: ā at ``index`` and at ``index_next`` (1 after the last step), float64 values as Python floats
    alpha_bar: float
    alpha_bar_next: float
    #: whether ``index_next`` is the chain's last index (or there is none): multistep solvers drop to first order
    to_last: bool
    #: this chain's previous x0 (after clipping), None at its first step: what a self-conditioned model is given
    x0_previous: torch.Tensor | None


class Denoised(NamedTuple):
    """What a denoiser says at one step: x0 and eps (the shape of x), and a term the step subtracts from its
    result before the noise (posterior guidance), or None."""

    x0: torch.Tensor
    eps: torch.Tensor
    guide: torch.Tensor | None = None


#: ``denoise(x_t, step) -> Denoised``
VPDenoiser = Callable[[torch.Tensor, VPStep], Denoised]


@dataclass
class VPRun:
    """One sampling run, as hooks and samplers see it.

    Args:
        diffusion: the ``GaussianDiffusion`` (schedule, ``q_sample``, conversions).
        shape: (B, C, ...) of the samples; device, dtype: theirs.
        noise: ``() -> shape`` standard normal numbers from the run's generator.
        clip_x0: the (low, high) range x0 is clamped to at each step, or None.
        hooks: the run's hooks, in order.
        progress: ``() -> None`` called once per network evaluation (a progress bar), or None.
    """

    diffusion: GaussianDiffusion
    shape: tuple[int, ...]
    device: torch.device
    dtype: torch.dtype
    noise: Callable[[], torch.Tensor]
    clip_x0: tuple[float, float] | None = None
    hooks: Sequence[SamplingHook] = field(default_factory=tuple)
    progress: Callable[[], Any] | None = None

    def impose(self, x: torch.Tensor, step: VPStep) -> torch.Tensor:
        """``x`` after every hook's ``impose``, first to last."""
        for hook in self.hooks:
            x = hook.impose(x, step, self)
        return x

    def advance(self) -> None:
        if self.progress is not None:
            self.progress()


class VPSampler(Sampler):
    """Runs a respaced VP chain; subclasses implement ``update`` (and ``start`` if they keep history)."""

    def start(self) -> None:
        """Forget any history: a new chain begins (default: nothing to forget)."""

    @abstractmethod
    def update(self, x: torch.Tensor, x0: torch.Tensor, eps: torch.Tensor, step: VPStep) -> tuple[torch.Tensor, float]:
        """From ``x`` at ``step.index`` with its (x0, eps): (the mean of x at ``step.index_next``, the
        standard deviation of the Gaussian noise to add to it, 0 for none)."""

    def chain_evaluations(self, timesteps: Sequence[int], T: int) -> int:
        """Network evaluations (per guidance branch) of ``run`` over ``timesteps`` of a T-step schedule."""
        return len(timesteps) * self.evaluations_per_level

    def run(self, x: torch.Tensor, denoise: VPDenoiser, timesteps: Sequence[int], run: VPRun) -> torch.Tensor:
        """From ``x`` at ``timesteps[0]`` (shape ``run.shape``) down the chain to the clean end."""
        self.start()
        alphas_cumprod = run.diffusion.schedule.alphas_cumprod  # float64, CPU: per-step scalars in double precision
        x0_previous = None
        for k, index in enumerate(timesteps):
            run.advance()
            index_next = timesteps[k + 1] if k + 1 < len(timesteps) else -1
            step = VPStep(
                index,
                index_next,
                float(alphas_cumprod[index]),
                float(alphas_cumprod[index_next]) if index_next >= 0 else 1.0,
                k + 2 >= len(timesteps),
                x0_previous,
            )
            x = run.impose(x, step)
            out = denoise(x, step)
            x0_previous = out.x0
            if index_next < 0:  # ā_next = 1: the predicted x0, no noise
                return out.x0 if out.guide is None else out.x0 - out.guide
            x, noise_std = self.update(x, out.x0, out.eps, step)
            if out.guide is not None:
                x = x - out.guide
            if noise_std > 0.0:
                x = x + noise_std * run.noise()
        return x
