"""Variance-exploding diffusion of atomic positions in a fixed periodic cell (the particle baseline).

Following the a-C paper (Kwon, Hsu et al. 2024), positions diffuse by isotropic Gaussian noise in
Cartesian space and are wrapped back into the cell:

    x_t = wrap(x_0 + sigma(t) * eps),   eps ~ N(0, I),   sigma(t) = sigma_min + (sigma_max - sigma_min) * t

with t in [0, 1]. The paper uses ``sigma(t) = 0.8 t`` Å; here ``sigma_max`` defaults to 3.0 Å (noise that
covers a typical nearest-neighbour shell several times over, so that the prior is close to the uniform
distribution the sampler starts from, at least for small cells), and ``sigma_min`` = 0.01 Å keeps
``sigma(0) > 0`` so that ``score = -eps_hat / sigma`` never divides by zero. Both are configurable; use
``sigma_max=0.8, sigma_min=...`` to reproduce the paper.

What the network predicts: ``eps_hat`` (B, N, 3), dimensionless, in Cartesian axes, an estimate of the
noise; the score of the noised positions is ``-eps_hat / sigma(t)`` (Å⁻¹).

Training target (``target=``):

``"wrapped_normal"`` (default, as DiffCSP): on the torus the perturbation kernel is the wrapped normal
    ``p(x_t | x_0) = Σ_L N(x_t - x_0 + L; sigma² I)`` over lattice vectors ``L``; its exact score gives
    the target ``eps* = Σ_L w_L (Δ + L) / sigma`` with ``w_L = softmax_L(-|Δ + L|² / 2 sigma²)`` and
    ``Δ`` the fractionally wrapped displacement. Denoising score matching with it learns the true score
    of the periodic marginal at every noise level. For sigma small against the cell, ``w_L`` is one for
    the nearest image and the target is the minimum-image noise ``Δ_min / sigma`` (= eps). The image sum
    is truncated at ``|n_k| <= min(max_images, ceil(4 sigma / w_k))`` per axis (w_k perpendicular widths),
    which drops weights below exp(-8) except when sigma exceeds ``max_images`` cell widths, where the
    kernel is uniform to within that accuracy anyway.
``"minimum_image"``: ``eps* = minimum_image(x_t - x_0) / sigma``. Exact (= eps) while ``|sigma eps|`` stays
    below half the perpendicular width of a near-orthogonal cell; for larger sigma the wrap picks the
    wrong image for some atoms and the target becomes a biased, bounded (|eps*| <= width / 2 sigma)
    stand-in for the noise. Cheaper; kept for comparison.

Sampling (the classes ``CartesianEulerMaruyama`` and ``CartesianPredictorCorrector`` in
``lightning_gcd.samplers``) starts from uniformly random fractional coordinates (the a-C paper's prior) and
integrates the reverse SDE of ``dx = sqrt(d sigma² / dt) dW`` with the discretisation

    x <- wrap(x + (sigma_k² - sigma_{k+1}²) * score + sqrt(sigma_k² - sigma_{k+1}²) z)

(Euler–Maruyama with exact variance increments, Song et al. 2021's reverse-diffusion predictor); the last
step adds no noise (the denoised mean). ``sampler="pc"`` adds ``corrector_steps`` Langevin corrector steps
per noise level with the signal-to-noise step rule of Song et al. (``snr``).

Classifier-free guidance (``samplers.PointCloudGuidance`` around the model), same convention as the voxel model:
``eps_hat = eps_uncond + guidance_scale * (eps_cond - eps_uncond)``: 0 is unconditional, 1 conditional,
>1 amplified. The unconditional branch is the model called with ``cond=None`` (learned null embedding).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np
import torch

from lightning_gcd.periodic import minimum_image, perpendicular_widths
from lightning_gcd.samplers.cartesian_base import CartesianDenoiser, CartesianRun, CartesianSampler, NetworkNoise
from lightning_gcd.samplers.hooks import SamplingHook
from lightning_gcd.samplers.registry import cartesian_sampler
from lightning_gcd.structures import StructureBatch, wrap_unit

__all__ = ["VEParticleDiffusion", "n_atoms_for_cell"]

Model = Callable[..., torch.Tensor]


def _rand(
    shape, generator: torch.Generator | None, device: torch.device, dtype: torch.dtype, normal: bool
) -> torch.Tensor:
    """Uniform [0, 1) or standard normal numbers, drawn on the generator's own device (a CPU generator
    works for CUDA data, as in the voxel model's sampler)."""
    fn = torch.randn if normal else torch.rand
    if generator is None:
        return fn(tuple(shape), device=device, dtype=dtype)
    return fn(tuple(shape), generator=generator, device=generator.device, dtype=dtype).to(device)


