"""Periodic E(3)-equivariant message-passing denoiser for the particle (point-cloud) baseline.

The network maps a noisy periodic structure to one Cartesian vector per atom: the diffusion model's
noise prediction ``eps_hat`` (dimensionless, in Cartesian axes; the score is ``-eps_hat / sigma`` in
Å⁻¹, see ``lightning_gcd.diffusion.ve``).

Architecture (EGNN-style, Satorras et al. 2021, without coordinate updates):

* graph: ``periodic.radius_graph`` with ``cutoff`` (3.0 Å as in the a-C paper), all periodic images,
  so small cells and self-images through the boundary are handled;
* nodes: learned species embedding (atomic number, ``max_z``) + time embedding (+ condition embedding
  for classifier-free guidance, learned null vector when the condition is dropped);
* edges: Gaussian radial basis of the distance times a smooth cosine envelope that goes to zero at the
  cutoff, so the output is continuous when atoms enter or leave a neighbourhood;
* ``layers`` rounds of invariant message passing
  ``m_ij = MLP(h_i, h_j, rbf(d_ij)) * env(d_ij)``, ``h_i += MLP(LN(h_i), Σ_j m_ij / avg_neighbors, c)``;
* equivariant read-out ``out_i = Σ_j φ(h_i, h_j, rbf(d_ij)) env(d_ij) · vec_ij / (d_ij + 1)`` with
  ``vec_ij = r_j + shift - r_i``.

Symmetries (exact, by construction, up to floating-point rounding):

* translation invariance, including atoms wrapping around the cell: only periodic displacement
  vectors enter, and the radius graph is the same set of physical pairs whatever the wrap;
* permutation equivariance: node-wise MLPs and sum aggregation;
* rotation AND reflection equivariance (E(3)): rotating cell and positions rotates every ``vec_ij``
  and leaves every distance, hence every invariant feature, unchanged; the output is a sum of
  invariant scalars times ``vec_ij``;
* invariance to the choice of lattice basis for the same periodic lattice (the neighbour list is
  basis-independent).

Why equivariance rather than augmentation (the a-C paper trains MeshGraphNets with random-rotation
augmentation): the score of a rotation-invariant distribution is exactly rotation-equivariant, so
building it in costs nothing in expressiveness for this target, removes the need to learn the symmetry
from augmented copies (capacity and epochs), and makes the sampler's drift exactly consistent in any
orientation of the cell, not only on average. The price is that only invariant scalars times relative
vectors can be output, which is sufficient for a per-atom displacement field.

Pure PyTorch, no Lightning.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from lightning_gcd.nets.embeddings import ConditionEmbedding, TimeEmbedding, check_species, sinusoidal_embedding
from lightning_gcd.periodic import radius_graph

__all__ = ["GaussianRadialBasis", "MessageLayer", "PeriodicMPNN", "mlp", "pair_mlp"]


class GaussianRadialBasis(nn.Module):
    """Gaussian basis of distances on [0, cutoff] and a smooth cosine cutoff envelope.

    ``forward(d) -> (rbf (E, num_rbf), envelope (E,))``; the envelope is ``0.5 (cos(pi d / c) + 1)``
    for ``d < c`` and 0 beyond, continuous with a continuous first derivative at the cutoff.
    """

    def __init__(self, cutoff: float, num_rbf: int) -> None:
        super().__init__()
        self.cutoff = float(cutoff)
        self.register_buffer("centers", torch.linspace(0.0, cutoff, num_rbf), persistent=False)
        self.gamma = 1.0 / (2.0 * (cutoff / max(num_rbf - 1, 1)) ** 2)

    def forward(self, d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rbf = torch.exp(-self.gamma * (d[:, None] - self.centers[None, :]) ** 2)
        env = 0.5 * (torch.cos(math.pi * d / self.cutoff) + 1.0) * (d < self.cutoff).to(d.dtype)
        return rbf, env


def mlp(d_in: int, hidden: int, d_out: int) -> nn.Sequential:
    """Three linear layers with SiLU between them: ``d_in`` → ``hidden`` → ``hidden`` → ``d_out``."""
    return nn.Sequential(
        nn.Linear(d_in, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, d_out)
    )


def pair_mlp(
    net: nn.Sequential, h: torch.Tensor, src: torch.Tensor, dst: torch.Tensor, rbf: torch.Tensor
) -> torch.Tensor:
    """``net(cat([h[src], h[dst], rbf]))`` for an ``mlp`` ``net`` over edges, with its first linear layer split
    by input (``W [h_i, h_j, e] = W_i h_i + W_j h_j + W_e e``): the node terms are computed once per atom, not
    once per edge. The same weights and function, about half the edge work. h: (N, H); src/dst: (E,);
    rbf: (E, R) -> (E, d_out)."""
    first, width = net[0], h.shape[-1]
    weight = first.weight  # (hidden, 2H + R)
    pre = (
        nn.functional.linear(h, weight[:, :width])[src]
        + nn.functional.linear(h, weight[:, width : 2 * width])[dst]
        + nn.functional.linear(rbf, weight[:, 2 * width :], first.bias)
    )
    return net[1:](pre)


class MessageLayer(nn.Module):
    """One residual message-passing update of atom features ``h`` (N, hidden) along the edges ``src`` → ``dst``
    of a periodic radius graph: edge messages from both ends' features and the radial basis ``rbf`` (E, num_rbf),
    weighted by the smooth cutoff ``env`` (E,), summed per atom and divided by ``avg_neighbors``; the update
    also sees the conditioning ``c`` (N, hidden) (time, labels), so the same layer serves any per-atom head."""

    def __init__(self, hidden: int, num_rbf: int, avg_neighbors: float) -> None:
        super().__init__()
        self.edge = mlp(2 * hidden + num_rbf, hidden, hidden)
        self.norm = nn.LayerNorm(hidden)
        self.node = mlp(3 * hidden, hidden, hidden)
        self.avg_neighbors = avg_neighbors

    def forward(
        self,
        h: torch.Tensor,
        c: torch.Tensor,
        src: torch.Tensor,
        dst: torch.Tensor,
        rbf: torch.Tensor,
        env: torch.Tensor,
    ) -> torch.Tensor:
        m = pair_mlp(self.edge, h, src, dst, rbf) * env[:, None]
        agg = torch.zeros_like(h).index_add_(0, src, m) / self.avg_neighbors
        return h + self.node(torch.cat([self.norm(h), agg, c], dim=-1))


class PeriodicMPNN(nn.Module):
    """Periodic equivariant denoiser: noisy structure -> per-atom Cartesian noise prediction.

    Args:
        hidden: feature width.
        layers: message-passing rounds.
        cutoff: radius-graph cutoff in Å (3.0 as the a-C paper).
        num_rbf: Gaussian radial basis functions.
        cond_dim: width of the condition vector for classifier-free guidance (0: unconditional net).
        cond_mean, cond_std: (cond_dim,) statistics that standardise the condition (``ConditionEmbedding``);
            None: the condition is used as given.
        max_z: largest atomic number embedded.
        avg_neighbors: normalisation of the summed messages (typical neighbour count within cutoff).
        graph_method: ``radius_graph`` method (``"auto"``, ``"cell_list"``, ``"dense"``, ``"compiled"``, ``"vesin"``).
    """

    def __init__(
        self,
        hidden: int = 128,
        layers: int = 4,
        cutoff: float = 3.0,
        num_rbf: int = 32,
        cond_dim: int = 0,
        max_z: int = 100,
        avg_neighbors: float = 12.0,
        graph_method: str = "auto",
        cond_mean: Sequence[float] | None = None,
        cond_std: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        self.hidden = hidden
        self.cutoff = float(cutoff)
        self.cond_dim = cond_dim
        self.max_z = max_z
        self.graph_method = graph_method
        self.species = nn.Embedding(max_z + 1, hidden)
        self.time = TimeEmbedding(hidden)
        self.cond = ConditionEmbedding(cond_dim, hidden, cond_mean, cond_std) if cond_dim > 0 else None
        self.rbf = GaussianRadialBasis(cutoff, num_rbf)
        self.layers = nn.ModuleList(MessageLayer(hidden, num_rbf, avg_neighbors) for _ in range(layers))
        self.readout = mlp(2 * hidden + num_rbf, hidden, 1)

    def forward(
        self,
        frac_coords: torch.Tensor,
        numbers: torch.Tensor,
        mask: torch.Tensor,
        cell: torch.Tensor,
        t: torch.Tensor,
        cond: torch.Tensor | None = None,
        cond_keep: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predict the noise.

        Args:
            frac_coords: (B, N, 3) fractional coordinates (wrapped or not).
            numbers: (B, N) atomic numbers (padding 0).
            mask: (B, N) bool, True for real atoms.
            cell: (B, 3, 3) Å, rows are lattice vectors.
            t: (B,) diffusion time in [0, 1].
            cond: (B, cond_dim) condition or None (unconditional).
            cond_keep: (B,) bool, False replaces the condition by the learned null embedding.
        Returns:
            (B, N, 3) Cartesian vectors (the noise prediction ``eps_hat``), exactly zero at padding.
        """
        b, n, _ = frac_coords.shape
        check_species(numbers, b, n, self.max_z)
        mask = mask.bool()
        dtype = self.species.weight.dtype
        g = radius_graph(frac_coords, cell, mask, self.cutoff, method=self.graph_method)
        vec = g.vectors.to(dtype)
        d = g.distances.to(dtype)
        rbf, env = self.rbf(d)

        t = t.to(frac_coords.device)
        if t.dim() == 0:
            t = t.expand(b)
        # TimeEmbedding.forward builds float32 features; cast them to the module dtype (float64 tests)
        c = self.time.mlp(sinusoidal_embedding(t, self.time.dim).to(dtype))
        if self.cond is not None:
            c = c + self.cond(cond, cond_keep, b)
        elif cond is not None:
            raise ValueError("this PeriodicMPNN was built with cond_dim=0 and cannot take a condition")
        c_node = c[:, None, :].expand(b, n, self.hidden).reshape(b * n, self.hidden)

        h = self.species(numbers.reshape(-1)) + c_node
        for layer in self.layers:
            h = layer(h, c_node, g.src, g.dst, rbf, env)

        coef = pair_mlp(self.readout, h, g.src, g.dst, rbf).squeeze(-1) * env
        contrib = coef[:, None] * vec / (d[:, None] + 1.0)
        out = torch.zeros(b * n, 3, dtype=dtype, device=frac_coords.device).index_add_(0, g.src, contrib)
        return out.reshape(b, n, 3) * mask[..., None].to(dtype)
