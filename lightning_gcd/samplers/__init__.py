"""Samplers of the torus particle model, one class per file, behind one small interface (``base``).

A sampler integrates the reverse process from uniform positions; what the network is asked, and what is
held fixed, comes from composable pieces: ``classifier_free_prediction`` (guidance) and ``KnownAtoms``
(in-painting) wrap the score function the sampler calls.
"""

from lightning_gcd.samplers.base import ScoreFunction, TorusSampler
from lightning_gcd.samplers.cfg import classifier_free_prediction
from lightning_gcd.samplers.known_atoms import KnownAtoms
from lightning_gcd.samplers.registry import TORUS_SAMPLERS, torus_sampler
from lightning_gcd.samplers.torus_em import TorusEulerMaruyama
from lightning_gcd.samplers.torus_pc import TorusPredictorCorrector

__all__ = [
    "TORUS_SAMPLERS",
    "KnownAtoms",
    "ScoreFunction",
    "TorusEulerMaruyama",
    "TorusPredictorCorrector",
    "TorusSampler",
    "classifier_free_prediction",
    "torus_sampler",
]
