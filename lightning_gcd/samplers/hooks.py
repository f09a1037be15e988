"""Hooks: what a sampling run is asked to do besides integrating the reverse process.

In-painting and posterior (DPS) guidance are hooks, not parameters of each sampler. A hook can

* ``start``: check its inputs against the run and move them to its device and dtype, once;
* ``impose`` something on the state before each noise level's network evaluations (in-painting puts the known
  values there, noised to the level);
* ``wrap`` the denoiser the sampler calls (posterior guidance evaluates it with autograd and adds its term);
* ``finish`` the sample (in-painting puts the known values back exactly).

Each method gets the ``run``: the family's record of the sampling run (shape, device, noise source, the
diffusion), so a hook needs nothing from the caller but what it adds. Hooks apply in the order given:
``wrap`` nests the first hook innermost, ``impose`` runs them first to last and ``finish`` last to first.
"""

from __future__ import annotations

from typing import Any

__all__ = ["SamplingHook"]


class SamplingHook:
    """A hook that changes nothing; subclasses override what they need."""

    def start(self, run: Any) -> None:
        """Called once before the first level (default: nothing)."""

    def impose(self, state: Any, level: Any, run: Any) -> Any:
        """The state at noise ``level`` before the network sees it (default: unchanged)."""
        return state

    def wrap(self, denoise: Any, run: Any) -> Any:
        """The denoiser the sampler calls (default: ``denoise`` itself)."""
        return denoise

    def finish(self, sample: Any, run: Any) -> Any:
        """The finished sample (default: unchanged)."""
        return sample
