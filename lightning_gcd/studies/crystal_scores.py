"""Scores of generated crystal structures against their phase (``experiments/crystals``): phase match at a
loose and a strict tolerance, displacement from the ideal sites, g(r), atom counts and overlaps; and the same
numbers of the training data, the target a generator is measured against."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["data_reference", "evaluate", "strict_match"]


def strict_match(samples: Sequence[Any], ideal, tolerance: float) -> tuple[float, float]:
    """(rate, RMS displacement of the matched atoms) at ``tolerance``."""
    from lightning_gcd.metrics.phase_match import phase_matches

    matched, sq, cnt = 0, 0.0, 0
    for atoms in samples:
        ok, disp = phase_matches(atoms, ideal, tolerance)
        if ok:
            matched += 1
            sq += float((disp**2).sum())
            cnt += disp.size
    rate = matched / len(samples) if samples else float("nan")
    return rate, (math.sqrt(sq / cnt) if cnt else float("nan"))


def evaluate(samples: Sequence[Any], metrics, ideal, strict_tolerance: float) -> tuple[dict[str, Any], dict[str, Any]]:
    """Scalar results and curves of generated structures (``metrics``: a ``StructureMetrics``)."""
    metrics.reset()
    nonempty = [a for a in samples if len(a) > 0]
    if nonempty:
        metrics.update(nonempty)
    values = metrics.compute()
    curves = metrics.curves()
    counts = Counter(int(len(a)) for a in samples)
    target = len(ideal)
    out: dict[str, Any] = {
        "n_samples": len(samples),
        "phase_match": float(values.get("phase_match", float("nan"))) * len(nonempty) / max(1, len(samples)),
        "displacement_rms": values.get("displacement_rms", float("nan")),
        "rdf_l1": values["rdf_l1"],
        "coordination_l1": values.get("coordination_l1", float("nan")),
        "n_atoms_target": target,
        "n_atoms_mean": float(np.mean([len(a) for a in samples])) if samples else float("nan"),
        "n_atoms_error": float(np.mean([abs(len(a) - target) for a in samples])) if samples else float("nan"),
        "n_atoms_exact": float(np.mean([len(a) == target for a in samples])) if samples else float("nan"),
        "n_atoms_hist": {str(k): v for k, v in sorted(counts.items())},
        "min_distance_violations": (values["min_distance_violations"] * len(nonempty) / max(1, len(samples))),
        "min_distance": values["min_distance"],
        "empty_samples": len(samples) - len(nonempty),
    }
    strict_rate, strict_rms = strict_match(samples, ideal, strict_tolerance)
    out["phase_match_strict"] = strict_rate
    out["displacement_rms_strict"] = strict_rms
    for key in ("phase_match", "min_distance_violations"):  # no structure at all: nothing matched
        if not nonempty:
            out[key] = 0.0 if key == "phase_match" else float("nan")
    ints = ("n_samples", "n_atoms_target", "empty_samples", "n_atoms_hist")
    return {k: (v if k in ints else float(v)) for k, v in out.items()}, curves


def data_reference(path: Path, tolerance: float, strict_tolerance: float):
    """``(ideal crystal, metrics object, training data's own numbers)`` of one phase's dataset file; the
    metrics' reference is the training split."""
    from datamodules.h5format import AtomsH5
    from lightning_gcd.metrics.phase_match import ideal_for_dataset
    from lightning_gcd.metrics.suite import StructureMetrics

    ideal = ideal_for_dataset(path)[0]
    with AtomsH5(path) as data:
        train_atoms = [data.atoms(int(k)) for k in data.split("train")]
    metrics = StructureMetrics(train_atoms, ideal=ideal, tolerance=tolerance)
    ref = metrics.reference_metrics()
    strict_rate, strict_rms = strict_match(train_atoms, ideal, strict_tolerance)
    data = {
        "n_structures": len(train_atoms),
        "n_atoms": int(len(train_atoms[0])),
        "phase_match": float(ref["phase_match"]),
        "phase_match_strict": strict_rate,
        "displacement_rms": float(ref["displacement_rms"]),
        "displacement_rms_strict": strict_rms,
        "min_distance": float(metrics.reference_min_distance),
        "min_distance_threshold": float(metrics.min_distance_threshold),
    }
    return ideal, metrics, data
