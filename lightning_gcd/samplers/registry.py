"""Samplers by name, as configs and the command line give them."""

from __future__ import annotations

from lightning_gcd.samplers.cartesian_base import CartesianSampler
from lightning_gcd.samplers.cartesian_em import CartesianEulerMaruyama
from lightning_gcd.samplers.cartesian_pc import CartesianPredictorCorrector
from lightning_gcd.samplers.ddim import DDIM
from lightning_gcd.samplers.ddpm import DDPM
from lightning_gcd.samplers.dpm_solver_2m import DPMSolver2M
from lightning_gcd.samplers.dpm_solver_2m_sde import DPMSolver2MSDE
from lightning_gcd.samplers.torus_base import TorusSampler
from lightning_gcd.samplers.torus_em import TorusEulerMaruyama
from lightning_gcd.samplers.torus_pc import TorusPredictorCorrector
from lightning_gcd.samplers.vp_base import VPSampler

__all__ = [
    "CARTESIAN_SAMPLERS",
    "TORUS_SAMPLERS",
    "VP_SAMPLERS",
    "cartesian_sampler",
    "torus_sampler",
    "vp_sampler",
]

TORUS_SAMPLERS = ("pc", "em")
VP_SAMPLERS = ("ddpm", "ddim", "dpm2m", "dpm2m-sde")
CARTESIAN_SAMPLERS = ("em", "pc")


def torus_sampler(name: str, steps: int, step_lr: float = 1e-5) -> TorusSampler:
    """The sampler called ``name`` ("pc": predictor–corrector, "em": Euler–Maruyama) with ``steps`` levels."""
    if name == "em":
        return TorusEulerMaruyama(steps)
    if name == "pc":
        return TorusPredictorCorrector(steps, step_lr=step_lr)
    raise ValueError(f"unknown torus sampler {name!r}; use 'em' or 'pc'")


def vp_sampler(name: str, eta: float = 0.0) -> VPSampler:
    """The VP sampler called ``name`` (``VP_SAMPLERS``); ``eta`` is DDIM's stochasticity (the others ignore it)."""
    if name not in VP_SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose one of {', '.join(VP_SAMPLERS)}")
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    if name == "ddim":
        return DDIM(eta)
    return {"ddpm": DDPM, "dpm2m": DPMSolver2M, "dpm2m-sde": DPMSolver2MSDE}[name]()


def cartesian_sampler(name: str, steps: int, snr: float = 0.16, corrector_steps: int = 1) -> CartesianSampler:
    """The Cartesian particle sampler called ``name`` ("em": Euler–Maruyama, "pc": predictor–corrector with
    ``corrector_steps`` Langevin steps at signal-to-noise ratio ``snr``) over ``steps`` noise levels."""
    if name == "em":
        return CartesianEulerMaruyama(steps)
    if name == "pc":
        return CartesianPredictorCorrector(steps, snr=snr, corrector_steps=corrector_steps)
    raise ValueError(f"unknown sampler {name!r}; use 'em' or 'pc'")
