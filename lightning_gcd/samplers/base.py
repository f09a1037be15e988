"""The one interface every sampler shares, whatever the diffusion it integrates.

A sampler is an object that knows how to integrate one reverse process from its prior to data: it has a
``name`` (what configs and ``gcd sample --sampler`` call it), ``evaluations_per_level`` (network calls per
noise level, for cost accounting), and a ``run`` method that takes the starting state, what the network says
about it (a denoiser or score function, already wrapped by classifier-free guidance and any hooks), and a
source of noise, and returns the sample. Each diffusion family refines ``run``'s arguments:
``TorusSampler`` (fractional coordinates on the torus), ``VPSampler`` (the voxel grids' variance-preserving
chain) and ``CartesianSampler`` (wrapped Cartesian positions). What a sampler does not know about is
guidance and in-painting: those are ``SamplingHook`` objects or model wrappers, composed by the caller.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

__all__ = ["Sampler"]


class Sampler(ABC):
    """Integrates a reverse diffusion from its prior; subclasses of each family implement one step."""

    #: the name configs and the command line use
    name: str = ""
    #: network evaluations per noise level (a class constant, or set per instance: a corrector's step count)
    evaluations_per_level: int = 1

    @abstractmethod
    def run(self, *args: Any, **kwargs: Any) -> Any:
        """The sample at the clean end, from the starting state (the family's base class fixes the arguments)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"
