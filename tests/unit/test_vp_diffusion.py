"""Tests of the VP schedules, the Gaussian diffusion conversions, loss and DDPM/DDIM samplers."""

from __future__ import annotations

import math
from itertools import pairwise

import pytest
import torch

from lightning_gcd.diffusion import GaussianDiffusion, VPSchedule, respaced_timesteps
from lightning_gcd.nets import PeriodicUNet3d
from lightning_gcd.samplers import DDIM, DDPM, ClassifierFreeGuidance, KnownValues, Restarts

# ---------------------------------------------------------------- schedules


@pytest.mark.parametrize("name", ["cosine", "linear"])
@pytest.mark.parametrize("T", [1000, 50, 1])
def test_schedule_alphas_cumprod_monotone_in_unit_interval(name, T):
    s = VPSchedule.from_name(name, T)
    ac = s.alphas_cumprod
    assert s.T == T == ac.shape[0]
    assert ac.dtype == torch.float64 and s.betas.dtype == torch.float64
    assert (ac > 0).all() and (ac <= 1).all()
    assert (ac[1:] < ac[:-1]).all()
    assert (s.betas <= 0.999).all()
    if T == 1000:
        assert ac[0] > 0.999 and ac[-1] < 1e-3


def test_unknown_schedule_raises():
    with pytest.raises(ValueError, match="unknown noise schedule 'quadratic'"):
        VPSchedule.from_name("quadratic", 100)
    with pytest.raises(ValueError, match="unknown noise schedule"):
        GaussianDiffusion(schedule="nope")
    with pytest.raises(ValueError, match="prediction"):
        GaussianDiffusion(prediction="score")


def test_respaced_timesteps():
    assert respaced_timesteps(1000, 1) == [999]
    for steps in (2, 5, 50, 999, 1000):
        ts = respaced_timesteps(1000, steps)
        assert len(ts) == len(set(ts)) == steps
        assert ts[0] == 999 and ts[-1] == 0
        assert all(a > b for a, b in pairwise(ts))
    with pytest.raises(ValueError):
        respaced_timesteps(10, 11)
    with pytest.raises(ValueError):
        respaced_timesteps(10, 0)


@pytest.mark.parametrize("spacing", ["quadratic", "logsnr"])
def test_respaced_timesteps_spacings(spacing: str) -> None:
    ac = VPSchedule.from_name("cosine", 1000).alphas_cumprod
    for steps in (2, 5, 10, 50, 999, 1000):
        ts = respaced_timesteps(1000, steps, spacing, ac)
        assert len(ts) == len(set(ts)) == steps and ts[0] == 999 and ts[-1] == 0
        assert all(a > b for a, b in pairwise(ts))
    uniform = respaced_timesteps(1000, 10)
    ts = respaced_timesteps(1000, 10, spacing, ac)
    assert ts[5] < uniform[5]  # both put more of the steps at low noise than uniform spacing does
    if spacing == "logsnr":  # consecutive steps differ by about the same log-SNR
        lam = torch.log(ac / (1 - ac))[ts[1:-1]]
        gaps = (lam[1:] - lam[:-1]).numpy()
        assert gaps.max() < 1.3 * gaps.min()
    with pytest.raises(ValueError, match="spacing"):
        respaced_timesteps(1000, 10, "cubic")


