"""The interface of the Cartesian particle samplers (``VEParticleDiffusion``): noise levels, one step per level.

Positions are fractional coordinates (B, N, 3) in their cells; noise and steps are Cartesian (Å) and moved into
the cell by ``CartesianRun.move``. The denoiser predicts the noise ``eps`` (dimensionless, Cartesian axes),
whose score is ``-eps / sigma`` (Å⁻¹). ``steps`` levels ``t_k = 1 - k / steps``, k = 0 … steps - 1, each from
``sigma(t_k)`` to ``sigma(t_{k+1})``; at the start of each level the hooks ``impose`` on the positions
(in-painting); the last level adds no noise.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm

from lightning_gcd.samplers.base import Sampler
from lightning_gcd.structures import wrap_unit

if TYPE_CHECKING:
    from lightning_gcd.diffusion.ve import VEParticleDiffusion
    from lightning_gcd.samplers.hooks import SamplingHook

__all__ = ["CartesianDenoiser", "CartesianRun", "CartesianSampler", "NetworkNoise"]

#: ``denoise(frac (B, N, 3), t, sigma Å) -> eps (B, N, 3)``, zero at padding
CartesianDenoiser = Callable[[torch.Tensor, float, float], torch.Tensor]


@dataclass
class CartesianRun:
    """One sampling run of structures in fixed cells, as hooks and samplers see it.

    Args:
        diffusion: the ``VEParticleDiffusion`` (its ``sigma(t)`` in Å).
        numbers: (B, N) atomic numbers; mask: (B, N) bool, True for real atoms; cell: (B, 3, 3) Å, rows are
            lattice vectors, in the working dtype.
        noise: ``() -> (B, N, 3)`` standard normal numbers from the run's generator, zero at padding.
        hooks: the run's hooks, in order.
    """

    diffusion: VEParticleDiffusion
    numbers: torch.Tensor
    mask: torch.Tensor
    cell: torch.Tensor
    noise: Callable[[], torch.Tensor]
    hooks: Sequence[SamplingHook] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        self.inv_cell = torch.linalg.inv(self.cell)  # (B, 3, 3)
        self.fmask = self.mask[..., None].to(self.cell.dtype)  # (B, N, 1)

    def move(self, frac: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
        """``frac`` displaced by the Cartesian ``dx`` (B, N, 3) Å, wrapped into the cell; padding stays at 0."""
        return wrap_unit(frac + torch.einsum("bni,bij->bnj", dx, self.inv_cell)) * self.fmask

    def impose(self, frac: torch.Tensor, sigma: float) -> torch.Tensor:
        """``frac`` after every hook's ``impose`` at noise ``sigma`` Å, first to last."""
        for hook in self.hooks:
            frac = hook.impose(frac, sigma, self)
        return frac


class NetworkNoise:
    """The network's noise prediction: ``model(frac, numbers, mask, cell, t)`` (no condition; wrap the model in
    ``PointCloudGuidance`` for one), in the positions' dtype, zero at padding."""

    def __init__(self, model: Callable[..., torch.Tensor], run: CartesianRun) -> None:
        self.model = model
        self.run = run

    def __call__(self, frac: torch.Tensor, t: float, sigma: float) -> torch.Tensor:
        run = self.run
        tb = torch.full((frac.shape[0],), t, device=frac.device, dtype=frac.dtype)
        out = self.model(frac, run.numbers, run.mask, run.cell, tb, cond=None, cond_keep=None)
        return out.to(frac.dtype) * run.mask[..., None].to(frac.dtype)


class CartesianSampler(Sampler):
    """Reverse VE diffusion of wrapped Cartesian positions over ``steps`` levels; subclasses implement ``step``."""

    def __init__(self, steps: int) -> None:
        if steps < 1:
            raise ValueError("steps must be >= 1")
        self.steps = int(steps)

    @property
    def evaluations(self) -> int:
        """Network evaluations of one run (classifier-free guidance at scale ≠ 0, 1 doubles the batch, not this)."""
        return self.steps * self.evaluations_per_level

    @abstractmethod
    def step(
        self,
        frac: torch.Tensor,
        denoise: CartesianDenoiser,
        prior: CartesianDenoiser,
        t: float,
        sigma: float,
        sigma_next: float,
        last: bool,
        run: CartesianRun,
    ) -> torch.Tensor:
        """One level from noise ``sigma`` to ``sigma_next`` Å. ``denoise`` carries the guidance hooks (the
        predictor's), ``prior`` is the network alone (a corrector's)."""

    def run(
        self,
        frac: torch.Tensor,
        denoise: CartesianDenoiser,
        prior: CartesianDenoiser,
        run: CartesianRun,
        progress: bool = False,
    ) -> torch.Tensor:
        """From ``frac`` (B, N, 3) (uniform positions: the prior) to the sample, wrapped into [0, 1)."""
        times = [1.0 - k / self.steps for k in range(self.steps + 1)]
        for k in tqdm(range(self.steps), disable=not progress, desc="VE sampling", leave=False):
            t = times[k]
            sigma, sigma_next = run.diffusion.sigma(t), run.diffusion.sigma(times[k + 1])
            frac = run.impose(frac, sigma)
            frac = self.step(frac, denoise, prior, t, sigma, sigma_next, k == self.steps - 1, run)
        return frac