def n_atoms_for_cell(cell, density_atoms_per_A3: float) -> int:
    """Atom count for sampling a new cell: ``round(density * volume)``, at least 1.

    Args:
        cell: (3, 3) Å, rows are lattice vectors (numpy, torch or ASE ``Cell``).
        density_atoms_per_A3: number density in atoms/Å³ (e.g. 0.0847 for fcc Cu; for a mass density
            in g/cm³ use ``rho * 0.602214 / molar_mass_g_per_mol``).
    """
    if density_atoms_per_A3 <= 0:
        raise ValueError(f"density must be positive, got {density_atoms_per_A3}")
    if isinstance(cell, torch.Tensor):
        cell = cell.detach().double().cpu().numpy()
    cell = np.asarray(cell, dtype=np.float64)
    if cell.shape != (3, 3):
        raise ValueError(f"cell must be (3, 3), got {cell.shape}")
    volume = abs(float(np.linalg.det(cell)))
    return max(1, int(round(density_atoms_per_A3 * volume)))


class VEParticleDiffusion:
    """Variance-exploding diffusion of wrapped Cartesian positions; model-agnostic.

    The model is any callable ``model(frac_coords, numbers, mask, cell, t, cond=None, cond_keep=None)
    -> (B, N, 3)`` noise prediction (e.g. ``PeriodicMPNN``).

    Args:
        sigma_max: noise at t = 1 in Å.
        sigma_min: noise at t = 0 in Å (> 0).
        target: ``"wrapped_normal"`` or ``"minimum_image"`` training target (module docstring).
        max_images: largest lattice-image index per axis in the wrapped-normal sum.
    """

    def __init__(
        self,
        sigma_max: float = 3.0,
        sigma_min: float = 0.01,
        target: Literal["wrapped_normal", "minimum_image"] = "wrapped_normal",
        max_images: int = 4,
    ) -> None:
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        if target not in ("wrapped_normal", "minimum_image"):
            raise ValueError(f"unknown target {target!r}")
        self.sigma_max = float(sigma_max)
        self.sigma_min = float(sigma_min)
        self.target = target
        self.max_images = int(max_images)

    # ------------------------------------------------------------------ schedule
    def sigma(self, t: torch.Tensor | float) -> torch.Tensor | float:
        """Noise level in Å at time t in [0, 1]."""
        return self.sigma_min + (self.sigma_max - self.sigma_min) * t

    # ------------------------------------------------------------------ training
    def noise_target(
        self, clean_frac: torch.Tensor, noisy_frac: torch.Tensor, cell: torch.Tensor, sigma: torch.Tensor
    ) -> torch.Tensor:
        """Target ``eps*`` (B, N, 3) for noisy (wrapped) positions; ``sigma`` is (B,) in Å."""
        delta = minimum_image(noisy_frac - clean_frac, cell[:, None])  # (B, N, 3) Å
        s = sigma[:, None, None].to(delta.dtype)
        if self.target == "minimum_image":
            return delta / s
        widths = perpendicular_widths(cell.double())  # (B, 3)
        reach = torch.ceil(4.0 * sigma.double()[:, None] / widths).clamp(max=self.max_images)
        k = reach.max(dim=0).values.long().tolist()
        grid = torch.cartesian_prod(*[torch.arange(-m, m + 1, device=cell.device) for m in k]).reshape(-1, 3)
        images = torch.einsum("ki,bij->bkj", grid.to(cell.dtype), cell)  # (B, K, 3)
        cand = delta[:, :, None, :] + images[:, None, :, :]  # (B, N, K, 3)
        logw = -(cand * cand).sum(-1) / (2.0 * s * s)
        w = torch.softmax(logw, dim=-1)
        return (w[..., None] * cand).sum(2) / s

    def training_loss(
        self,
        model: Model,
        batch: StructureBatch,
        cond: torch.Tensor | None = None,
        cond_drop_prob: float = 0.0,
        generator: torch.Generator | None = None,
        t: torch.Tensor | None = None,
        eps: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Denoising score-matching loss (masked MSE on eps over real atoms), a scalar.

        t ~ U(0, 1) per structure; noisy positions are wrapped into the cell before the model sees them.
        With ``cond`` given, each structure's condition is dropped (null embedding) with probability
        ``cond_drop_prob`` for classifier-free guidance. ``t`` (B,) and ``eps`` (B, N, 3) may be given
        instead of drawn (a deterministic validation loss draws them per structure).
        """
        frac, cell, mask = batch.frac_coords, batch.cell, batch.mask.bool()
        b, n, _ = frac.shape
        device, dtype = frac.device, frac.dtype
        if t is None:
            t = _rand((b,), generator, device, dtype, normal=False)
        sigma = self.sigma(t)
        if eps is None:
            eps = _rand((b, n, 3), generator, device, dtype, normal=True)
        eps = eps * mask[..., None].to(dtype)
        # Cartesian noise -> fractional: dx = df @ cell  ->  df = dx @ cell^-1
        dfrac = torch.linalg.solve(cell.transpose(1, 2), (sigma[:, None, None] * eps).transpose(1, 2)).transpose(1, 2)
        noisy = wrap_unit(frac + dfrac) * mask[..., None].to(dtype)
        with torch.no_grad():
            target = self.noise_target(frac, noisy, cell, sigma)
        keep = None
        if cond is not None:
            keep = _rand((b,), generator, device, dtype, normal=False) >= cond_drop_prob
        pred = model(noisy, batch.numbers, mask, cell, t, cond=cond, cond_keep=keep)
        err = ((pred.to(dtype) - target) ** 2).sum(-1) * mask.to(dtype)
        return err.sum() / (3.0 * mask.sum().clamp(min=1))

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def sample(
        self,
        model: Model,
        cell: torch.Tensor,
        numbers: torch.Tensor,
        mask: torch.Tensor,
        steps: int = 200,
        sampler: Literal["em", "pc"] | CartesianSampler = "em",
        generator: torch.Generator | None = None,
        progress: bool = False,
        snr: float = 0.16,
        corrector_steps: int = 1,
        hooks: Sequence[SamplingHook] = (),
    ) -> torch.Tensor:
        """Generate fractional coordinates (B, N, 3) in [0, 1) for the given cells and species.

        Guidance and in-painting compose around this: wrap the model in ``samplers.PointCloudGuidance`` for
        classifier-free guidance; pass ``samplers.CartesianPosteriorGuidance`` (DPS) or
        ``samplers.CartesianKnownAtoms`` (in-painting) in ``hooks``.

        Args:
            model: noise predictor (module docstring), called without a condition.
            cell: (B, 3, 3) Å; its dtype is the working dtype.
            numbers: (B, N) atomic numbers; mask: (B, N) bool real atoms (padding returns 0).
            steps: number of noise levels (model evaluations per predictor pass); with a ``CartesianSampler``
                its own.
            sampler: a ``CartesianSampler`` or its name: ``"em"`` Euler–Maruyama reverse SDE, ``"pc"``
                predictor–corrector (Langevin).
            generator: torch.Generator for reproducible samples (numbers are drawn on its own device, so
                one CPU generator gives the same noise for CPU and CUDA sampling).
            progress: tqdm progress bar.
            snr: corrector signal-to-noise ratio when ``sampler`` is "pc"; the Langevin step is
                ``2 (snr |z| / |score|)²`` per structure, capped at ``sigma²``.
            corrector_steps: Langevin steps per noise level when ``sampler`` is "pc".
            hooks: ``SamplingHook`` objects, in order (``lightning_gcd.samplers.hooks``).
        """
        if isinstance(sampler, str):
            sampler = cartesian_sampler(sampler, steps, snr=snr, corrector_steps=corrector_steps)
        b, n = numbers.shape
        device, dtype = cell.device, cell.dtype
        fmask = mask.bool()[..., None].to(dtype)
        run = CartesianRun(
            self,
            numbers,
            mask.bool(),
            cell,
            noise=lambda: _rand((b, n, 3), generator, device, dtype, normal=True) * fmask,
            hooks=tuple(hooks),
        )
        for hook in run.hooks:
            hook.start(run)
        prior = NetworkNoise(model, run)
        denoise: CartesianDenoiser = prior
        for hook in run.hooks:
            denoise = hook.wrap(denoise, run)
        frac = _rand((b, n, 3), generator, device, dtype, normal=False) * fmask
        frac = sampler.run(frac, denoise, prior, run, progress=progress)
        for hook in reversed(run.hooks):
            frac = hook.finish(frac, run)
        return frac
