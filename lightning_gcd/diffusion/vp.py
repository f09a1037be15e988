"""Variance-preserving discrete-time Gaussian diffusion (DDPM / DDIM) for tensors of any shape.

Used for voxel grids (B, C, D, H, W), but nothing here depends on the layout beyond a leading batch
dimension. This module holds the forward process, the conversions between predictions and the training loss;
the samplers (DDPM, DDIM, DPM-Solver++) are classes in ``lightning_gcd.samplers``, one per file, and
:meth:`GaussianDiffusion.sample` runs one of them. Classifier-free guidance, posterior guidance, in-painting
and restarts compose around it (``samplers.ClassifierFreeGuidance``, hooks, ``samplers.Restarts``).

Conventions
-----------
- **Step index** ``t_index`` ∈ {0, ..., T-1}: ``x_t = sqrt(ā[t]) x0 + sqrt(1 - ā[t]) eps`` with
  ``ā = schedule.alphas_cumprod``. Index 0 is the least noisy step, ``T-1`` the noisiest. (``t_index = i``
  is step ``i + 1`` in the notation of Ho et al.)
- **Network time** ``t = (t_index + 1) / T`` ∈ (0, 1]: 1 is the noise end, → 0 the data end, for any T and
  for respaced samplers alike (see :meth:`GaussianDiffusion.time`). This is what the model receives.
- **Model** is any callable ``model(x_t, t, cond, cond_keep) -> prediction`` with ``x_t`` shaped like the
  data, ``t`` (B,) float, ``cond`` (B, ...) or None, ``cond_keep`` (B,) bool or None (None keeps all).
- **prediction** names what the model outputs and hence the regression target of the loss:
  ``"eps"`` the noise, ``"x0"`` the clean data, ``"v"`` the velocity ``sqrt(ā) eps - sqrt(1-ā) x0``
  (Salimans & Ho 2022), ``"blend"`` an estimate ``F`` of x0 blended with the noisy input:
  ``x0 = c x̃ + (1 - c) F`` with ``x̃ = x_t / sqrt(ā)``, noise ``σ² = (1 - ā)/ā`` and ``c = σ_d²/(σ² + σ_d²)``
  for a data scale ``σ_d`` (``blend_sigma_data``). Where the data are a known point plus Gaussian scatter of
  width σ_d (atoms at lattice sites with thermal displacements) and F is that point, this is the exact
  posterior mean; it is the identity where the noise is far below σ_d and plain x0-prediction far above it.
  The loss is the plain mean squared error on that target
  (optionally weighted), or on the implied x0 (``loss_space="x0"``).
- **Self-conditioning** (``self_condition=True``; Chen, Zhang & Hinton 2023, "Analog Bits"): the model's
  input is ``x_t`` concatenated along dim 1 with an estimate of x0 (zeros, or the model's own previous
  prediction), so it has twice the data's channels and returns the data's. Training feeds zeros half the
  time and, the other half, the model's own first-pass prediction at the same ``x_t`` (no gradient through
  it); samplers feed the previous step's x0. Each step can then refine a decision instead of re-making it
  from ``x_t`` alone: meant for data on a discrete set (occupied / empty voxels).
- **Guidance** ``pred = uncond + w (cond - uncond)`` is applied to the model's raw output. Every conversion
  from the raw output to eps (or x0) is affine in the output with coefficients fixed by ``x_t`` and ``t``, and
  the guidance weights (1 - w, w) sum to one, so this is exactly guidance on eps, whatever ``prediction`` is.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import torch

from lightning_gcd.diffusion.schedules import VPSchedule
from lightning_gcd.samplers.cfg import classifier_free_guidance
from lightning_gcd.samplers.hooks import SamplingHook
from lightning_gcd.samplers.known_values import broadcasts_to
from lightning_gcd.samplers.registry import VP_SAMPLERS, vp_sampler
from lightning_gcd.samplers.restarts import Restarts, restart_steps
from lightning_gcd.samplers.vp_base import VPDenoiser, VPRun, VPSampler
from lightning_gcd.samplers.vp_denoiser import ClippedDenoiser, NetworkDenoiser

__all__ = [
    "TIMESTEP_SPACINGS",
    "SAMPLERS",
    "GaussianDiffusion",
    "Prediction",
    "Sampler",
    "classifier_free_guidance",
    "respaced_timesteps",
]

Prediction = Literal["eps", "x0", "v", "blend"]
PREDICTIONS = ("eps", "x0", "v", "blend")
Sampler = Literal["ddpm", "ddim", "dpm2m", "dpm2m-sde"]
#: the VP samplers' names (``lightning_gcd.samplers.registry.vp_sampler``)
SAMPLERS = VP_SAMPLERS
Model = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None", "torch.Tensor | None"], torch.Tensor]


#: How ``respaced_timesteps`` places few steps: evenly in the step index, quadratically (denser at low
#: noise, as DDIM's "quad" option), or evenly in log-SNR (as DPM-Solver recommends for few steps).
TIMESTEP_SPACINGS = ("uniform", "quadratic", "logsnr")
LOGSNR_FLOOR = -8.0


def respaced_timesteps(
    T: int, steps: int, spacing: str = "uniform", alphas_cumprod: torch.Tensor | None = None
) -> list[int]:
    """``steps`` distinct step indices from ``T-1`` down to 0 (or just ``[T-1]``), descending.

    The first index is always ``T-1`` (sampling starts from pure noise); with ``steps >= 2`` the last is 0.
    ``spacing`` (``TIMESTEP_SPACINGS``): ``uniform`` in the index; ``quadratic``: index ``(T-1)(1-k/(s-1))²``;
    ``logsnr``: evenly spaced in log(ā/(1-ā)) from max(its value at T-1, ``LOGSNR_FLOOR``) to its value at
    0 (needs ``alphas_cumprod``, (T,)); the first step stays T-1.
    Indices that would coincide are pushed apart by one, so there are always exactly ``steps``.
    """
    if not 1 <= steps <= T:
        raise ValueError(f"the number of sampling steps must be in [1, T={T}], got {steps}")
    if spacing not in TIMESTEP_SPACINGS:
        raise ValueError(f"unknown timestep spacing {spacing!r}; choose one of {', '.join(TIMESTEP_SPACINGS)}")
    if steps == 1:
        return [T - 1]
    frac = [1 - k / (steps - 1) for k in range(steps)]  # 1 -> 0
    if spacing == "uniform":  # spacing >= 1 between consecutive reals, so the rounded indices are distinct
        return [int(round((T - 1) * f)) for f in frac]
    if spacing == "quadratic":
        raw = [int(round((T - 1) * f * f)) for f in frac]
    else:
        if alphas_cumprod is None:
            raise ValueError("logsnr spacing needs the schedule's alphas_cumprod")
        ac = alphas_cumprod.double().clamp(1e-12, 1 - 1e-12)
        lam = torch.log(ac / (1 - ac))  # (T,) decreasing in the index
        # the noisy end: no lower than -8 (signal/noise e^-4 = 2 %); the cosine schedule's own end (about
        # -20) would spend several of few steps where nothing is decided
        low = max(float(lam[T - 1]), LOGSNR_FLOOR)
        targets = low + (float(lam[0]) - low) * (1 - torch.tensor(frac, dtype=torch.float64))
        raw = [int(torch.argmin((lam - v).abs())) for v in targets]
    out = [T - 1]
    for k in range(1, steps):  # strictly decreasing, leaving room for the steps still to come
        out.append(max(min(raw[k], out[-1] - 1), steps - 1 - k))
    out[-1] = 0
    return out


def _randn(
    shape: Sequence[int], generator: torch.Generator | None, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """Standard normal noise; drawn on the generator's own device (so a CPU generator works for CUDA data)."""
    if generator is None:
        return torch.randn(tuple(shape), device=device, dtype=dtype)
    return torch.randn(tuple(shape), generator=generator, device=generator.device, dtype=dtype).to(device)