# ---------------------------------------------------------------- conversions


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_conversions_are_mutual_inverses(schedule):
    d = GaussianDiffusion("x0", schedule, 1000)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(6, 2, 4, 4, 4, generator=g, dtype=torch.float64)
    eps = torch.randn(6, 2, 4, 4, 4, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 1, 17, 500, 998, 999])
    x_t = d.q_sample(x0, t, eps)
    v = d.v_from_x0_eps(x0, eps, t)
    tol = dict(atol=1e-8, rtol=1e-8)
    torch.testing.assert_close(d.x0_from_eps(x_t, t, eps), x0, **tol)
    torch.testing.assert_close(d.eps_from_x0(x_t, t, x0), eps, **tol)
    torch.testing.assert_close(d.x0_from_v(x_t, t, v), x0, **tol)
    torch.testing.assert_close(d.eps_from_v(x_t, t, v), eps, **tol)
    for prediction in ("eps", "x0", "v"):
        d.prediction = prediction
        x0_hat, eps_hat = d.split_prediction(d.target(x0, eps, t), x_t, t)
        torch.testing.assert_close(x0_hat, x0, **tol)
        torch.testing.assert_close(eps_hat, eps, **tol)
    # A scalar step index broadcasts like a full batch of it.
    torch.testing.assert_close(d.q_sample(x0, 300, eps), d.q_sample(x0, torch.full((6,), 300), eps))


def test_time_convention():
    d = GaussianDiffusion(T=1000)
    assert d.time(999).item() == 1.0
    assert d.time(0).item() == pytest.approx(1e-3)
    torch.testing.assert_close(d.time(torch.tensor([0, 499])), torch.tensor([0.001, 0.5]))


# ---------------------------------------------------------------- training loss


class _Recorder:
    """A model that records its inputs and returns a fixed value."""

    def __init__(self, value: float = 0.0) -> None:
        self.value = value
        self.calls: list[tuple] = []

    def __call__(self, x, t, cond, keep):
        self.calls.append(
            (x.shape, t.clone(), None if cond is None else cond.clone(), None if keep is None else keep.clone())
        )
        return torch.full_like(x, self.value)


def test_training_loss_targets_weights_and_cond_dropout():
    x0 = torch.ones(4, 2, 4, 4, 4)
    d = GaussianDiffusion("x0", "cosine", 100)
    # x0-prediction with a model that outputs x0 exactly: zero loss.
    assert d.training_loss(_Recorder(1.0), x0).item() == 0.0
    # Channel weights: channel 0 weighted 0, channel 1 weighted 1 -> half the unweighted loss.
    rec = _Recorder(0.0)
    w = torch.tensor([0.0, 1.0]).view(1, 2, 1, 1, 1)
    assert d.training_loss(rec, x0, weights=w).item() == pytest.approx(0.5)
    with pytest.raises(ValueError, match="broadcast"):
        d.training_loss(rec, x0, weights=torch.ones(3))
    # t in (0, 1], one per sample.
    t = rec.calls[-1][1]
    assert t.shape == (4,) and (t > 0).all() and (t <= 1).all()
    # Condition dropout: prob 1 drops all, prob 0 passes keep=None (keep all).
    cond = torch.randn(4, 3)
    d.training_loss(rec, x0, cond=cond, cond_drop_prob=1.0)
    assert rec.calls[-1][3] is not None and not rec.calls[-1][3].any()
    d.training_loss(rec, x0, cond=cond, cond_drop_prob=0.0)
    assert rec.calls[-1][3] is None and torch.equal(rec.calls[-1][2], cond)
    # Same generator seed, same loss.
    net = PeriodicUNet3d(2, base_channels=8, channel_mults=(1, 2), attention=False)
    x = torch.randn(2, 2, 8, 8, 8)
    la = d.training_loss(net, x, generator=torch.Generator().manual_seed(5))
    lb = d.training_loss(net, x, generator=torch.Generator().manual_seed(5))
    assert la.ndim == 0 and torch.isfinite(la)
    assert torch.equal(la, lb)


# ---------------------------------------------------------------- samplers


def _tiny_net(cond_dim: int = 0, seed: int = 0) -> PeriodicUNet3d:
    torch.manual_seed(seed)
    net = PeriodicUNet3d(1, base_channels=8, channel_mults=(1, 2), attention=True, attention_heads=2, cond_dim=cond_dim)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # leave the zero init so the output depends on the input and the condition
        for p in net.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return net.eval()


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpm2m", "dpm2m-sde"])
@pytest.mark.parametrize("steps", [1, 5, 50])
def test_samplers_run_with_any_number_of_steps(sampler, steps):
    d = GaussianDiffusion("x0", "cosine", 1000)
    net = _tiny_net()
    x = d.sample(
        net, (2, 1, 8, 8, 8), sampler=sampler, steps=steps, eta=0.5, generator=torch.Generator().manual_seed(0)
    )
    assert x.shape == (2, 1, 8, 8, 8) and x.dtype == torch.float32
    assert torch.isfinite(x).all()


