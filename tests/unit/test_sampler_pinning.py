"""Pins the samplers' outputs on fixed seeds: a refactor of the sampling code must not move them.

Every case runs a tiny network with fixed weights (``INIT_SEED``) through one sampler and one combination of
classifier-free guidance, posterior (DPS) guidance, in-painting and restarts, from a fixed sampling seed, and
compares the result against ``tests/data/sampler_reference.pt`` to float32 rounding (``RTOL``, ``ATOL``):

* the VP voxel samplers (``ddpm``, ``ddim`` with eta 0 and 0.6, DPM-Solver++ ``dpm2m`` and ``dpm2m-sde``),
  each plain, with CFG (scale 2), with posterior guidance, in-painting, restarts, and all four together;
  CFG at scale 1 (the single conditional call); eps and v prediction; self-conditioning;
* the Cartesian VE particle sampler (``em``, ``pc``): plain, CFG, in-painting, posterior guidance, all;
* the torus particle samplers (``pc``, ``em``): plain, CFG with in-painting, and a start from a noised
  structure at ``start_time`` 0.5.

The networks use only elementwise operations and small sums (no convolutions or large matrix products), so
their results do not depend on the number of threads. CPU, float32. They do depend, in the last bits, on the
CPU: the reference machine reproduces it bit for bit, while a Xeon with AVX-512 FP16 differs by up to 1.4e-6
relative (a few ulps through a trajectory), so the comparison allows 1e-5 relative; a changed step, schedule
or guidance term moves the outputs by orders of magnitude more.

The cases compose the samplers as the models do: guidance wraps the network (``ClassifierFreeGuidance``,
``PointCloudGuidance``), in-painting and posterior guidance are hooks, restarts wrap the sampler. Before the
samplers became classes (issue #29) the same settings were keyword arguments of ``GaussianDiffusion.sample``
and ``VEParticleDiffusion.sample`` (``cond``, ``guidance_scale``, ``known``, ``known_mask``, ``posterior``,
``posterior_scale``, ``restarts``, ``restart_t_index``); only these calls changed, not the reference.

The reference was written once, from the sampling code before the samplers became classes;
it is the record of that code's outputs, so do not regenerate it to make a failing case pass. Where a change
is meant to alter the outputs (a new torch whose random streams differ, a deliberate change of a sampler),
regenerate it with ``python tests/unit/test_sampler_pinning.py --write`` and say why in the commit.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from lightning_gcd.diffusion.torus import TorusDiffusion, wrap_unit
from lightning_gcd.diffusion.ve import VEParticleDiffusion
from lightning_gcd.diffusion.vp import GaussianDiffusion
from lightning_gcd.samplers import (
    CartesianKnownAtoms,
    CartesianPosteriorGuidance,
    ClassifierFreeGuidance,
    KnownAtoms,
    KnownValues,
    PointCloudGuidance,
    Restarts,
    VPPosteriorGuidance,
    classifier_free_prediction,
    torus_sampler,
    vp_sampler,
)

REFERENCE = Path(__file__).resolve().parents[1] / "data" / "sampler_reference.pt"
INIT_SEED = 1234
SAMPLE_SEED = 7

# ---------------------------------------------------------------- tiny networks


class TinyVoxelNet(torch.nn.Module):
    """``model(x_t (B, C_in, D, H, W), t (B,), cond (B, K) | None, keep (B,) | None) -> (B, C, D, H, W)``:
    a channel mix, a neighbour along D, a time and a condition embedding (a learned null for dropped rows)."""

    def __init__(self, in_channels: int, channels: int, cond_dim: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(INIT_SEED)
        self.mix = torch.nn.Parameter(0.5 * torch.randn(in_channels, channels, generator=g))
        self.neighbour = torch.nn.Parameter(0.3 * torch.randn(channels, generator=g))
        self.time = torch.nn.Parameter(torch.randn(channels, generator=g))
        self.cond = torch.nn.Parameter(0.5 * torch.randn(cond_dim, channels, generator=g))
        self.null = torch.nn.Parameter(0.2 * torch.randn(channels, generator=g))

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None, keep: torch.Tensor | None
    ) -> torch.Tensor:
        h = (x[:, :, None] * self.mix[None, :, :, None, None, None]).sum(1)  # (B, C, D, H, W)
        h = h + self.neighbour[None, :, None, None, None] * torch.roll(h, 1, dims=2)
        c = self.null.expand(x.shape[0], -1)  # (B, C)
        if cond is not None:
            given = (cond[:, :, None] * self.cond[None]).sum(1)
            c = given if keep is None else torch.where(keep[:, None], given, c)
        emb = t[:, None] * self.time[None] + c  # (B, C)
        return torch.tanh(h + emb[:, :, None, None, None])


class TinyParticleNet(torch.nn.Module):
    """``model(frac (B, N, 3), numbers, mask, cell, t (B,), cond=, cond_keep=) -> (B, N, 3)``, zero at padding:
    periodic features of each atom, the mean over the structure's atoms, species, time and condition."""

    def __init__(self, cond_dim: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(INIT_SEED + 1)
        self.sin = torch.nn.Parameter(torch.randn(3, generator=g))
        self.cos = torch.nn.Parameter(torch.randn(3, generator=g))
        self.mean = torch.nn.Parameter(torch.randn(3, generator=g))
        self.species = torch.nn.Parameter(0.5 * torch.randn(3, generator=g))
        self.time = torch.nn.Parameter(torch.randn(3, generator=g))
        self.cond = torch.nn.Parameter(0.5 * torch.randn(cond_dim, 3, generator=g))
        self.null = torch.nn.Parameter(0.2 * torch.randn(3, generator=g))

    def forward(self, frac, numbers, mask, cell, t, cond=None, cond_keep=None) -> torch.Tensor:
        fmask = mask[..., None].to(frac.dtype)
        angle = 2.0 * math.pi * frac
        s, c = torch.sin(angle), torch.cos(angle)
        mean_s = (s * fmask).sum(1) / fmask.sum(1).clamp(min=1.0)  # (B, 3)
        e = self.null.expand(frac.shape[0], -1)
        if cond is not None:
            given = (cond[:, :, None] * self.cond[None]).sum(1)
            e = given if cond_keep is None else torch.where(cond_keep[:, None], given, e)
        h = self.sin * s + self.cos * c + (self.mean * mean_s + self.time * t[:, None] + e)[:, None]
        h = h + self.species * (numbers[..., None] == 6).to(frac.dtype)
        return torch.tanh(h) * fmask


# ---------------------------------------------------------------- VP cases

VP_SHAPE = (2, 2, 4, 4, 4)
VP_STEPS = 6
VP_RESTARTS = (2, 15)  # restarts, restart_t_index
VP_SAMPLERS = {"ddpm": ("ddpm", 0.0), "ddim": ("ddim", 0.0), "ddim_eta": ("ddim", 0.6)}
VP_SAMPLERS.update({"dpm2m": ("dpm2m", 0.0), "dpm2m_sde": ("dpm2m-sde", 0.0)})
VP_VARIANTS = ("plain", "cfg", "posterior", "inpaint", "restarts", "all")


def vp_inputs() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(INIT_SEED + 2)
    known = torch.randn(VP_SHAPE, generator=g).clamp(-1, 1)
    return {"cond": torch.randn(2, 3, generator=g), "target": torch.randn(2, 2, generator=g), "known": known}


def vp_posterior(target: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """(B,) squared distance of each sample's per-channel mean from ``target`` (B, C)."""
    return lambda x0: ((x0.mean(dim=(2, 3, 4)) - target) ** 2).sum(-1)


def run_vp(
    sampler: str,
    eta: float,
    variant: str,
    prediction: str = "x0",
    self_condition: bool = False,
    guidance_scale: float = 2.0,
) -> torch.Tensor:
    diffusion = GaussianDiffusion(prediction, "cosine", T=40, self_condition=self_condition)
    channels = VP_SHAPE[1]
    net = TinyVoxelNet(2 * channels if self_condition else channels, channels, 3).eval()
    inputs = vp_inputs()
    known_mask = torch.zeros(1, 1, 4, 1, 1, dtype=torch.bool)
    known_mask[:, :, :2] = True
    every = variant == "all"
    model = net
    hooks = []
    chain = vp_sampler(sampler, eta)
    if variant == "cfg" or every:
        model = ClassifierFreeGuidance(net, inputs["cond"], guidance_scale)
    if variant == "posterior" or every:
        hooks.append(VPPosteriorGuidance(vp_posterior(inputs["target"]), 0.5))
    if variant == "inpaint" or every:
        hooks.append(KnownValues(inputs["known"], known_mask))
    if variant == "restarts" or every:
        chain = Restarts(chain, *VP_RESTARTS)
    return diffusion.sample(
        model,
        VP_SHAPE,
        sampler=chain,
        steps=VP_STEPS,
        generator=torch.Generator().manual_seed(SAMPLE_SEED),
        clip_x0=(-1.0, 1.0) if prediction == "x0" else None,
        hooks=hooks,
    )


# ---------------------------------------------------------------- particle cases


def particle_inputs(dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(INIT_SEED + 3)
    b, n = 2, 5
    mask = torch.ones(b, n, dtype=torch.bool)
    mask[1, -1] = False  # padding in one structure
    numbers = torch.where(mask, torch.tensor([6, 6, 14, 6, 14]), torch.zeros(b, n, dtype=torch.long))
    cell = torch.tensor([[4.0, 0.0, 0.0], [0.3, 4.5, 0.0], [0.0, 0.2, 5.0]], dtype=dtype).expand(b, 3, 3).clone()
    known_mask = torch.zeros(b, n, dtype=torch.bool)
    known_mask[:, :2] = True
    return {
        "numbers": numbers,
        "mask": mask,
        "cell": cell,
        "cond": torch.randn(b, 3, generator=g, dtype=dtype),
        "known": torch.rand(b, n, 3, generator=g, dtype=dtype),
        "known_mask": known_mask,
        "start": torch.rand(b, n, 3, generator=g, dtype=dtype),
    }


def ve_posterior(frac0, numbers, mask, cell) -> torch.Tensor:
    """(B,) a smooth periodic loss of the denoised positions."""
    return ((torch.sin(2.0 * math.pi * frac0) * mask[..., None]).sum((1, 2)) - 1.0) ** 2


def run_ve(sampler: str, variant: str) -> torch.Tensor:
    diffusion = VEParticleDiffusion(sigma_max=2.0, sigma_min=0.02)
    net = TinyParticleNet(3).eval()
    p = particle_inputs()
    every = variant == "all"
    model = net
    hooks = []
    if variant == "cfg" or every:
        model = PointCloudGuidance(net, p["cond"], 2.0)
    if variant == "posterior" or every:
        hooks.append(CartesianPosteriorGuidance(ve_posterior, 0.3))
    if variant == "inpaint" or every:
        hooks.append(CartesianKnownAtoms(p["known"], p["known_mask"]))
    return diffusion.sample(
        model,
        p["cell"],
        p["numbers"],
        p["mask"],
        steps=5,
        sampler=sampler,
        generator=torch.Generator().manual_seed(SAMPLE_SEED),
        snr=0.2,
        corrector_steps=2,
        hooks=hooks,
    )


def run_torus(sampler: str, variant: str) -> torch.Tensor:
    """As ``TorusParticleDiffusion._sample`` composes it: CFG and ``KnownAtoms`` inside the score function."""
    diffusion = TorusDiffusion(0.005, 0.5)
    net = TinyParticleNet(3).eval()
    p = particle_inputs()
    numbers, mask, cell = p["numbers"], p["mask"], p["cell"]
    b, n = numbers.shape
    fmask = mask[..., None].float()
    generator = torch.Generator().manual_seed(SAMPLE_SEED)
    guided = variant == "cfg_inpaint"
    cond, scale = (p["cond"], 2.0) if guided else (None, 1.0)

    def draw(uniform: bool = False) -> torch.Tensor:
        fn = torch.rand if uniform else torch.randn
        return fn((b, n, 3), generator=generator) * fmask

    known = KnownAtoms(p["known"], p["known_mask"] & mask, draw) if guided else None

    def score(frac: torch.Tensor, t: float, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if known is not None:
            frac = known.impose(frac, sigma)
        tb = torch.full((b,), t)
        pred = classifier_free_prediction(net, frac, numbers, mask, cell, tb, cond, scale)
        return frac, diffusion.score(pred, sigma) * fmask

    start_time = 0.5 if variant == "resume" else 1.0
    start = wrap_unit(p["start"] + 0.05 * draw()) * fmask if variant == "resume" else draw(uniform=True)
    with torch.no_grad():
        frac = torus_sampler(sampler, 4, step_lr=1e-3).run(
            start, score, diffusion, mask.sum(1), draw, False, start_time
        )
    frac = frac * fmask
    return frac if known is None else known.finish(frac) * fmask


# ---------------------------------------------------------------- the cases

CASES: dict[str, Callable[[], torch.Tensor]] = {}
for _name, (_sampler, _eta) in VP_SAMPLERS.items():
    for _variant in VP_VARIANTS:
        CASES[f"vp_{_name}_{_variant}"] = lambda s=_sampler, e=_eta, v=_variant: run_vp(s, e, v)
CASES["vp_ddim_cfg_scale1"] = lambda: run_vp("ddim", 0.0, "cfg", guidance_scale=1.0)
CASES["vp_ddpm_eps_all"] = lambda: run_vp("ddpm", 0.0, "all", prediction="eps")
CASES["vp_dpm2m_v_cfg"] = lambda: run_vp("dpm2m", 0.0, "cfg", prediction="v")
for _sampler in ("ddim", "dpm2m_sde"):
    _s, _e = VP_SAMPLERS[_sampler]
    CASES[f"vp_{_sampler}_selfcond_all"] = lambda s=_s, e=_e: run_vp(s, e, "all", self_condition=True)
for _sampler in ("em", "pc"):
    for _variant in ("plain", "cfg", "inpaint", "posterior", "all"):
        CASES[f"ve_{_sampler}_{_variant}"] = lambda s=_sampler, v=_variant: run_ve(s, v)
    for _variant in ("plain", "cfg_inpaint", "resume"):
        CASES[f"torus_{_sampler}_{_variant}"] = lambda s=_sampler, v=_variant: run_torus(s, v)


#: float32 rounding that differs between CPUs (see the module docstring)
RTOL, ATOL = 1e-5, 1e-6


@pytest.fixture(scope="module")
def reference() -> dict[str, torch.Tensor]:
    return torch.load(REFERENCE, weights_only=True)["cases"]


def test_reference_covers_every_case(reference: dict[str, torch.Tensor]) -> None:
    assert sorted(reference) == sorted(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_sampler_output_is_pinned(name: str, reference: dict[str, torch.Tensor]) -> None:
    torch.set_num_threads(1)
    out = CASES[name]()
    expected = reference[name]
    assert out.dtype == expected.dtype and out.shape == expected.shape
    assert torch.isfinite(out).all()
    close = torch.allclose(out, expected, rtol=RTOL, atol=ATOL)
    assert close, f"{name}: max |difference| {float((out - expected).abs().max()):.3g}"


def write_reference() -> None:
    """Run every case and write the reference (see the module docstring for when this is right)."""
    torch.set_num_threads(1)
    cases = {name: run().detach().clone() for name, run in sorted(CASES.items())}
    REFERENCE.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"torch": str(torch.__version__), "cases": cases}, REFERENCE)
    print(f"wrote {len(cases)} cases to {REFERENCE} ({REFERENCE.stat().st_size / 1e3:.0f} kB)")


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python tests/unit/test_sampler_pinning.py --write")
    write_reference()
