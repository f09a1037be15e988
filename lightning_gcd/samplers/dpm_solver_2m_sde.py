"""SDE-DPM-Solver++(2M) (Lu et al. 2022): the multistep solver of the reverse SDE."""

from __future__ import annotations

import math

import torch

from lightning_gcd.samplers.dpm_solver_2m import DPMSolver2M

__all__ = ["DPMSolver2MSDE"]


class DPMSolver2MSDE(DPMSolver2M):
    """As ``DPMSolver2M`` (the same extrapolated ``D`` and first-order steps), but the step of the SDE:
    ``x' = (σ'/σ) e^{-h} x + α' (1 - e^{-2h}) D + σ' sqrt(1 - e^{-2h}) z``."""

    name = "dpm2m-sde"

    def solve(
        self, x: torch.Tensor, d: torch.Tensor, h: float, sig: float, alpha_next: float, sig_next: float
    ) -> tuple[torch.Tensor, float]:
        x_next = (sig_next / sig * math.exp(-h)) * x + (alpha_next * -math.expm1(-2.0 * h)) * d
        return x_next, sig_next * math.sqrt(-math.expm1(-2.0 * h))
