"""Samplers of every diffusion model, one class per file, behind one small interface (``base.Sampler``).

A sampler integrates one reverse process from its prior; what the network is asked, and what is held fixed,
comes from composable pieces around it:

* the torus particle model: ``TorusPredictorCorrector``, ``TorusEulerMaruyama`` (``TorusSampler``), called with
  a score function that ``classifier_free_prediction`` (guidance) and ``KnownAtoms`` (in-painting) build;
* the voxel (VP) model: ``DDPM``, ``DDIM``, ``DPMSolver2M``, ``DPMSolver2MSDE`` (``VPSampler``), run by
  ``GaussianDiffusion.sample``; ``Restarts`` wraps any of them, ``ClassifierFreeGuidance`` wraps the network,
  and the hooks ``KnownValues`` (in-painting) and ``VPPosteriorGuidance`` (DPS) attach to the run;
* the Cartesian particle model: ``CartesianEulerMaruyama``, ``CartesianPredictorCorrector``
  (``CartesianSampler``), run by ``VEParticleDiffusion.sample``; ``PointCloudGuidance`` wraps the network, and
  the hooks ``CartesianKnownAtoms`` and ``CartesianPosteriorGuidance`` attach to the run.

Posterior guidance steers toward a ``PosteriorGuidance`` (``dps``) that an application supplies.

Nothing here imports ``lightning_gcd.diffusion`` at run time (the diffusions run these samplers).
"""

from lightning_gcd.samplers.base import Sampler
from lightning_gcd.samplers.cartesian_base import CartesianRun, CartesianSampler
from lightning_gcd.samplers.cartesian_em import CartesianEulerMaruyama
from lightning_gcd.samplers.cartesian_known_atoms import CartesianKnownAtoms
from lightning_gcd.samplers.cartesian_pc import CartesianPredictorCorrector
from lightning_gcd.samplers.cartesian_posterior import CartesianPosteriorGuidance
from lightning_gcd.samplers.cfg import (
    ClassifierFreeGuidance,
    PointCloudGuidance,
    classifier_free_guidance,
    classifier_free_prediction,
)
from lightning_gcd.samplers.ddim import DDIM
from lightning_gcd.samplers.ddpm import DDPM
from lightning_gcd.samplers.dpm_solver_2m import DPMSolver2M
from lightning_gcd.samplers.dpm_solver_2m_sde import DPMSolver2MSDE
from lightning_gcd.samplers.dps import PosteriorGuidance, StructureLoss
from lightning_gcd.samplers.hooks import SamplingHook
from lightning_gcd.samplers.known_atoms import KnownAtoms
from lightning_gcd.samplers.known_values import KnownValues
from lightning_gcd.samplers.registry import (
    CARTESIAN_SAMPLERS,
    TORUS_SAMPLERS,
    VP_SAMPLERS,
    cartesian_sampler,
    torus_sampler,
    vp_sampler,
)
from lightning_gcd.samplers.restarts import Restarts
from lightning_gcd.samplers.torus_base import ScoreFunction, TorusSampler
from lightning_gcd.samplers.torus_em import TorusEulerMaruyama
from lightning_gcd.samplers.torus_pc import TorusPredictorCorrector
from lightning_gcd.samplers.vp_base import Denoised, VPRun, VPSampler, VPStep
from lightning_gcd.samplers.vp_posterior import VPPosteriorGuidance

__all__ = [
    "CARTESIAN_SAMPLERS",
    "DDIM",
    "DDPM",
    "TORUS_SAMPLERS",
    "VP_SAMPLERS",
    "CartesianEulerMaruyama",
    "CartesianKnownAtoms",
    "CartesianPosteriorGuidance",
    "CartesianPredictorCorrector",
    "CartesianRun",
    "CartesianSampler",
    "ClassifierFreeGuidance",
    "DPMSolver2M",
    "DPMSolver2MSDE",
    "Denoised",
    "KnownAtoms",
    "KnownValues",
    "PointCloudGuidance",
    "PosteriorGuidance",
    "Restarts",
    "Sampler",
    "SamplingHook",
    "ScoreFunction",
    "StructureLoss",
    "TorusEulerMaruyama",
    "TorusPredictorCorrector",
    "TorusSampler",
    "VPPosteriorGuidance",
    "VPRun",
    "VPSampler",
    "VPStep",
    "cartesian_sampler",
    "classifier_free_guidance",
    "classifier_free_prediction",
    "torus_sampler",
    "vp_sampler",
]
