"""Variance-preserving (VP) noise schedules over ``T`` discrete steps.

A VP schedule is a sequence ``betas[0..T-1]``; the forward process at step index ``i`` is
``x_i = sqrt(alphas_cumprod[i]) * x0 + sqrt(1 - alphas_cumprod[i]) * eps`` with
``alphas_cumprod[i] = prod_{j<=i} (1 - betas[j])``. Index 0 is the least noisy step, index ``T-1`` the
noisiest (close to pure noise). Everything is kept in float64 on the CPU, because ``1 - alphas_cumprod``
near the data end and ``alphas_cumprod`` near the noise end lose precision in float32; samplers and losses
cast the coefficients they need to the data's dtype and device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

__all__ = ["VPSchedule", "cosine_betas", "linear_betas", "SCHEDULES"]


def cosine_betas(T: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Cosine schedule of Nichol & Dhariwal (2021): alphā(t) ∝ cos²(((t/T + s)/(1 + s)) · π/2).

    Betas are clipped at ``max_beta`` so that the last steps stay finite. Returns (T,) float64.
    """
    steps = torch.arange(T + 1, dtype=torch.float64) / T
    f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    alpha_bar = f / f[0]
    betas = 1.0 - alpha_bar[1:] / alpha_bar[:-1]
    return betas.clamp(min=0.0, max=max_beta)


def linear_betas(T: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """Linear schedule of Ho et al. (2020), rescaled by 1000/T so that any T gives the same noise at the end.

    Returns (T,) float64.
    """
    scale = 1000.0 / T
    return torch.linspace(scale * beta_start, min(scale * beta_end, 0.999), T, dtype=torch.float64)


SCHEDULES = {"cosine": cosine_betas, "linear": linear_betas}


@dataclass(eq=False)
class VPSchedule:
    """A discrete VP noise schedule.

    Attributes:
        name: the schedule's name ("cosine", "linear", or "custom").
        betas: (T,) float64, each in (0, 1).
        alphas: (T,) float64, ``1 - betas``.
        alphas_cumprod: (T,) float64, strictly decreasing, in (0, 1).
    """

    name: str
    betas: torch.Tensor
    alphas: torch.Tensor = field(init=False)
    alphas_cumprod: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        self.betas = torch.as_tensor(self.betas, dtype=torch.float64).detach().cpu()
        if self.betas.ndim != 1 or self.betas.numel() == 0:
            raise ValueError(f"betas must be a non-empty 1-D tensor, got shape {tuple(self.betas.shape)}")
        if not bool(((self.betas > 0) & (self.betas < 1)).all()):
            raise ValueError(f"schedule {self.name!r}: every beta must lie in (0, 1)")
        self.alphas = 1.0 - self.betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)

    @property
    def T(self) -> int:
        """Number of discrete steps."""
        return self.betas.numel()

    def __len__(self) -> int:
        return self.T

    @classmethod
    def from_name(cls, name: str, T: int = 1000) -> VPSchedule:
        """Build a named schedule ("cosine" or "linear") with ``T`` steps."""
        if name not in SCHEDULES:
            raise ValueError(f"unknown noise schedule {name!r}; choose one of {sorted(SCHEDULES)}")
        if int(T) < 1:
            raise ValueError(f"the number of diffusion steps T must be >= 1, got {T}")
        return cls(name, SCHEDULES[name](int(T)))

    def __repr__(self) -> str:
        return f"VPSchedule(name={self.name!r}, T={self.T})"
