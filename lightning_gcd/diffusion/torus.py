"""Variance-exploding diffusion of fractional coordinates on the flat 3-torus (DiffCSP's recipe).

Each fractional coordinate diffuses independently on the circle [0, 1):

    f_t = (f_0 + sigma(t) * eps) mod 1,   eps ~ N(0, I),   sigma(t) = sigma_min^(1 - t) * sigma_max^t

a geometric schedule in fractional units (DiffCSP: 0.005 to 0.5 over 1,000 levels; at 0.5 the wrapped
normal is uniform to within 1e-8, so the sampler can start from uniform positions). The perturbation
kernel is the wrapped normal ``p_sigma(d) = Σ_k N(d + k; 0, sigma²)``; its score with respect to ``f_t`` is

    s(d) = -Σ_k w_k (d + k) / sigma²,   w_k = softmax_k(-(d + k)² / 2 sigma²),   d = f_t - f_0.

The network is trained on the *normalised* target ``-s(d) / sqrt(lambda(sigma))`` with
``lambda(sigma) = E_d[s(d)²]`` (per axis), so the target has unit scale at every noise level; for small
sigma the target is exactly the noise ``eps``. The score used in sampling is ``-pred * sqrt(lambda)``.
``lambda`` is computed by quadrature over the circle (not by Monte Carlo as DiffCSP does), so it is
deterministic.

``atom_scaled_sigma`` (MatterGen): sigma is multiplied by ``(n_reference / N)^(1/3)`` per structure, so that
the Cartesian noise of a structure with N atoms at fixed density does not grow with its cell; on cells of the
training size the factor is one. It is what lets a radius-graph network trained on one cell sample a larger
one (``TorusParticleDiffusion``).

Units: fractional coordinates (dimensionless); ``sigma`` in fractional units of each cell axis.
Pure PyTorch, no Lightning.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from lightning_gcd.structures import wrap_unit

__all__ = ["TorusDiffusion", "wrapped_normal_score", "wrapped_normal_score_norm", "wrap_unit"]

#: quadrature points on the circle for ``wrapped_normal_score_norm`` (spacing 1/4096 resolves sigma >= 0.001)
QUADRATURE_POINTS = 4096


def _images(sigma: torch.Tensor) -> int:
    """Image count per side that keeps every dropped weight below exp(-8): |k| <= ceil(4 sigma) + 1."""
    return int(min(10, math.ceil(4.0 * float(sigma.max())) + 1))


def wrapped_normal_score(delta: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Score ``d/dd log p_sigma(d)`` of the wrapped normal on [0, 1), elementwise.

    Args:
        delta: displacement on the circle, any shape (any real values; the score is 1-periodic).
        sigma: broadcastable to ``delta``, > 0, fractional units.
    Returns:
        the score, shape of ``delta`` (units 1/fractional).
    """
    sigma = torch.as_tensor(sigma, dtype=delta.dtype, device=delta.device)
    d = delta - torch.round(delta)  # [-0.5, 0.5]: the same score, fewer images needed
    k = torch.arange(-_images(sigma), _images(sigma) + 1, dtype=delta.dtype, device=delta.device)
    shifted = d[..., None] + k  # (..., K)
    s2 = (sigma * sigma)[..., None]
    w = torch.softmax(-shifted * shifted / (2.0 * s2), dim=-1)
    return -(w * shifted).sum(-1) / (sigma * sigma)


def wrapped_normal_score_norm(sigma: torch.Tensor) -> torch.Tensor:
    """``lambda(sigma) = E[s(d)²]`` under ``d ~ p_sigma`` (per axis), by midpoint quadrature on [0, 1).

    Args:
        sigma: (S,) or scalar, fractional units, >= 0.001.
    Returns:
        ``lambda`` with the shape of ``sigma``; ``1 / sigma²`` for small sigma, 0 for a uniform kernel.
    """
    sigma = torch.as_tensor(sigma, dtype=torch.float64)
    flat = sigma.reshape(-1, 1)
    d = (torch.arange(QUADRATURE_POINTS, dtype=torch.float64) + 0.5) / QUADRATURE_POINTS - 0.5  # (M,)
    k = torch.arange(-_images(flat), _images(flat) + 1, dtype=torch.float64)
    shifted = d[None, :, None] + k  # (1, M, K)
    logp = torch.logsumexp(-shifted * shifted / (2.0 * flat[..., None] ** 2), dim=-1)  # (S, M), up to a constant
    p = torch.softmax(logp, dim=-1)  # normalised weights of the quadrature points
    score = wrapped_normal_score(d[None, :], flat)
    return (p * score * score).sum(-1).reshape(sigma.shape)


