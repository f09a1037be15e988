"""``StructureMetrics``: every structure metric of the project, against a reference set, as one object.

Built once from reference structures (typically the dataset's val split), it computes the reference
g(r), the coordination cutoff (first minimum of the reference g(r) unless given), the reference
coordination histogram, atom counts and minimum distance once; then, for generated structures, it
accumulates torchmetrics states (exact under DDP) and ``compute()`` returns one flat dict of floats
with the project's metric names (the Lightning module prefixes ``val/``):

==============================  ==========================================================================
``rdf_l1``                      ∫ |g(r) − g_ref(r)| dr (Å), total g(r) averaged over structures
``coordination/<Z>/<k>``        fraction of atoms of atomic number Z with k neighbours within the cutoff
                                (the k where samples or reference have any atom; k = max_cn means >=)
``coordination_l1``             mean over reference species of Σ_k |f_k − f_ref,k| (0 … 2)
``phase_match``                 fraction of structures that are one of the ideal crystals (when known)
``phase_match/<name>``          fraction of structures matching each ideal crystal
``displacement_rms``            Å, RMS distance of the atoms of matched structures from ideal sites
``n_atoms_mean``                mean atom count
``n_atoms_error``               mean |n − target| (target: see ``target_counts``)
``min_distance_violations``     fraction of structures with a pair closer than the threshold
``min_distance``                Å, smallest distance seen (inf when none within 3 Å)
``sp_fraction`` …               ``sp2_fraction``, ``sp3_fraction``: carbon atoms with 2 / 3 / 4 C
                                neighbours within 1.85 Å (only when the reference contains carbon)
==============================  ==========================================================================

Nothing here knows which model made the structures.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from ase import Atoms
from torchmetrics import Metric

from lightning_gcd.metrics._pairs import Structures, as_atoms_list, as_batch, cell_volumes
from lightning_gcd.metrics.coordination import CARBON_CUTOFF, CoordinationHistogram, cutoff_from_rdf_minimum
from lightning_gcd.metrics.counts import AtomCount, MinDistanceViolations
from lightning_gcd.metrics.phase_match import IdealSpec, PhaseMatch
from lightning_gcd.metrics.rdf import RadialDistribution, rdf_l1

__all__ = ["StructureMetrics"]

CARBON = 6


def _chunks(atoms: Sequence[Atoms], size: int):
    for start in range(0, len(atoms), size):
        yield as_batch(list(atoms[start : start + size]))


def _gathered_fractions(metric: Metric) -> dict[int, torch.Tensor]:
    """``{Z: coordination fractions}`` (CPU, float64) of a ``CoordinationHistogram`` over every process's
    structures: its ``compute()`` synchronises the histogram (``fractions()`` alone reads this process's)."""
    return {int(z): f.double().cpu() for z, f in metric.compute().items()}


class StructureMetrics(torch.nn.Module):
    """All structure metrics of generated samples against a reference set.

    Args:
        reference: reference structures (list of ``Atoms`` or a ``StructureBatch``), e.g. the val split.
        r_max, n_bins: g(r) range (Å) and bins.
        coordination_cutoff: Å (one for every pair) or ``{(Z1, Z2): Å}``; default: the first minimum
            of the reference total g(r) (``cutoff_from_rdf_minimum``).
        max_cn: last coordination bin.
        ideal: ideal crystals for ``phase_match`` (``Atoms``, list, ``{key: Atoms}`` e.g. from
            ``ideal_for_dataset``, or a callable); None: no phase metrics.
        tolerance: Å, phase-match tolerance.
        max_atoms: last bin of the atom-count histogram (default: twice the largest reference count).
        min_distance: Å threshold of ``min_distance_violations`` (default: 0.75 × the smallest
            distance in the reference, or 0.5 Å when none is within ``r_max``).
        carbon_cutoff: Å, C–C cutoff of the sp fractions.
        search_dtype: precision of the neighbour searches (distances are always float64).
        batch_size: structures per chunk when processing the reference.
    """

    def __init__(
        self,
        reference: Sequence[Atoms] | Structures,
        *,
        r_max: float = 6.0,
        n_bins: int = 120,
        coordination_cutoff: float | Mapping[tuple[int, int], float] | None = None,
        max_cn: int = 16,
        ideal: IdealSpec | None = None,
        tolerance: float = 0.5,
        max_atoms: int | None = None,
        min_distance: float | None = None,
        carbon_cutoff: float = CARBON_CUTOFF,
        search_dtype: torch.dtype = torch.float32,
        batch_size: int = 64,
    ) -> None:
        super().__init__()
        ref = as_atoms_list(reference)
        if not ref:
            raise ValueError("StructureMetrics needs at least one reference structure")
        self.r_max, self.n_bins, self.max_cn = float(r_max), int(n_bins), int(max_cn)
        self.ideal, self.tolerance = ideal, float(tolerance)
        self.carbon_cutoff = float(carbon_cutoff)
        self.search_dtype = search_dtype
        self.batch_size = int(batch_size)
        self._reference = ref

        # reference g(r), minimum distance, atom counts: computed on every rank alike, never synchronised
        rdf = RadialDistribution(self.r_max, self.n_bins, search_dtype=search_dtype, sync_on_compute=False)
        mind = MinDistanceViolations(
            threshold=1e-3, search_radius=self.r_max, search_dtype=search_dtype, sync_on_compute=False
        )
        for batch in _chunks(ref, self.batch_size):
            rdf.update(batch)
            mind.update(batch)
        g_ref = rdf.compute()
        self.register_buffer("g_reference", g_ref.clone(), persistent=False)
        self.register_buffer("r", torch.as_tensor(rdf.r), persistent=False)
        ref_min = float(mind.compute()["min_distance"])
        self.reference_min_distance = ref_min
        self.min_distance_threshold = (
            float(min_distance) if min_distance is not None else (0.75 * ref_min if math.isfinite(ref_min) else 0.5)
        )
        if coordination_cutoff is None:
            coordination_cutoff = cutoff_from_rdf_minimum(rdf.r, g_ref.cpu().numpy())
        self.coordination_cutoff = coordination_cutoff

        n_ref = np.array([len(a) for a in ref])
        self.max_atoms = int(max_atoms) if max_atoms is not None else max(16, int(2 * n_ref.max()))
        cells = torch.as_tensor(np.stack([np.asarray(a.cell[:], dtype=np.float64) for a in ref]))
        self.register_buffer("reference_cells", cells, persistent=False)
        self.register_buffer("reference_counts", torch.as_tensor(n_ref, dtype=torch.float64), persistent=False)
        self.reference_density = float(np.mean(n_ref / cell_volumes(cells).numpy()))
        self.reference_species = sorted({int(z) for a in ref for z in np.unique(a.numbers)})
        self.has_carbon = CARBON in self.reference_species

        coord = CoordinationHistogram(coordination_cutoff, self.max_cn, search_dtype=search_dtype)
        count = AtomCount(self.max_atoms)
        sp = (
            CoordinationHistogram({(CARBON, CARBON): self.carbon_cutoff}, 8, search_dtype=search_dtype)
            if self.has_carbon
            else None
        )
        for batch in _chunks(ref, self.batch_size):
            coord.update(batch)
            count.update(batch)
            if sp is not None:
                sp.update(batch)
        self.register_buffer("coordination_reference", coord.hist.clone(), persistent=False)
        self.register_buffer("n_atoms_hist_reference", count.hist.clone(), persistent=False)
        self.reference_sp = sp.sp_fractions(CARBON) if sp is not None else None

        self.metrics = torch.nn.ModuleDict(self._new_metrics())

    # ----------------------------------------------------------------------------------------------
    def _new_metrics(self, sync: bool = True) -> dict[str, Metric]:
        """Fresh metric instances; ``sync=False`` for per-rank reference values (no collective calls)."""
        kw = {"sync_on_compute": sync}
        m: dict[str, Metric] = {
            "rdf": RadialDistribution(self.r_max, self.n_bins, search_dtype=self.search_dtype, **kw),
            "coordination": CoordinationHistogram(
                self.coordination_cutoff, self.max_cn, search_dtype=self.search_dtype, **kw
            ),
            "n_atoms": AtomCount(self.max_atoms, **kw),
            "min_distance": MinDistanceViolations(self.min_distance_threshold, search_dtype=self.search_dtype, **kw),
        }
        if self.has_carbon:
            m["sp"] = CoordinationHistogram(
                {(CARBON, CARBON): self.carbon_cutoff}, 8, search_dtype=self.search_dtype, **kw
            )
        if self.ideal is not None:
            m["phase"] = PhaseMatch(self.ideal, self.tolerance, **kw)
        return m

    @property
    def dr(self) -> float:
        return self.r_max / self.n_bins

    def target_counts(self, batch: Structures, phase: Sequence[Any] | torch.Tensor | None = None) -> torch.Tensor:
        """(B,) float64 target atom count per structure for ``n_atoms_error``.

        In order: the atom count of the ideal crystal of ``phase`` (when ideals are a list/dict and
        ``phase`` is given); else the mean count of the reference structures with the same cell
        (within 1e-3 Å); else the reference number density (mean n/V) times the structure's volume,
        rounded.
        """
        batch = as_batch(batch)
        cells = batch.cell.double().to(self.reference_cells.device)
        out = torch.empty(len(batch), dtype=torch.float64, device=cells.device)
        ideal_counts = None
        if phase is not None and isinstance(self.ideal, (Mapping, list, tuple)):
            ideals = self.ideal if isinstance(self.ideal, Mapping) else dict(enumerate(self.ideal))
            ph = phase.detach().cpu().tolist() if isinstance(phase, torch.Tensor) else list(phase)
            ideal_counts = [len(ideals[p]) if p in ideals else None for p in ph]
        diff = (cells[:, None] - self.reference_cells[None]).abs().amax(dim=(-1, -2))  # (B, R)
        same = diff < 1e-3
        for b in range(len(batch)):
            if ideal_counts is not None and ideal_counts[b] is not None:
                out[b] = float(ideal_counts[b])
            elif bool(same[b].any()):
                out[b] = self.reference_counts[same[b]].mean()
            else:
                out[b] = float(round(self.reference_density * float(torch.linalg.det(cells[b]).abs())))
        return out

    def _update(self, metrics: Mapping[str, Metric], batch: Structures, phase=None, target_n_atoms=None) -> None:
        batch = as_batch(batch)
        metrics["rdf"].update(batch)
        metrics["coordination"].update(batch)
        metrics["min_distance"].update(batch)
        if target_n_atoms is None:
            target_n_atoms = self.target_counts(batch, phase)
        metrics["n_atoms"].update(batch, target=target_n_atoms)
        if "sp" in metrics:
            metrics["sp"].update(batch)
        if "phase" in metrics:
            metrics["phase"].update(batch, phase=phase)

    def update(
        self,
        batch: Structures,
        phase: Sequence[Any] | torch.Tensor | None = None,
        target_n_atoms: int | Sequence[int] | torch.Tensor | None = None,
    ) -> None:
        """Add generated structures. ``phase`` (B,) selects the ideal crystal per structure (keys of
        ``ideal``) for conditional models; ``target_n_atoms`` overrides ``target_counts``."""
        self._update(self.metrics, batch, phase, target_n_atoms)

    def reset(self) -> None:
        for m in self.metrics.values():
            m.reset()

    # ----------------------------------------------------------------------------------------------
    def _flat(self, metrics: Mapping[str, Metric]) -> dict[str, float]:
        out: dict[str, float] = {}
        g = metrics["rdf"].compute()
        out["rdf_l1"] = float(rdf_l1(g, self.g_reference.to(g.device), self.dr))
        fractions = _gathered_fractions(metrics["coordination"])
        ref_hist = self.coordination_reference.double().cpu()
        l1s = []
        for z in sorted(set(self.reference_species) | set(fractions)):
            f = fractions[z] if z in fractions else torch.full((self.max_cn + 1,), float("nan"), dtype=torch.float64)
            ref_total = ref_hist[z].sum()
            fr = ref_hist[z] / ref_total if ref_total > 0 else torch.zeros_like(f)
            have = not bool(torch.isnan(f).any())
            for k in range(self.max_cn + 1):
                if (have and f[k] > 0) or fr[k] > 0:
                    out[f"coordination/{z}/{k}"] = float(f[k]) if have else float("nan")
            if z in self.reference_species:
                l1s.append(float((torch.nan_to_num(f, nan=0.0) - fr).abs().sum()) if have else 1.0)
        out["coordination_l1"] = float(np.mean(l1s)) if l1s else float("nan")
        if "phase" in metrics:
            for key, value in metrics["phase"].compute().items():
                if key != "displacement_mean":
                    out[key] = float(value)
        out.update({k: float(v) for k, v in metrics["n_atoms"].compute().items()})
        out.update({k: float(v) for k, v in metrics["min_distance"].compute().items()})
        if "sp" in metrics:
            f = _gathered_fractions(metrics["sp"]).get(CARBON)
            for key, k in (("sp", 2), ("sp2", 3), ("sp3", 4)):
                out[f"{key}_fraction"] = float(f[k]) if f is not None else float("nan")
        return out

    def compute(self) -> dict[str, float]:
        """Flat ``{name: float}`` (see the module docstring); NaN where undefined (no samples yet)."""
        with warnings.catch_warnings():  # "compute called before update": we return NaN on purpose
            warnings.filterwarnings("ignore", message="The ``compute`` method of metric")
            return self._flat(self.metrics)

    def reference_metrics(self, phase: Sequence[Any] | None = None) -> dict[str, float]:
        """The same dict computed on the reference itself: the scale of every metric on real data
        (``phase_match`` and ``displacement_rms`` of the training-like data, its thermal spread)."""
        metrics = torch.nn.ModuleDict(self._new_metrics(sync=False)).to(self.g_reference.device)
        for start in range(0, len(self._reference), self.batch_size):
            chunk = self._reference[start : start + self.batch_size]
            ph = None if phase is None else list(phase)[start : start + self.batch_size]
            self._update(metrics, as_batch(chunk), ph)
        return self._flat(metrics)

    def curves(self) -> dict[str, Any]:
        """Numpy curves for plots: g(r), coordination and atom-count histograms, samples and reference.

        Keys: ``r``, ``dr``, ``g``, ``g_reference`` (Å, n_bins); ``coordination`` and
        ``coordination_reference`` ({Z: fractions over k = 0..max_cn}); ``coordination_cutoff``;
        ``n_atoms`` (0..max_atoms), ``n_atoms_hist``, ``n_atoms_hist_reference`` (counts).
        """
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The ``compute`` method of metric")
            g = self.metrics["rdf"].compute().cpu().numpy()
            fractions = _gathered_fractions(self.metrics["coordination"])
        count = self.metrics["n_atoms"]
        # every process's samples, as compute() counts them
        with count.sync_context(dist_sync_fn=count.dist_sync_fn, should_sync=count.sync_on_compute):
            n_atoms_hist = count.hist.cpu().numpy().copy()
        ref_hist = self.coordination_reference.double().cpu().numpy()
        ref_frac = {z: ref_hist[z] / ref_hist[z].sum() for z in self.reference_species if ref_hist[z].sum() > 0}
        cutoff = self.coordination_cutoff
        return {
            "r": self.r.cpu().numpy(),
            "dr": self.dr,
            "g": g,
            "g_reference": self.g_reference.cpu().numpy(),
            "coordination": {z: f.numpy() for z, f in fractions.items()},
            "coordination_reference": ref_frac,
            "coordination_cutoff": dict(cutoff) if isinstance(cutoff, Mapping) else float(cutoff),
            "n_atoms": np.arange(self.max_atoms + 1),
            "n_atoms_hist": n_atoms_hist,
            "n_atoms_hist_reference": self.n_atoms_hist_reference.cpu().numpy(),
        }