class GaussianDiffusion:
    """VP DDPM/DDIM diffusion: forward noising, the training loss, and samplers.

    Args:
        prediction: what the model predicts: ``"eps"``, ``"x0"`` (default; it worked best for the
            sparse occupancy grids of the GCDM probe) or ``"v"``.
        schedule: a schedule name (``"cosine"``, ``"linear"``) or a :class:`VPSchedule`.
        T: number of discrete training steps (ignored when ``schedule`` is a :class:`VPSchedule`).
        loss_space: where the training loss compares prediction and truth: ``"prediction"`` (default: the
            model output against its own target, eps, x0 or v) or ``"x0"`` (the x0 implied by the output
            against the clean data, whatever the model predicts). ``"x0"`` with v-prediction keeps v's
            implicit skip connection (x0 = sqrt(ā) x_t - sqrt(1-ā) v: the identity at low noise) while
            weighting the noise levels like x0-prediction does: the v loss weighted by (1 - ā).
        blend_sigma_data: the data scale σ_d of the ``"blend"`` prediction (module docstring): one number,
            or one per channel (dim 1), e.g. each offset channel's own scale.
        self_condition: condition the model on its own previous x0 estimate (module docstring); the model
            then takes ``2C`` input channels for ``C``-channel data.
        self_condition_prob: the fraction of training batches that get the first-pass estimate (the rest
            get zeros, which is what the first sampling step sees).
        self_condition_clip: clamp the training first-pass estimate to ``(low, high)``, as ``sample(clip_x0=)``
            clamps the estimate a sampler passes on (None: no clamp).

    A plain Python object with no parameters or buffers: the float64 schedule stays on the CPU and the few
    coefficients a call needs are cast to the data's dtype and device (cached per device), so neither
    ``.half()`` nor ``.to(device)`` of a surrounding module can degrade it.
    """

    def __init__(
        self,
        prediction: Prediction = "x0",
        schedule: str | VPSchedule = "cosine",
        T: int = 1000,
        loss_space: str = "prediction",
        blend_sigma_data: float | Sequence[float] = 1.0,
        self_condition: bool = False,
        self_condition_prob: float = 0.5,
        self_condition_clip: tuple[float, float] | None = None,
        input_perturbation: float = 0.0,
    ) -> None:
        if prediction not in PREDICTIONS:
            raise ValueError(f"unknown prediction {prediction!r}; choose one of {', '.join(PREDICTIONS)}")
        scales = (
            [float(blend_sigma_data)]
            if isinstance(blend_sigma_data, (int, float))
            else [float(v) for v in blend_sigma_data]
        )
        if not scales or not all(v > 0 for v in scales):
            raise ValueError(f"blend_sigma_data must be positive, got {blend_sigma_data}")
        self.blend_sigma_data: float | tuple[float, ...] = (
            scales[0] if isinstance(blend_sigma_data, (int, float)) else tuple(scales)
        )
        if loss_space not in ("prediction", "x0"):
            raise ValueError(f"unknown loss_space {loss_space!r}; choose 'prediction' or 'x0'")
        self.loss_space = loss_space
        self.prediction: Prediction = prediction
        self.schedule = schedule if isinstance(schedule, VPSchedule) else VPSchedule.from_name(schedule, T)
        self._tables: dict[torch.device, torch.Tensor] = {}
        self.channel_predictions: tuple[str, ...] | None = None
        self.timestep_spacing = "uniform"  # default of ``sample(spacing=None)``
        if not 0.0 <= self_condition_prob <= 1.0:
            raise ValueError(f"self_condition_prob must be in [0, 1], got {self_condition_prob}")
        self.self_condition = bool(self_condition)
        self.self_condition_prob = float(self_condition_prob)
        self.self_condition_clip = (
            None if self_condition_clip is None else (float(self_condition_clip[0]), float(self_condition_clip[1]))
        )
        if not 0.0 <= input_perturbation < 1.0:
            raise ValueError(f"input_perturbation must be in [0, 1), got {input_perturbation}")
        # DDPM-IP (Ning et al. 2023): the training input is noised with eps + gamma * xi while the target keeps
        # eps, so the network learns to correct the slightly-off inputs that its own sampler produces
        # (exposure bias). 0 turns it off; the paper uses 0.1.
        self.input_perturbation = float(input_perturbation)

    def set_channel_predictions(self, kinds: Sequence[str] | None) -> None:
        """Predict a different quantity per channel (dim 1): e.g. ``["x0", "v", "v", "v"]``.

        ``None`` (or every entry equal to ``prediction``) returns to one kind for all channels. The
        conversions are elementwise, so each channel simply follows its own kind in the loss and samplers.
        """
        if kinds is None or all(k == self.prediction for k in kinds):
            self.channel_predictions = None
            return
        bad = [k for k in kinds if k not in PREDICTIONS]
        if bad:
            raise ValueError(f"unknown prediction(s) {bad}; choose from {', '.join(PREDICTIONS)}")
        self.channel_predictions = tuple(kinds)

    def _channel_mask(self, kind: str, like: torch.Tensor) -> torch.Tensor:
        """(1, C, 1, ...) bool: the channels that predict ``kind``."""
        kinds = self.channel_predictions
        assert kinds is not None
        if like.ndim < 2 or like.shape[1] != len(kinds):
            raise ValueError(
                f"per-channel predictions {kinds} need (B, {len(kinds)}, ...) tensors, got {tuple(like.shape)}"
            )
        mask = torch.tensor([k == kind for k in kinds], device=like.device)
        return mask.view(1, -1, *([1] * (like.ndim - 2)))

    def __repr__(self) -> str:
        per_channel = f", channel_predictions={self.channel_predictions!r}" if self.channel_predictions else ""
        loss = f", loss_space={self.loss_space!r}" if self.loss_space != "prediction" else ""
        if self.self_condition:
            loss += ", self_condition=True"
        if "blend" in (self.channel_predictions or (self.prediction,)):
            loss += f", blend_sigma_data={self.blend_sigma_data!r}"
        return (
            f"GaussianDiffusion(prediction={self.prediction!r}{per_channel}{loss}, "
            f"schedule={self.schedule.name!r}, T={self.T})"
        )

    @property
    def T(self) -> int:
        return self.schedule.T

    # ------------------------------------------------------------------ coefficients

    def time(self, t_index: int | torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Network time of a step index: ``(t_index + 1) / T`` ∈ (0, 1]."""
        # float32 arithmetic (exact for integer indices < 2**24, and available on every backend), then cast.
        return (torch.as_tensor(t_index).to(torch.float32) + 1.0).div(self.T).to(dtype)

    def _alpha_bar(self, t_index: int | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """ā at ``t_index`` (int or (B,) tensor) in float64 on ``like``'s device, shaped to broadcast to ``like``."""
        device = like.device
        table = self._tables.get(device)
        if table is None:
            # MPS has no float64; every other backend keeps the schedule in double precision.
            table_dtype = torch.float32 if device.type == "mps" else torch.float64
            table = self._tables[device] = self.schedule.alphas_cumprod.to(device=device, dtype=table_dtype)
        if isinstance(t_index, int):
            return table[t_index]
        t_index = t_index.to(device=device, dtype=torch.long)
        if t_index.ndim == 0:
            return table[t_index]
        if t_index.shape != like.shape[:1]:
            raise ValueError(f"t_index has shape {tuple(t_index.shape)}, expected ({like.shape[0]},) or a scalar")
        return table[t_index].reshape(-1, *([1] * (like.ndim - 1)))

    def _coefs(self, t_index: int | torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(sqrt(ā), sqrt(1 - ā)) at ``t_index``, in ``like``'s dtype, broadcastable to ``like``."""
        a = self._alpha_bar(t_index, like)
        return a.sqrt().to(like.dtype), (1.0 - a).sqrt().to(like.dtype)

    # ------------------------------------------------------------------ forward process and conversions

    def q_sample(self, x0: torch.Tensor, t_index: int | torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Noise clean data to step ``t_index``: ``sqrt(ā) x0 + sqrt(1-ā) noise``."""
        sa, s1a = self._coefs(t_index, x0)
        return sa * x0 + s1a * noise

    def x0_from_eps(self, x_t: torch.Tensor, t_index: int | torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        sa, s1a = self._coefs(t_index, x_t)
        return (x_t - s1a * eps) / sa

    def eps_from_x0(self, x_t: torch.Tensor, t_index: int | torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        sa, s1a = self._coefs(t_index, x_t)
        return (x_t - sa * x0) / s1a

    def v_from_x0_eps(self, x0: torch.Tensor, eps: torch.Tensor, t_index: int | torch.Tensor) -> torch.Tensor:
        """Velocity ``sqrt(ā) eps - sqrt(1-ā) x0``."""
        sa, s1a = self._coefs(t_index, x0)
        return sa * eps - s1a * x0

    def x0_from_v(self, x_t: torch.Tensor, t_index: int | torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        sa, s1a = self._coefs(t_index, x_t)
        return sa * x_t - s1a * v

    def eps_from_v(self, x_t: torch.Tensor, t_index: int | torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        sa, s1a = self._coefs(t_index, x_t)
        return s1a * x_t + sa * v

    def _blend_coefs(
        self, t_index: int | torch.Tensor, like: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(1/sqrt(ā), σ = sqrt((1-ā)/ā), c = σ_d²/(σ² + σ_d²)) of the ``"blend"`` prediction, in ``like``'s dtype."""
        a = self._alpha_bar(t_index, like)
        sd = self.blend_sigma_data
        if isinstance(sd, tuple):  # one per channel: (1, C, 1, ...)
            if like.ndim < 2 or like.shape[1] != len(sd):
                raise ValueError(
                    f"per-channel blend_sigma_data {sd} needs (B, {len(sd)}, ...) tensors, got {tuple(like.shape)}"
                )
            sd = torch.tensor(sd, dtype=a.dtype, device=a.device).view(1, -1, *([1] * (like.ndim - 2)))
        sigma2 = (1.0 - a) / a
        c = sd**2 / (sigma2 + sd**2)
        return a.rsqrt().to(like.dtype), sigma2.sqrt().to(like.dtype), c.to(like.dtype)

    def split_prediction(
        self, pred: torch.Tensor, x_t: torch.Tensor, t_index: int | torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Turn a raw model output (of kind ``self.prediction``, or per channel) into ``(x0, eps)``."""
        if self.channel_predictions is not None:
            x0, eps = pred.clone(), pred.clone()
            for kind in set(self.channel_predictions):
                m = self._channel_mask(kind, pred)
                k_x0, k_eps = self._split_one(kind, pred, x_t, t_index)
                x0, eps = torch.where(m, k_x0, x0), torch.where(m, k_eps, eps)
            return x0, eps
        return self._split_one(self.prediction, pred, x_t, t_index)

    def _split_one(
        self, kind: str, pred: torch.Tensor, x_t: torch.Tensor, t_index: int | torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if kind == "eps":
            return self.x0_from_eps(x_t, t_index, pred), pred
        if kind == "x0":
            return pred, self.eps_from_x0(x_t, t_index, pred)
        if kind == "blend":
            inv_sa, _, c = self._blend_coefs(t_index, x_t)
            x0 = c * inv_sa * x_t + (1.0 - c) * pred
            return x0, self.eps_from_x0(x_t, t_index, x0)
        return self.x0_from_v(x_t, t_index, pred), self.eps_from_v(x_t, t_index, pred)

    def target(self, x0: torch.Tensor, eps: torch.Tensor, t_index: int | torch.Tensor) -> torch.Tensor:
        """What the model should output for ``x_t = q_sample(x0, t_index, eps)``: eps, x0 or v (per channel
        when ``channel_predictions`` is set)."""
        if self.channel_predictions is not None:
            out = x0.clone()
            for kind in set(self.channel_predictions):
                out = torch.where(self._channel_mask(kind, x0), self._target_one(kind, x0, eps, t_index), out)
            return out
        return self._target_one(self.prediction, x0, eps, t_index)

    def _target_one(self, kind: str, x0: torch.Tensor, eps: torch.Tensor, t_index: int | torch.Tensor) -> torch.Tensor:
        if kind == "eps":
            return eps
        if kind == "x0":
            return x0
        if kind == "blend":  # F such that c x̃ + (1 - c) F = x0, with x̃ = x0 + σ eps
            _, sigma, c = self._blend_coefs(t_index, x0)
            return x0 - c * sigma * eps / (1.0 - c)
        return self.v_from_x0_eps(x0, eps, t_index)

    # ------------------------------------------------------------------ training

    def model_input(self, x_t: torch.Tensor, x0_estimate: torch.Tensor | None) -> torch.Tensor:
        """What the model is given for ``x_t``: ``x_t`` itself, or with self-conditioning ``x_t`` and the x0
        estimate (zeros when None) concatenated along dim 1: (B, C, ...) -> (B, 2C, ...)."""
        if not self.self_condition:
            return x_t
        if x0_estimate is None:
            x0_estimate = torch.zeros_like(x_t)
        return torch.cat([x_t, x0_estimate.detach().to(x_t.dtype)], dim=1)

    def training_loss(
        self,
        model: Model,
        x0: torch.Tensor,
        cond: torch.Tensor | None = None,
        cond_drop_prob: float = 0.0,
        generator: torch.Generator | None = None,
        weights: torch.Tensor | None = None,
        t_index: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Denoising loss: mean squared error between the model output and its target (``self.prediction``),
        or between the implied x0 and the clean data when ``loss_space`` is ``"x0"``.

        Args:
            model: ``model(x_t, t, cond, cond_keep)``; see the module docstring.
            x0: (B, ...) clean data.
            cond: (B, ...) condition, or None.
            cond_drop_prob: probability of dropping each sample's condition (``cond_keep`` False), so that the
                same network learns the unconditional prediction used by classifier-free guidance.
            generator: for the step indices (uniform over {0..T-1}), the noise and the dropout mask.
            weights: optional tensor broadcastable to ``x0`` (e.g. (1, C, 1, 1, 1) per-channel weights);
                the loss is ``mean(weights * (pred - target)**2)`` over all elements.
            t_index, noise: optional (B,) step indices and x0-shaped noise to use instead of drawing them
                (a deterministic validation loss draws them per structure from the structure's index).
                Given both, a self-conditioned model always gets its first-pass estimate (as when sampling),
                so the loss stays deterministic, and ``input_perturbation`` is not applied.
        Returns:
            scalar loss.
        """
        if not 0.0 <= cond_drop_prob <= 1.0:
            raise ValueError(f"cond_drop_prob must be in [0, 1], got {cond_drop_prob}")
        b, device = x0.shape[0], x0.device
        gen_device = generator.device if generator is not None else device
        fixed = t_index is not None and noise is not None
        if t_index is None:
            t_index = torch.randint(0, self.T, (b,), generator=generator, device=gen_device).to(device)
        if noise is None:
            noise = _randn(x0.shape, generator, device, x0.dtype)
        input_noise = noise
        if self.input_perturbation > 0.0 and not fixed:  # a fixed-noise (validation) loss stays unperturbed
            input_noise = noise + self.input_perturbation * _randn(x0.shape, generator, device, x0.dtype)
        x_t = self.q_sample(x0, t_index, input_noise)
        keep = None
        if cond is not None and cond_drop_prob > 0.0:
            keep = (torch.rand((b,), generator=generator, device=gen_device) >= cond_drop_prob).to(device)
        t = self.time(t_index, x0.dtype)
        estimate = None
        if self.self_condition and (
            fixed or float(torch.rand((), generator=generator, device=gen_device)) < self.self_condition_prob
        ):
            with torch.no_grad():
                estimate = self.split_prediction(model(self.model_input(x_t, None), t, cond, keep), x_t, t_index)[0]
                if self.self_condition_clip is not None:
                    estimate = estimate.clamp(*self.self_condition_clip)
        pred = model(self.model_input(x_t, estimate), t, cond, keep)
        if pred.shape != x0.shape:
            raise ValueError(f"model output has shape {tuple(pred.shape)}, expected {tuple(x0.shape)}")
        if self.loss_space == "x0":
            sq = (self.split_prediction(pred, x_t, t_index)[0] - x0) ** 2
        else:
            sq = (pred - self.target(x0, noise, t_index)) ** 2
        if weights is not None:
            weights = weights.to(device=device, dtype=sq.dtype)
            if not broadcasts_to(weights.shape, sq.shape):
                raise ValueError(f"weights of shape {tuple(weights.shape)} do not broadcast to {tuple(sq.shape)}")
            sq = sq * weights
        return sq.mean()

    # ------------------------------------------------------------------ sampling

    def chain(
        self,
        steps: int | None = None,
        spacing: str | None = None,
        restarts: int = 0,
        restart_t_index: int | None = None,
    ) -> tuple[list[int], list[int]]:
        """The step indices ``sample`` visits: the chain (``steps`` respaced with ``spacing``) and the part of
        it each restart runs again (its steps at or below ``restart_t_index``; empty without restarts)."""
        timesteps = respaced_timesteps(
            self.T,
            self.T if steps is None else int(steps),
            spacing or self.timestep_spacing,
            self.schedule.alphas_cumprod,
        )
        if not restarts:
            return timesteps, []
        return timesteps, restart_steps(timesteps, restart_t_index, self.T)

    def network_evaluations(
        self,
        steps: int | None = None,
        spacing: str | None = None,
        restarts: int = 0,
        restart_t_index: int | None = None,
    ) -> int:
        """Model calls per sample (per guidance branch) of ``sample`` with these settings."""
        timesteps, again = self.chain(steps, spacing, restarts, restart_t_index)
        return len(timesteps) + int(restarts) * len(again)

    @torch.no_grad()
    def sample(
        self,
        model: Model,
        shape: Sequence[int],
        sampler: str | VPSampler | Restarts = "ddim",
        steps: int | None = None,
        eta: float = 0.0,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        progress: bool = False,
        clip_x0: tuple[float, float] | None = None,
        dtype: torch.dtype = torch.float32,
        spacing: str | None = None,
        hooks: Sequence[SamplingHook] = (),
    ) -> torch.Tensor:
        """Generate samples with a VP sampler (``lightning_gcd.samplers``) on ``steps`` respaced steps.

        Put the model in eval mode first (dropout); this method only disables autograd. Guidance, in-painting
        and restarts are not options here but compose around it: wrap the model in
        ``samplers.ClassifierFreeGuidance`` for classifier-free guidance, pass ``samplers.KnownValues`` (in-painting)
        or ``samplers.VPPosteriorGuidance`` (DPS) in ``hooks``, and wrap the sampler in ``samplers.Restarts``.

        Args:
            model: ``model(x_t, t, cond, cond_keep)``, called here without a condition.
            shape: (B, ...) shape of the samples.
            sampler: a ``VPSampler`` (or ``Restarts`` around one), or its name: ``"ddpm"`` (ancestral, with the
                respaced betas ``1 - ā[τ_k]/ā[τ_{k-1}]`` of Nichol & Dhariwal, so any number of steps works),
                ``"ddim"`` (Song et al.), or the second-order multistep DPM-Solver++ of Lu et al. (2022) in its
                ODE (``"dpm2m"``) and SDE (``"dpm2m-sde"``) forms: few-step samplers that reuse the previous
                step's x0 prediction (no extra network calls).
            steps: number of model evaluations (per guidance branch, before restarts); default ``T``. Step
                indices from :func:`respaced_timesteps` with ``spacing``.
            eta: DDIM stochasticity when ``sampler`` is a name: 0 deterministic, 1 has the DDPM posterior
                variance. Ignored by the other samplers.
            generator: source of all randomness (initial noise, per-step noise, the hooks' noise); noise is
                drawn on the generator's device and moved to ``device``.
            device: where to sample; default the model's parameters' device, else the CPU.
            progress: show a tqdm progress bar.
            clip_x0: clamp the predicted x0 to ``(low, high)`` at every step (eps is recomputed from it).
            dtype: dtype of the samples.
            spacing: where the ``steps`` fall (``TIMESTEP_SPACINGS``); None: ``self.timestep_spacing``
                ("uniform" unless set, e.g. by the few-step study).
            hooks: ``SamplingHook`` objects, in order (``lightning_gcd.samplers.hooks``): in-painting, posterior
                guidance. Put in-painting after posterior guidance, so that the gradient is taken at the
                in-painted ``x_t``.
        Returns:
            (shape) samples.
        """
        if isinstance(sampler, str):
            sampler = vp_sampler(sampler, eta)
        if clip_x0 is not None and not clip_x0[0] < clip_x0[1]:
            raise ValueError(f"clip_x0 must be (low, high) with low < high, got {clip_x0}")
        shape = tuple(int(s) for s in shape)
        timesteps = respaced_timesteps(
            self.T,
            self.T if steps is None else int(steps),
            spacing or self.timestep_spacing,
            self.schedule.alphas_cumprod,
        )
        if device is None:
            params = getattr(model, "parameters", None)
            first = next(iter(params()), None) if callable(params) else None
            device = first.device if first is not None else torch.device("cpu")
        device = torch.device(device)
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(desc=f"{sampler.name} sampling", total=sampler.chain_evaluations(timesteps, self.T), leave=False)
        run = VPRun(
            self,
            shape,
            device,
            dtype,
            noise=lambda: _randn(shape, generator, device, dtype),
            clip_x0=clip_x0,
            hooks=tuple(hooks),
            progress=None if bar is None else lambda: bar.update(1),
        )
        for hook in run.hooks:
            hook.start(run)
        denoise: VPDenoiser = NetworkDenoiser(self, model)
        for hook in run.hooks:
            denoise = hook.wrap(denoise, run)
        if clip_x0 is not None:
            denoise = ClippedDenoiser(denoise, self, clip_x0)
        x = sampler.run(run.noise(), denoise, timesteps, run)  # from x at step T-1 ~ N(0, I) (ā[T-1] ≈ 0)
        if bar is not None:
            bar.close()
        for hook in reversed(run.hooks):
            x = hook.finish(x, run)
        return x