class TorusDiffusion:
    """Wrapped-normal VE diffusion of fractional coordinates; model-agnostic.

    The model is any callable ``model(frac_coords, numbers, mask, cell, t, cond=None, cond_keep=None)
    -> (B, N, 3)``: the normalised target (≈ the noise ``eps``), in fractional axes.

    Args:
        sigma_min: noise at t = 0, fractional units (DiffCSP 0.005).
        sigma_max: noise at t = 1, fractional units (DiffCSP 0.5).
        atom_scaled_sigma: multiply sigma by ``(n_reference / N)^(1/3)`` per structure (MatterGen).
        n_reference: the atom count at which that factor is one (the training structures' mean).
    """

    def __init__(
        self,
        sigma_min: float = 0.005,
        sigma_max: float = 0.5,
        atom_scaled_sigma: bool = False,
        n_reference: float | None = None,
    ) -> None:
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        if sigma_min < 0.001:
            raise ValueError(f"sigma_min below 0.001 is not resolved by the score-norm quadrature, got {sigma_min}")
        if atom_scaled_sigma and not (n_reference and n_reference > 0):
            raise ValueError("atom_scaled_sigma needs the reference atom count n_reference > 0")
        self.sigma_min = float(sigma_min)
        self.sigma_max = float(sigma_max)
        self.atom_scaled_sigma = bool(atom_scaled_sigma)
        self.n_reference = float(n_reference) if n_reference else None

    # ------------------------------------------------------------------ schedule
    def sigma(self, t: torch.Tensor, n_atoms: torch.Tensor | None = None) -> torch.Tensor:
        """Noise (B,) in fractional units at times ``t`` (B,) in [0, 1] for structures of ``n_atoms`` (B,)."""
        sigma = self.sigma_min * (self.sigma_max / self.sigma_min) ** t
        if self.atom_scaled_sigma:
            if n_atoms is None:
                raise ValueError("atom_scaled_sigma needs the atom count of each structure")
            sigma = sigma * (self.n_reference / n_atoms.to(sigma.dtype).clamp(min=1)) ** (1.0 / 3.0)
        return sigma

    @staticmethod
    def score_norm(sigma: torch.Tensor) -> torch.Tensor:
        """``lambda(sigma)`` (B,) in the dtype and device of ``sigma``.

        The quadrature runs once per distinct sigma: a sampler's batch shares one level, so a batch costs one
        quadrature over 4,096 points, not one per row."""
        distinct, index = torch.unique(sigma.detach().double().cpu(), return_inverse=True)
        norm = wrapped_normal_score_norm(distinct).clamp(min=1e-12)[index]  # 0 only for a uniform kernel
        return norm.to(sigma.device, sigma.dtype)

    def score(self, prediction: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """Score (B, N, 3) in 1/fractional units from the network's normalised prediction; ``sigma`` (B,)."""
        return -prediction * self.score_norm(sigma).sqrt()[:, None, None]

    # ------------------------------------------------------------------ training
    def target(self, clean: torch.Tensor, noisy: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """Normalised target ``-s(noisy - clean) / sqrt(lambda)`` (B, N, 3); ``sigma`` (B,)."""
        s = sigma[:, None, None].to(clean.dtype)
        norm = self.score_norm(sigma).sqrt()[:, None, None].to(clean.dtype)
        return -wrapped_normal_score(noisy - clean, s) / norm

    def training_loss(
        self,
        model: Callable[..., torch.Tensor],
        frac: torch.Tensor,
        numbers: torch.Tensor,
        mask: torch.Tensor,
        cell: torch.Tensor,
        cond: torch.Tensor | None = None,
        cond_keep: torch.Tensor | None = None,
        t: torch.Tensor | None = None,
        eps: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Denoising score-matching loss: masked MSE of the normalised target over real atoms, a scalar.

        Args:
            frac: (B, N, 3) clean fractional coordinates; numbers, mask: (B, N); cell: (B, 3, 3) Å.
            cond, cond_keep: the condition (B, K) and which rows keep it (classifier-free guidance).
            t: (B,) times in [0, 1]; eps: (B, N, 3) standard normal noise (drawn when None).
        """
        b, n, _ = frac.shape
        mask = mask.bool()
        fmask = mask[..., None].to(frac.dtype)
        if t is None:
            t = torch.rand(b, device=frac.device, dtype=frac.dtype)
        if eps is None:
            eps = torch.randn_like(frac)
        sigma = self.sigma(t.to(frac.dtype), mask.sum(1))
        noisy = wrap_unit(frac + sigma[:, None, None] * eps) * fmask
        with torch.no_grad():
            target = self.target(frac, noisy, sigma) * fmask
        pred = model(noisy, numbers, mask, cell, t, cond=cond, cond_keep=cond_keep)
        err = ((pred.to(frac.dtype) - target) ** 2).sum(-1) * mask.to(frac.dtype)
        return err.sum() / (3.0 * mask.sum().clamp(min=1))
