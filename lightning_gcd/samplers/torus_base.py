"""The interface of the torus samplers: noise levels, one step per level, the loop around them."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm

from lightning_gcd.samplers.base import Sampler
from lightning_gcd.structures import wrap_unit

if TYPE_CHECKING:
    from lightning_gcd.diffusion.torus import TorusDiffusion

__all__ = ["NoiseFunction", "ScoreFunction", "TorusSampler"]

#: ``score(frac (B, N, 3), t float, sigma (B,)) -> (frac as evaluated (B, N, 3), score (B, N, 3))``: the
#: score in 1/fractional units at noise ``sigma``; the frac it returns is the input after any hook (in-painting
#: puts fixed atoms back), and the step continues from it.
ScoreFunction = Callable[[torch.Tensor, float, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
#: ``noise() -> (B, N, 3)`` standard normal numbers, zero at padding (drawn from the sampler's generator)
NoiseFunction = Callable[[], torch.Tensor]


class TorusSampler(Sampler):
    """Reverse diffusion on the torus over ``steps`` geometric noise levels from sigma_max to sigma_min.

    Subclasses implement ``step``: one level, from noise ``sigma`` to ``sigma_next`` (0 after the last
    level, which adds no noise). ``evaluations_per_level`` is the number of network calls per level.
    """

    def __init__(self, steps: int) -> None:
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        self.steps = int(steps)

    @property
    def evaluations(self) -> int:
        """Network evaluations of one run (classifier-free guidance at scale ≠ 0, 1 doubles the batch, not this)."""
        return self.steps * self.evaluations_per_level

    def times(self, start_time: float = 1.0) -> list[float]:
        """Diffusion times of the levels, 1 → 0; from ``start_time`` on, the full schedule's levels at or below it."""
        if self.steps == 1:
            return [1.0]
        times = [1.0 - k / (self.steps - 1) for k in range(self.steps)]
        return [t for t in times if t <= start_time + 1e-12]

    @abstractmethod
    def step(
        self,
        frac: torch.Tensor,
        score: ScoreFunction,
        t: float,
        sigma: torch.Tensor,
        sigma_next: torch.Tensor,
        noise: NoiseFunction,
        diffusion: TorusDiffusion,
        last: bool,
    ) -> torch.Tensor:
        """One level: (B, N, 3) fractional coordinates at noise ``sigma`` (B,) -> at ``sigma_next`` (B,)."""

    def run(
        self,
        frac: torch.Tensor,
        score: ScoreFunction,
        diffusion: TorusDiffusion,
        n_atoms: torch.Tensor,
        noise: NoiseFunction,
        progress: bool = False,
        start_time: float = 1.0,
    ) -> torch.Tensor:
        """Integrate from ``frac`` (B, N, 3) to the denoised sample, wrapped into [0, 1).

        ``frac`` is uniform positions for ``start_time`` 1 (the prior); a lower ``start_time`` continues a structure
        already noised to ``sigma(start_time)`` (e.g. a real crystal: how far back can the sampler start and
        still return to it?), over the schedule's levels at or below that time."""
        times = self.times(start_time)
        if not times:
            raise ValueError(f"start_time {start_time} lies below the schedule's last level")
        for k in tqdm(range(len(times)), disable=not progress, desc=f"torus {self.name}", leave=False):
            t = times[k]
            tb = torch.full(n_atoms.shape, t, dtype=frac.dtype, device=frac.device)
            sigma = diffusion.sigma(tb, n_atoms)
            last = k == len(times) - 1
            sigma_next = (
                torch.zeros_like(sigma) if last else diffusion.sigma(torch.full_like(tb, times[k + 1]), n_atoms)
            )
            frac = wrap_unit(self.step(frac, score, t, sigma, sigma_next, noise, diffusion, last))
        return frac
