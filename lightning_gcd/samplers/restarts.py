"""Restart sampling (Xu et al. 2023) as a wrapper around any VP sampler.

After the chain, the sample is noised back to the first of its steps at or below ``restart_t_index`` with
fresh noise (``q_sample``) and the chain's remaining steps run again, ``count`` times. A nearly finished sample
with a local defect (a missing atom, a misplaced one) is taken back to where the network can still repair it
while the rest of the structure keeps it in register. Costs ``count`` × the number of steps at or below
``restart_t_index`` extra network evaluations.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lightning_gcd.samplers.base import Sampler
from lightning_gcd.samplers.vp_base import VPDenoiser, VPRun, VPSampler

__all__ = ["Restarts", "restart_steps"]


def restart_steps(timesteps: Sequence[int], restart_t_index: int, T: int) -> list[int]:
    """The steps of ``timesteps`` at or below ``restart_t_index`` (0 < index < T), which each restart runs."""
    if restart_t_index is None or not 0 < int(restart_t_index) < T:
        raise ValueError(f"restarts need restart_t_index in (0, T={T}), got {restart_t_index}")
    steps = [i for i in timesteps if i <= int(restart_t_index)]
    if not steps:  # one step: [T-1] only
        raise ValueError(
            f"restarts need a chain step at or below restart_t_index {restart_t_index}; "
            f"this chain has {list(timesteps)}"
        )
    return steps


class Restarts(Sampler):
    """``sampler`` run over the chain, then ``count`` times again from ``restart_t_index`` (module docstring).

    Args:
        sampler: the VP sampler of every pass.
        count: how many restarts (0: the sampler alone).
        restart_t_index: the step index the restarts go back to (0 < index < T).
    """

    def __init__(self, sampler: VPSampler, count: int, restart_t_index: int) -> None:
        if count < 0:
            raise ValueError(f"the number of restarts must be >= 0, got {count}")
        self.sampler = sampler
        self.count = int(count)
        self.restart_t_index = int(restart_t_index)
        self.name = sampler.name
        self.evaluations_per_level = sampler.evaluations_per_level

    def __repr__(self) -> str:
        return f"Restarts({self.sampler!r}, count={self.count}, restart_t_index={self.restart_t_index})"

    def chain_evaluations(self, timesteps: Sequence[int], T: int) -> int:
        """Network evaluations (per guidance branch) of ``run`` over ``timesteps`` of a T-step schedule."""
        first = self.sampler.chain_evaluations(timesteps, T)
        if not self.count:
            return first
        return first + self.count * self.sampler.chain_evaluations(restart_steps(timesteps, self.restart_t_index, T), T)

    def run(self, x: torch.Tensor, denoise: VPDenoiser, timesteps: Sequence[int], run: VPRun) -> torch.Tensor:
        """The chain from ``x`` at ``timesteps[0]``, then the restarts (module docstring)."""
        again = restart_steps(timesteps, self.restart_t_index, run.diffusion.T) if self.count else []
        x = self.sampler.run(x, denoise, timesteps, run)
        for _ in range(self.count):
            x = self.sampler.run(run.diffusion.q_sample(x, again[0], run.noise()), denoise, again, run)
        return x