def test_one_model_call_per_step_without_condition():
    d = GaussianDiffusion("eps", "linear", 100)
    rec = _Recorder(0.0)
    d.sample(rec, (3, 5), sampler="ddpm", steps=7)
    assert len(rec.calls) == 7 and all(c[0] == (3, 5) for c in rec.calls)
    times = [c[1][0].item() for c in rec.calls]
    assert times[0] == 1.0 and times == sorted(times, reverse=True)
    # With a condition and guidance != 0, 1: one batched call of size 2B per step.
    rec = _Recorder(0.0)
    d.sample(ClassifierFreeGuidance(rec, torch.randn(3, 2), 2.0), (3, 5), steps=4)
    assert len(rec.calls) == 4 and all(c[0] == (6, 5) for c in rec.calls)
    assert rec.calls[0][3].tolist() == [True] * 3 + [False] * 3


def test_ddim_eta0_is_deterministic():
    d = GaussianDiffusion("x0", "cosine", 1000)
    net = _tiny_net()
    a = d.sample(net, (2, 1, 8, 8, 8), "ddim", steps=10, eta=0.0, generator=torch.Generator().manual_seed(1))
    b = d.sample(net, (2, 1, 8, 8, 8), "ddim", steps=10, eta=0.0, generator=torch.Generator().manual_seed(1))
    c = d.sample(net, (2, 1, 8, 8, 8), "ddim", steps=10, eta=0.0, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    # eta = 0 draws only the initial noise: the generator's state after sampling is the same for any steps.
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    d.sample(net, (1, 1, 8, 8, 8), "ddim", steps=3, generator=g1)
    d.sample(net, (1, 1, 8, 8, 8), "ddim", steps=6, generator=g2)
    assert torch.equal(torch.randn(4, generator=g1), torch.randn(4, generator=g2))


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
@pytest.mark.parametrize(
    "sampler,eta", [("ddpm", 0.0), ("ddim", 0.0), ("ddim", 1.0), ("dpm2m", 0.0), ("dpm2m-sde", 0.0)]
)
def test_exact_model_recovers_gaussian_data(prediction, sampler, eta):
    """With the exact posterior mean of N(mu, s^2) data, the samplers reproduce that distribution."""
    mu, s = 1.5, 0.3
    d = GaussianDiffusion(prediction, "cosine", 1000)

    def exact(x_t, t, cond, keep):
        t_index = (t.double() * d.T).round().long() - 1
        a = d.schedule.alphas_cumprod[t_index].to(x_t.dtype).view(-1, *([1] * (x_t.ndim - 1)))
        x0 = mu + a.sqrt() * s**2 / (a * s**2 + 1 - a) * (x_t - a.sqrt() * mu)
        return d.target(x0, d.eps_from_x0(x_t, t_index, x0), t_index)

    x = d.sample(
        exact,
        (4000, 1),
        sampler=sampler,
        steps=50,
        eta=eta,
        dtype=torch.float64,
        generator=torch.Generator().manual_seed(0),
    )
    assert x.mean().item() == pytest.approx(mu, abs=0.03)
    assert x.std().item() == pytest.approx(s, rel=0.1)


def test_dpm_solver_is_second_order():
    """On Gaussian data N(mu, s^2) the probability-flow ODE has a closed-form solution (it preserves the
    standardised value (x_t - sqrt(ā) mu) / sqrt(ā s^2 + 1 - ā)), so the end-point error of a deterministic
    sampler measures its order: DPM-Solver++(2M) beats first-order DDIM at equal steps, by more the more
    steps (second against first order)."""
    mu, s = 1.5, 0.3
    d = GaussianDiffusion("x0", "cosine", 1000)
    ac = d.schedule.alphas_cumprod

    def exact(x_t, t, cond, keep):
        t_index = (t.double() * d.T).round().long() - 1
        a = ac[t_index].to(x_t.dtype).view(-1, *([1] * (x_t.ndim - 1)))
        return mu + a.sqrt() * s**2 / (a * s**2 + 1 - a) * (x_t - a.sqrt() * mu)

    x_T = torch.randn((256, 1), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    a_T = float(ac[-1])
    solution = mu + s * (x_T - a_T**0.5 * mu) / (a_T * s**2 + 1 - a_T) ** 0.5

    def error(sampler, steps):
        x = d.sample(
            exact,
            (256, 1),
            sampler=sampler,
            steps=steps,
            dtype=torch.float64,
            generator=torch.Generator().manual_seed(0),
        )  # the same x_T
        return (x - solution).abs().max().item()

    for steps, factor in ((10, 0.9), (20, 0.5), (100, 0.1)):
        assert error("dpm2m", steps) < factor * error("ddim", steps), steps


def test_guidance_zero_equals_unconditional_sampling():
    d = GaussianDiffusion("x0", "cosine", 1000)
    net = _tiny_net(cond_dim=4)
    cond = torch.randn(2, 4, generator=torch.Generator().manual_seed(9))
    for sampler in ("ddim", "ddpm"):
        kw = dict(sampler=sampler, steps=8, eta=1.0)
        uncond = d.sample(net, (2, 1, 8, 8, 8), generator=torch.Generator().manual_seed(4), **kw)
        guided0 = d.sample(
            ClassifierFreeGuidance(net, cond, 0.0), (2, 1, 8, 8, 8), generator=torch.Generator().manual_seed(4), **kw
        )
        conditional = d.sample(
            ClassifierFreeGuidance(net, cond, 1.0), (2, 1, 8, 8, 8), generator=torch.Generator().manual_seed(4), **kw
        )
        assert torch.equal(uncond, guided0)
        assert not torch.allclose(uncond, conditional)


def test_guidance_formula():
    d = GaussianDiffusion("eps", "cosine", 1000)
    net = _tiny_net(cond_dim=4)
    g = torch.Generator().manual_seed(6)
    x = torch.randn(2, 1, 8, 8, 8, generator=g)
    cond = torch.randn(2, 4, generator=g)
    t = d.time(400).expand(2)
    with torch.no_grad():
        u = net(x, t, None)
        c = net(x, t, cond)
        guided = ClassifierFreeGuidance(net, cond, 3.0)(x, t)
    torch.testing.assert_close(guided, u + 3.0 * (c - u), atol=1e-5, rtol=1e-5)


def test_inpainting_with_full_mask_returns_known():
    d = GaussianDiffusion("x0", "cosine", 1000)
    net = _tiny_net()
    known = torch.randn(2, 1, 8, 8, 8, generator=torch.Generator().manual_seed(7))
    full = torch.ones(1, 1, 1, 1, 1, dtype=torch.bool)
    for sampler in ("ddim", "ddpm"):
        x = d.sample(
            net,
            known.shape,
            sampler=sampler,
            steps=5,
            hooks=[KnownValues(known, full)],
            generator=torch.Generator().manual_seed(0),
        )
        assert torch.equal(x, known)
    # A half mask: the known half is exact, the other half is generated.
    half = torch.zeros(1, 1, 8, 1, 1, dtype=torch.bool)
    half[:, :, :4] = True
    x = d.sample(
        net, known.shape, steps=5, hooks=[KnownValues(known, half)], generator=torch.Generator().manual_seed(0)
    )
    assert torch.equal(x[:, :, :4], known[:, :, :4])
    assert not torch.allclose(x[:, :, 4:], known[:, :, 4:])
    with pytest.raises(ValueError, match="both"):
        KnownValues(known, None)
    with pytest.raises(ValueError, match="known has shape"):
        d.sample(net, (1, 1, 8, 8, 8), steps=2, hooks=[KnownValues(known, full)])


def test_clip_x0_progress_and_argument_errors(capsys):
    d = GaussianDiffusion("x0", "cosine", 100)
    x = d.sample(_Recorder(5.0), (2, 3), steps=4, clip_x0=(-1.0, 1.0), progress=True)
    assert torch.equal(x, torch.ones(2, 3))  # the final sample is the clipped x0 prediction
    assert "ddim sampling" in capsys.readouterr().err
    with pytest.raises(ValueError, match="sampler"):
        d.sample(_Recorder(), (2, 3), sampler="euler")
    with pytest.raises(ValueError, match="steps"):
        d.sample(_Recorder(), (2, 3), steps=101)


# ---------------------------------------------------------------- training sanity


def test_training_reduces_loss_and_samples_reproduce_pattern():
    """A tiny U-Net learns one fixed 8³ pattern; x0-prediction DDIM samples reproduce it.

    The net commutes with circular shifts (by multiples of 2 here), and at the noise end its input carries no
    information about where the pattern sits, so a sample is the pattern up to a circular translation, just as
    a generated crystal is the crystal up to the choice of origin: the error is the minimum over translations.
    About 10 s on one CPU thread.
    """
    torch.manual_seed(0)
    r = torch.cos(2 * math.pi * torch.arange(8.0) / 8)
    pattern = ((r[:, None, None] + r[None, :, None] + r[None, None, :]) / 1.5)[None, None]  # (1,1,8,8,8)
    data = pattern.expand(8, -1, -1, -1, -1)
    net = PeriodicUNet3d(1, base_channels=16, channel_mults=(1, 2), attention=False)
    d = GaussianDiffusion("x0", "cosine", 1000)

    def eval_loss() -> float:
        with torch.no_grad():
            return (
                sum(
                    d.training_loss(net, data, generator=torch.Generator().manual_seed(100 + k)).item()
                    for k in range(4)
                )
                / 4
            )

    loss_before = eval_loss()
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(200):
        loss = d.training_loss(net, data, generator=gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
    loss_after = eval_loss()
    assert loss_after < 0.3 * loss_before, (loss_before, loss_after)

    net.eval()
    samples = d.sample(net, (8, 1, 8, 8, 8), "ddim", steps=20, generator=torch.Generator().manual_seed(1))
    shifts = [(a, b, c) for a in range(8) for b in range(8) for c in range(8)]
    err = (
        torch.stack([((samples - torch.roll(pattern, s, dims=(2, 3, 4))) ** 2).mean(dim=(1, 2, 3, 4)) for s in shifts])
        .min(dim=0)
        .values
    )  # (8,) best-translation MSE per sample
    var = pattern.var().item()  # the error of predicting the mean; an untrained net's samples score ~1 + var
    print(f"loss {loss_before:.3f} -> {loss_after:.3f}; best-translation MSE {err.tolist()}, var {var:.3f}")
    assert err.mean().item() < 0.15 * var, err
    assert err.max().item() < 0.3 * var, err


def test_per_channel_predictions_round_trip_and_targets():
    d = GaussianDiffusion("x0", "cosine", 1000)
    d.set_channel_predictions(["x0", "v", "eps"])
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(4, 3, 5, generator=g, dtype=torch.float64)
    eps = torch.randn(4, 3, 5, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 10, 500, 999])
    x_t = d.q_sample(x0, t, eps)
    target = d.target(x0, eps, t)
    assert torch.equal(target[:, 0], x0[:, 0])
    assert torch.allclose(target[:, 1], d.v_from_x0_eps(x0, eps, t)[:, 1])
    assert torch.equal(target[:, 2], eps[:, 2])
    x0_back, eps_back = d.split_prediction(target, x_t, t)  # the exact output gives back x0 and eps
    assert torch.allclose(x0_back[:, :2], x0[:, :2], atol=1e-8)  # eps-channels at t=999 lose x0 precision
    assert torch.allclose(eps_back, eps, atol=1e-6)
    with pytest.raises(ValueError, match="per-channel"):
        d.target(x0[:, :2], eps[:, :2], t)
    with pytest.raises(ValueError, match="unknown prediction"):
        d.set_channel_predictions(["x0", "score"])
    d.set_channel_predictions(["x0"] * 3)  # all equal to `prediction`: back to one kind
    assert d.channel_predictions is None


def test_x0_loss_space_weights_v_loss_by_one_minus_alpha_bar():
    """loss_space="x0" with v-prediction: per element (x0_hat - x0)^2 = (1 - ā) (v_hat - v)^2, so a model
    whose v is off by a constant c has loss (1 - ā) c^2 at that step; x0-prediction channels are unchanged."""
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(3, 2, 4, 4, 4, generator=g)
    noise = torch.randn(3, 2, 4, 4, 4, generator=g)
    t = torch.tensor([5, 400, 990])
    plain = GaussianDiffusion("v", "cosine", 1000)
    in_x0 = GaussianDiffusion("v", "cosine", 1000, loss_space="x0")

    def off_by(c: float):
        def model(x_t, t_net, cond, keep):
            return plain.v_from_x0_eps(x0, noise, t) + c

        return model

    a = plain.schedule.alphas_cumprod[t].float()
    assert plain.training_loss(off_by(0.3), x0, t_index=t, noise=noise).item() == pytest.approx(0.09, rel=1e-5)
    expected = float((1.0 - a).mean()) * 0.09
    assert in_x0.training_loss(off_by(0.3), x0, t_index=t, noise=noise).item() == pytest.approx(expected, rel=1e-4)
    assert in_x0.training_loss(off_by(0.0), x0, t_index=t, noise=noise).item() < 1e-10
    # per channel: x0 for channel 0, v for channel 1; the x0 channel's loss is the plain one
    mixed = GaussianDiffusion("x0", "cosine", 1000, loss_space="x0")
    mixed.set_channel_predictions(["x0", "v"])
    target = mixed.target(x0, noise, t)

    def exact_but_channel0_off(x_t, t_net, cond, keep):
        return target + torch.tensor([0.5, 0.0]).view(1, 2, 1, 1, 1)

    assert mixed.training_loss(exact_but_channel0_off, x0, t_index=t, noise=noise).item() == pytest.approx(
        0.125, rel=1e-4
    )
    assert "loss_space='x0'" in repr(mixed)
    with pytest.raises(ValueError, match="loss_space"):
        GaussianDiffusion("x0", loss_space="eps")


def test_blend_prediction_round_trip_and_posterior_mean():
    """ "blend": the exact F gives back x0 and eps; for data = point + N(0, σ_d²) scatter, F = the point gives
    the exact posterior mean E[x0 | x_t]; at the lowest noise x0 follows x_t, at the highest it is F."""
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(4, 2, 3, generator=g, dtype=torch.float64)
    eps = torch.randn(4, 2, 3, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 100, 600, 999])
    d = GaussianDiffusion("blend", "cosine", 1000, blend_sigma_data=0.1)
    x_t = d.q_sample(x0, t, eps)
    x0_back, eps_back = d.split_prediction(d.target(x0, eps, t), x_t, t)
    assert torch.allclose(x0_back, x0, atol=1e-8) and torch.allclose(eps_back, eps, atol=1e-6)
    _, sigma, c = d._blend_coefs(t, x0)
    assert c.flatten()[0] > 0.9 and c.flatten()[-1] < 1e-4  # identity at low noise, F at high noise
    # Gaussian posterior: x0 ~ N(mu, s²), x̃ = x0 + σ ε  =>  E[x0 | x̃] = (s² x̃ + σ² mu)/(s² + σ²)
    mu, s = 0.3, 0.1
    x_tilde = x_t / d._alpha_bar(t, x_t).sqrt()
    exact = (s**2 * x_tilde + sigma**2 * mu) / (s**2 + sigma**2)
    assert torch.allclose(d.split_prediction(torch.full_like(x_t, mu), x_t, t)[0], exact, atol=1e-9)
    assert "blend_sigma_data=0.1" in repr(d)
    # one σ_d per channel: each channel as with its own scalar
    wide = GaussianDiffusion("blend", "cosine", 1000, blend_sigma_data=1.0)
    both = GaussianDiffusion("blend", "cosine", 1000, blend_sigma_data=(1.0, 0.1))
    per_channel = both.target(x0, eps, t)
    assert torch.allclose(per_channel[:, 0], wide.target(x0, eps, t)[:, 0], atol=1e-12)
    assert torch.allclose(per_channel[:, 1], d.target(x0, eps, t)[:, 1], atol=1e-12)
    with pytest.raises(ValueError, match="per-channel blend_sigma_data"):
        both.target(x0[:, :1], eps[:, :1], t)
    with pytest.raises(ValueError, match="blend_sigma_data"):
        GaussianDiffusion("blend", blend_sigma_data=0.0)


class _SelfConditionedRecorder:
    """A model for C-channel data given 2C channels: records its inputs, returns a fixed x0 guess."""

    def __init__(self, value: float) -> None:
        self.value = value
        self.inputs: list[torch.Tensor] = []

    def __call__(self, x, t, cond, keep):
        self.inputs.append(x.detach().clone())
        c = x.shape[1] // 2
        return torch.full_like(x[:, :c], self.value)


def test_self_conditioning_training_passes_and_sampler_feeds_previous_x0():
    # training: probability 1 gives two calls per loss, the second with the first's x0 (clamped) as channels C:2C
    d = GaussianDiffusion(
        "x0", "cosine", 100, self_condition=True, self_condition_prob=1.0, self_condition_clip=(-1.0, 1.0)
    )
    assert "self_condition=True" in repr(d)
    x0 = torch.randn(4, 3, 2, 2, 2)
    rec = _SelfConditionedRecorder(1.7)
    d.training_loss(rec, x0, generator=torch.Generator().manual_seed(0))
    assert len(rec.inputs) == 2 and all(i.shape == (4, 6, 2, 2, 2) for i in rec.inputs)
    assert torch.equal(rec.inputs[0][:, 3:], torch.zeros(4, 3, 2, 2, 2))
    assert torch.equal(rec.inputs[1][:, 3:], torch.ones(4, 3, 2, 2, 2))  # 1.7 clamped to the clip range
    assert torch.equal(rec.inputs[0][:, :3], rec.inputs[1][:, :3])  # the same x_t both times
    # probability 0: one call with zeros; a fixed (t, noise) validation loss always takes both passes
    never = GaussianDiffusion("x0", "cosine", 100, self_condition=True, self_condition_prob=0.0)
    rec = _SelfConditionedRecorder(0.3)
    never.training_loss(rec, x0)
    assert len(rec.inputs) == 1 and not rec.inputs[0][:, 3:].any()
    rec = _SelfConditionedRecorder(0.3)
    never.training_loss(rec, x0, t_index=torch.full((4,), 10), noise=torch.randn_like(x0))
    assert len(rec.inputs) == 2
    # the learned gradient flows through the second pass only: the loss stays differentiable
    net = PeriodicUNet3d(in_channels=2, out_channels=1, base_channels=8, channel_mults=(1,), attention=False)
    model = lambda x, t, c, k: net(x, t)  # noqa: E731
    loss = d.training_loss(model, torch.randn(2, 1, 4, 4, 4))
    loss.backward()
    assert all(p.grad is not None for p in net.parameters() if p.requires_grad)

    # sampling: zeros at the first step, then each step's (clipped) x0 for every sampler
    for sampler in ("ddpm", "ddim", "dpm2m-sde"):
        rec = _SelfConditionedRecorder(0.4)
        d.sample(rec, (2, 3), sampler=sampler, steps=5, clip_x0=(-0.25, 0.25))
        assert len(rec.inputs) == 5 and all(i.shape == (2, 6) for i in rec.inputs)
        assert not rec.inputs[0][:, 3:].any()
        assert all(torch.allclose(i[:, 3:], torch.full((2, 3), 0.25)) for i in rec.inputs[1:])
    # classifier-free guidance: the batched 2B call carries the estimate in both halves
    rec = _SelfConditionedRecorder(0.4)
    d.sample(ClassifierFreeGuidance(rec, torch.randn(2, 2), 2.0), (2, 3), steps=3)
    assert all(i.shape == (4, 6) for i in rec.inputs)
    assert torch.allclose(rec.inputs[-1][:, 3:], torch.full((4, 3), 0.4))
    with pytest.raises(ValueError, match="self_condition_prob"):
        GaussianDiffusion(self_condition=True, self_condition_prob=1.5)


def test_restart_sampling_repeats_the_low_noise_steps():
    d = GaussianDiffusion("x0", "cosine", 1000)
    rec = _Recorder(0.0)
    d.sample(rec, (2, 3), sampler=Restarts(DDPM(), 2, 400), steps=10)
    times = [round(c[1][0].item() * 1000) - 1 for c in rec.calls]  # back to step indices
    chain = respaced_timesteps(1000, 10)
    below = [i for i in chain if i <= 400]
    assert times == chain + below + below  # the chain, then twice its steps at or below the restart level
    assert d.network_evaluations(10, restarts=2, restart_t_index=400) == len(times) == 10 + 2 * len(below)
    assert d.network_evaluations(10) == 10
    # a restart re-noises with fresh noise: the result differs from the plain chain's, reproducibly
    net = _tiny_net()
    plain = d.sample(net, (1, 1, 8, 8, 8), "ddpm", steps=6, generator=torch.Generator().manual_seed(0))
    again = [
        d.sample(
            net,
            (1, 1, 8, 8, 8),
            Restarts(DDPM(), 1, 300),
            steps=6,
            generator=torch.Generator().manual_seed(0),
        )
        for _ in range(2)
    ]
    assert torch.equal(again[0], again[1]) and not torch.equal(plain, again[0])
    with pytest.raises(ValueError, match="restart_t_index"):
        d.sample(rec, (2, 3), Restarts(DDIM(), 1, 0), steps=4)
    with pytest.raises(ValueError, match="chain step at or below"):
        d.sample(rec, (2, 3), Restarts(DDIM(), 1, 500), steps=1)


def test_input_perturbation_noises_the_input_not_the_target():
    """DDPM-IP: the network sees x_t built from eps + γ ξ but is scored against eps, so a model that returns
    exactly the noise in its input is off by γ ξ (loss ≈ γ²); a fixed-noise (validation) loss is unperturbed."""
    x0 = torch.randn(2, 2, 8, 8, 8, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([100, 700])
    gamma = 0.1

    def returns_input_noise(d: GaussianDiffusion):
        a = d.schedule.alphas_cumprod[t].float().view(-1, 1, 1, 1, 1)

        def model(x_t, t_net, cond, keep):
            return (x_t - a.sqrt() * x0) / (1.0 - a).sqrt()

        return model

    plain = GaussianDiffusion("eps", "cosine", 1000)
    perturbed = GaussianDiffusion("eps", "cosine", 1000, input_perturbation=gamma)
    gen = torch.Generator().manual_seed(1)
    assert plain.training_loss(returns_input_noise(plain), x0, t_index=t, generator=gen).item() < 1e-8
    loss = perturbed.training_loss(returns_input_noise(perturbed), x0, t_index=t, generator=gen).item()
    assert loss == pytest.approx(gamma**2, rel=0.15)  # 2048 elements: the mean of γ² ξ² within ~5 %
    noise = torch.randn(x0.shape, generator=gen)
    assert perturbed.training_loss(returns_input_noise(perturbed), x0, t_index=t, noise=noise).item() < 1e-8
    with pytest.raises(ValueError, match="input_perturbation"):
        GaussianDiffusion("eps", input_perturbation=-0.1)
