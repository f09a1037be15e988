"""The sampler classes' interface: names, network-call counts, and the wrappers' contracts.

What the samplers compute is pinned bit for bit by ``test_sampler_pinning.py``; their accuracy is tested in
``test_vp_diffusion.py``, ``test_ve_diffusion.py`` and ``test_torus_particle.py``.
"""

from __future__ import annotations

import pytest
import torch

from lightning_gcd.diffusion import GaussianDiffusion, VEParticleDiffusion
from lightning_gcd.samplers import (
    CARTESIAN_SAMPLERS,
    DDIM,
    VP_SAMPLERS,
    CartesianPredictorCorrector,
    ClassifierFreeGuidance,
    PointCloudGuidance,
    Restarts,
    Sampler,
    VPPosteriorGuidance,
    cartesian_sampler,
    vp_sampler,
)


def test_every_named_sampler_is_a_sampler_of_that_name() -> None:
    for name in VP_SAMPLERS:
        assert isinstance(vp_sampler(name), Sampler) and vp_sampler(name).name == name
    for name in CARTESIAN_SAMPLERS:
        assert isinstance(cartesian_sampler(name, 3), Sampler) and cartesian_sampler(name, 3).name == name
    assert vp_sampler("ddim", eta=0.5).eta == 0.5
    with pytest.raises(ValueError, match="unknown sampler 'euler'"):
        vp_sampler("euler")
    with pytest.raises(ValueError, match="eta"):
        DDIM(-1.0)
    with pytest.raises(ValueError, match="unknown sampler"):
        cartesian_sampler("ddim", 3)
    with pytest.raises(ValueError, match="steps"):
        cartesian_sampler("em", 0)


class CallCounter:
    """A grid model ``model(x, t, cond, keep)`` that counts its calls and returns zeros."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, x, t, cond, keep):
        self.calls += 1
        return torch.zeros_like(x)


@pytest.mark.parametrize("name", VP_SAMPLERS)
def test_vp_chain_evaluations_count_the_network_calls_with_restarts(name: str) -> None:
    d = GaussianDiffusion("x0", "cosine", 100)
    sampler = Restarts(vp_sampler(name), 2, 40)
    model = CallCounter()
    d.sample(model, (2, 3), sampler=sampler, steps=8)
    timesteps, _ = d.chain(8)
    assert model.calls == sampler.chain_evaluations(timesteps, d.T)
    assert model.calls == d.network_evaluations(8, restarts=2, restart_t_index=40)


def test_cartesian_evaluations_count_the_network_calls() -> None:
    calls = []

    def model(frac, numbers, mask, cell, t, cond=None, cond_keep=None):
        calls.append(float(t[0]))
        return torch.zeros_like(frac)

    sampler = CartesianPredictorCorrector(4, corrector_steps=3)
    cell = torch.eye(3).expand(1, 3, 3) * 4.0
    VEParticleDiffusion().sample(
        model, cell, torch.full((1, 2), 6), torch.ones(1, 2, dtype=torch.bool), sampler=sampler
    )
    assert len(calls) == sampler.evaluations == 4 * 4


def test_guidance_wrappers_bring_their_own_condition() -> None:
    model = CallCounter()
    with pytest.raises(ValueError, match="own condition"):
        ClassifierFreeGuidance(model, torch.zeros(2, 1), 2.0)(torch.zeros(2, 3), torch.zeros(2), torch.zeros(2, 1))
    with pytest.raises(ValueError, match="batch size"):
        ClassifierFreeGuidance(model, torch.zeros(3, 1), 2.0)(torch.zeros(2, 3), torch.zeros(2))
    with pytest.raises(ValueError, match="own condition"):
        PointCloudGuidance(model, None, 1.0)(*[torch.zeros(1)] * 5, cond=torch.zeros(1))
    with pytest.raises(ValueError, match="scale"):
        VPPosteriorGuidance(lambda x0: x0.sum(), -1.0)
