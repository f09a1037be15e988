"""Atom counts (the grand canonical model chooses them) and unphysically close pairs."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchmetrics import Metric

from lightning_gcd.metrics._pairs import Structures, as_batch, find_pairs

__all__ = ["AtomCount", "MinDistanceViolations"]


class AtomCount(Metric):
    """Histogram of atom counts per structure, their mean, and the mean absolute error to a target.

    Args:
        max_atoms: last histogram bin; larger counts are counted in it (read it as ">= max_atoms").
        target: a fixed target count for every structure, or None (then pass ``target`` to ``update``;
            structures without a target do not enter the error).

    States (summed across processes): ``hist`` (max_atoms + 1,), ``n_structures``, ``n_sum``,
    ``abs_error_sum``, ``n_targets``.

    ``compute()`` returns ``{"n_atoms_mean": ..., "n_atoms_error": mean |n - target|}`` (NaN when
    undefined) and ``n_structures``, the number of structures counted (over all processes: in DDP
    validation, the samples gathered from every rank).
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = None

    def __init__(self, max_atoms: int = 512, target: int | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        if int(max_atoms) < 1:
            raise ValueError(f"max_atoms must be at least 1, got {max_atoms}")
        self.max_atoms = int(max_atoms)
        self.target = None if target is None else int(target)
        self.add_state("hist", torch.zeros(self.max_atoms + 1, dtype=torch.long), dist_reduce_fx="sum")
        for name in ("n_structures", "n_sum", "abs_error_sum", "n_targets"):
            self.add_state(name, torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, batch: Structures, target: int | Sequence[int] | torch.Tensor | None = None) -> None:
        batch = as_batch(batch)
        n = batch.n_atoms.long().to(self.hist.device)
        self.hist += torch.bincount(n.clamp(0, self.max_atoms), minlength=self.max_atoms + 1)
        self.n_structures += n.numel()
        self.n_sum += n.double().sum()
        if target is None:
            target = self.target
        if target is None:
            return
        t = torch.as_tensor(target, dtype=torch.float64, device=n.device)
        t = t.expand(n.shape) if t.dim() == 0 else t.reshape(-1)
        if t.shape != n.shape:
            raise ValueError(f"{t.numel()} targets for {n.numel()} structures")
        ok = torch.isfinite(t)
        self.abs_error_sum += (n.double() - t)[ok].abs().sum()
        self.n_targets += ok.sum()

    def compute(self) -> dict[str, torch.Tensor]:
        nan = torch.tensor(float("nan"), dtype=torch.float64, device=self.n_sum.device)
        return {
            "n_atoms_mean": self.n_sum / self.n_structures if self.n_structures > 0 else nan,
            "n_atoms_error": self.abs_error_sum / self.n_targets if self.n_targets > 0 else nan,
            "n_structures": self.n_structures.clone(),
        }


class MinDistanceViolations(Metric):
    """Fraction of structures with any two atoms (periodic images included) closer than ``threshold``.

    Also tracks the smallest distance seen; distances are searched up to ``search_radius`` (default
    ``max(threshold, 3 Å)``) and the minimum is ``inf`` when no pair is that close.

    States: ``n_violating`` and ``n_structures`` (summed), ``min_distance`` (min-reduced).
    ``compute()`` returns ``{"min_distance_violations": fraction, "min_distance": Å}``.
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = False

    def __init__(
        self,
        threshold: float = 0.5,
        search_radius: float | None = None,
        search_dtype: torch.dtype = torch.float32,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if not threshold > 0:
            raise ValueError(f"threshold must be positive, got {threshold}")
        self.threshold = float(threshold)
        self.search_radius = max(self.threshold, 3.0) if search_radius is None else float(search_radius)
        if self.search_radius < self.threshold:
            raise ValueError("search_radius must be at least the threshold")
        self.search_dtype = search_dtype
        self.add_state("n_violating", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("n_structures", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("min_distance", torch.tensor(float("inf"), dtype=torch.float64), dist_reduce_fx="min")

    def update(self, batch: Structures) -> None:
        batch = as_batch(batch)
        b = len(batch)
        found = find_pairs(batch, self.search_radius, search_dtype=self.search_dtype)
        per = torch.full((b,), float("inf"), dtype=torch.float64, device=found.distances.device)
        if found.distances.numel():
            per = per.scatter_reduce(0, found.batch, found.distances, reduce="amin")
        per = per.to(self.min_distance.device)
        self.n_violating += (per < self.threshold).sum()
        self.n_structures += b
        self.min_distance = torch.minimum(self.min_distance, per.min() if b else self.min_distance)

    def compute(self) -> dict[str, torch.Tensor]:
        nan = torch.tensor(float("nan"), dtype=torch.float64, device=self.n_structures.device)
        return {
            "min_distance_violations": self.n_violating / self.n_structures if self.n_structures > 0 else nan,
            "min_distance": self.min_distance.clone(),
        }
