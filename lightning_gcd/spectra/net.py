"""Per-atom spectrum predictor: a periodic invariant message-passing network (the forward model of
spectrum-guided sampling; ``docs/background.md``).

Each atom's spectrum (e.g. its C K-edge XANES on a fixed energy grid) is predicted from its periodic
neighbourhood: the same radius graph, Gaussian radial basis with smooth cutoff and message layers as the
diffusion denoiser ``PeriodicMPNN``, but no time input and an invariant read-out ``MLP(h_i) -> (K,)``.
Only distances enter, so predictions are exactly invariant to rotations, reflections, translations
(wrapping included) and permutation equivariant (tested).

Weighted atoms: ``weights`` (B, N) in [0, 1] scale every message *from* an atom, so an atom of weight 0
does not exist for its neighbours and one of weight 1 is an ordinary atom. The voxel model's posterior
sampling uses this to apply the forward model to a soft decoding of a grid (every voxel a candidate atom
weighted by its occupancy); with weights in {0, 1} the result equals the hard decoded structure's.

Pure PyTorch, no Lightning.
"""

from __future__ import annotations

import torch
from torch import nn

from lightning_gcd.nets.mpnn import GaussianRadialBasis, MessageLayer, mlp
from lightning_gcd.periodic import radius_graph

__all__ = ["SpectrumNet"]


class SpectrumNet(nn.Module):
    """Periodic structure -> one spectrum (K values) per atom.

    Args:
        n_out: points of the spectrum (K).
        hidden, layers, cutoff, num_rbf, max_z, avg_neighbors, graph_method: as ``PeriodicMPNN``.
    """

    def __init__(
        self,
        n_out: int,
        hidden: int = 64,
        layers: int = 3,
        cutoff: float = 4.0,
        num_rbf: int = 32,
        max_z: int = 100,
        avg_neighbors: float = 12.0,
        graph_method: str = "auto",
    ) -> None:
        super().__init__()
        self.n_out = int(n_out)
        self.hidden = hidden
        self.cutoff = float(cutoff)
        self.max_z = max_z
        self.graph_method = graph_method
        self.species = nn.Embedding(max_z + 1, hidden)
        self.context = nn.Parameter(torch.zeros(hidden))  # the message layers' per-node context (no time here)
        self.rbf = GaussianRadialBasis(cutoff, num_rbf)
        self.layers = nn.ModuleList(MessageLayer(hidden, num_rbf, avg_neighbors) for _ in range(layers))
        self.readout = mlp(hidden, hidden, self.n_out)

    def forward(
        self,
        frac_coords: torch.Tensor,
        numbers: torch.Tensor,
        mask: torch.Tensor,
        cell: torch.Tensor,
        weights: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, N, K) per-atom predictions (zero at padding); differentiable w.r.t. coordinates and weights.

        Args:
            frac_coords: (B, N, 3) fractional coordinates; numbers: (B, N); mask: (B, N) bool real atoms;
            cell: (B, 3, 3) Å rows; weights: optional (B, N) weights of the atoms as message senders.
        """
        b, n, _ = frac_coords.shape
        mask = mask.bool()
        dtype = self.species.weight.dtype
        g = radius_graph(frac_coords, cell, mask, self.cutoff, method=self.graph_method)
        rbf, env = self.rbf(g.distances.to(dtype))
        if weights is not None:
            env = env * weights.reshape(-1).to(dtype)[g.dst]
        h = self.species(numbers.reshape(-1).long().clamp(0, self.max_z))
        c = self.context.expand(b * n, -1)
        for layer in self.layers:
            h = layer(h, c, g.src, g.dst, rbf, env)
        out = self.readout(h).reshape(b, n, self.n_out)
        return out * mask[..., None].to(dtype)
