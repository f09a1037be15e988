"""DPM-Solver++(2M) (Lu et al. 2022), the second-order multistep solver of the probability-flow ODE."""

from __future__ import annotations

import math

import torch

from lightning_gcd.samplers.vp_base import VPSampler, VPStep

__all__ = ["DPMSolver2M"]


class DPMSolver2M(VPSampler):
    """DPM-Solver++(2M) in the data-prediction form: a few-step sampler that reuses the previous step's x0
    (no extra network calls).

    With α = sqrt(ā), σ = sqrt(1 - ā), λ = log(α/σ) and h = λ' - λ > 0, the step is
    ``x' = (σ'/σ) x + α' (1 - e^{-h}) D`` with ``D = x0 + (x0 - x0_prev) / (2r)``, ``r = h_prev / h``.
    First order (``D = x0``) on a chain's first step (no history) and on its last solver step (to ā[0], where
    the log-SNR step is several times the previous one and the extrapolation would amplify errors: "lower
    order final" of Lu et al.).
    """

    name = "dpm2m"

    def __init__(self) -> None:
        self._h_previous: float | None = None

    def start(self) -> None:
        self._h_previous = None

    def update(self, x: torch.Tensor, x0: torch.Tensor, eps: torch.Tensor, step: VPStep) -> tuple[torch.Tensor, float]:
        a, a_next = step.alpha_bar, step.alpha_bar_next
        alpha, sig = math.sqrt(a), math.sqrt(1.0 - a)
        alpha_next, sig_next = math.sqrt(a_next), math.sqrt(1.0 - a_next)
        h = math.log(alpha_next / sig_next) - math.log(alpha / sig)
        history = None if step.to_last else step.x0_previous
        d = x0 if history is None else x0 + (x0 - history) * (h / (2.0 * self._h_previous))
        self._h_previous = h
        return self.solve(x, d, h, sig, alpha_next, sig_next)

    def solve(
        self, x: torch.Tensor, d: torch.Tensor, h: float, sig: float, alpha_next: float, sig_next: float
    ) -> tuple[torch.Tensor, float]:
        """The step from ``x`` with the extrapolated data estimate ``d``: (mean, noise standard deviation)."""
        return (sig_next / sig) * x + (alpha_next * -math.expm1(-h)) * d, 0.0
