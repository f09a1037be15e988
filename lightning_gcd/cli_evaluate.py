"""``gcd evaluate SAMPLES --reference DATASET``: the structure metrics of generated samples.

SAMPLES is any file ASE can read (extxyz, POSCAR, CIF, LAMMPS dump, ...) or one of our HDF5 dataset
files (detected with ``h5py.is_hdf5``). The reference is a dataset file; its split (default ``val``)
gives the reference g(r), coordination and atom counts, and, for datasets written by the crystals
builder, the ideal crystals of ``phase_match``. Every metric is printed for the samples and, beside
it, for the reference itself (the scale of each metric on real data, e.g. the thermal
``displacement_rms``).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms

from lightning_gcd.errors import GcdError

SPLITS = ("val", "test", "train", "all")


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError("must be positive")
    return value


def add_evaluate_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "evaluate",
        help="structure metrics of generated samples against a reference dataset",
        description="Print every structure metric of SAMPLES (an ASE-readable file or a "
        "lightning_gcd HDF5 file) beside the same metric of the reference split.",
    )
    p.add_argument("samples", help="generated structures: an ASE-readable file or a lightning_gcd HDF5 file")
    p.add_argument("--reference", required=True, help="reference dataset (lightning_gcd HDF5 file)")
    p.add_argument(
        "--split", default="val", choices=SPLITS, help="reference split (default val; 'all' = every structure)"
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a text table")
    p.add_argument("--plots", metavar="DIR", default=None, help="write rdf.png, coordination.png, n_atoms.png here")
    p.add_argument("--tolerance", type=_positive, default=0.5, help="phase-match tolerance in Å (default 0.5)")
    p.add_argument("--r-max", type=_positive, default=6.0, dest="r_max", help="g(r) range in Å (default 6)")
    p.add_argument("--n-bins", type=int, default=120, dest="n_bins", help="g(r) bins (default 120)")
    p.add_argument(
        "--cutoff",
        type=_positive,
        default=None,
        help="coordination cutoff in Å (default: first minimum of the reference g(r))",
    )
    p.add_argument(
        "--min-distance",
        type=_positive,
        default=None,
        dest="min_distance",
        help="Å threshold of min_distance_violations (default 0.75 × the reference's smallest distance)",
    )
    p.add_argument("--format", default=None, help="ASE format of SAMPLES when the file name does not tell")
    p.add_argument("--index", default=":", help="frames of SAMPLES to read, ASE syntax (default ':' = all)")
    return p


def read_samples(path: str | Path, fmt: str | None = None, index: str = ":") -> list[Atoms]:
    """Structures from an HDF5 dataset file or any ASE-readable file; ``GcdError`` on bad input."""
    import h5py

    path = Path(path)
    if not path.exists():
        raise GcdError(f"{path}: no such file")
    if path.is_dir():
        raise GcdError(f"{path}: is a directory, expected a structure file")
    if h5py.is_hdf5(path):
        from datamodules.h5format import AtomsH5

        with AtomsH5(path) as data:
            atoms = [data.atoms(i) for i in range(len(data))]
    else:
        import ase.io

        try:
            read = ase.io.read(path, index=index, format=fmt)
        except Exception as exc:  # ASE raises many types for unreadable files
            raise GcdError(f"{path}: cannot read structures ({type(exc).__name__}: {exc})") from None
        atoms = [read] if isinstance(read, Atoms) else list(read)
    if not atoms:
        raise GcdError(f"{path}: no structures in the file")
    for i, a in enumerate(atoms):
        if abs(np.linalg.det(np.asarray(a.cell[:]))) < 1e-6:
            raise GcdError(f"{path}: structure {i} has no periodic cell (the metrics are periodic)")
        if not np.all(np.isfinite(a.positions)):
            raise GcdError(f"{path}: structure {i} has non-finite coordinates")
        a.pbc = True
    return atoms


def read_reference(path: str | Path, split: str) -> list[Atoms]:
    from datamodules.h5format import AtomsH5

    with AtomsH5(path) as data:
        indices = np.arange(len(data)) if split == "all" else data.split(split)
        if len(indices) == 0:
            raise GcdError(f"{path}: split '{split}' is empty; choose another with --split")
        return [data.atoms(int(i)) for i in indices]


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    return f"{value:.4f}"


def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    """Everything ``gcd evaluate`` reports, as a dict (``run_evaluate`` prints it)."""
    import torch

    from lightning_gcd.metrics import StructureMetrics, ideal_for_dataset

    samples = read_samples(args.samples, getattr(args, "format", None), getattr(args, "index", ":"))
    reference = read_reference(args.reference, args.split)
    if args.n_bins < 1:
        raise GcdError("--n-bins must be at least 1")
    ideal = ideal_for_dataset(args.reference, strict=False) or None
    max_atoms = max(16, 2 * max(len(a) for a in reference), max(len(a) for a in samples))
    try:
        metrics = StructureMetrics(
            reference,
            r_max=args.r_max,
            n_bins=args.n_bins,
            coordination_cutoff=args.cutoff,
            ideal=ideal,
            tolerance=args.tolerance,
            max_atoms=max_atoms,
            min_distance=args.min_distance,
        )
    except ValueError as exc:
        raise GcdError(f"{args.reference}: {exc}") from None
    with torch.no_grad():
        for start in range(0, len(samples), 64):
            metrics.update(samples[start : start + 64])
        values = metrics.compute()
        reference_values = metrics.reference_metrics()
    plots: list[str] = []
    if args.plots:
        from lightning_gcd.metrics.plots import save_all_plots

        plots = [str(p) for p in save_all_plots(metrics.curves(), args.plots)]
    cutoff = metrics.coordination_cutoff
    return {
        "samples": str(args.samples),
        "n_samples": len(samples),
        "reference": str(args.reference),
        "split": args.split,
        "n_reference": len(reference),
        "settings": {
            "r_max": metrics.r_max,
            "n_bins": metrics.n_bins,
            "coordination_cutoff": {f"{a}-{b}": c for (a, b), c in cutoff.items()}
            if isinstance(cutoff, dict)
            else float(cutoff),
            "min_distance_threshold": metrics.min_distance_threshold,
            "tolerance": metrics.tolerance if ideal is not None else None,
            "ideal_crystals": {str(k): a.info.get("label", "") for k, a in (ideal or {}).items()},
        },
        "metrics": {k: _clean(v) for k, v in values.items()},
        "reference_metrics": {k: _clean(v) for k, v in reference_values.items()},
        "plots": plots,
    }


def format_report(report: dict[str, Any]) -> str:
    s = report["settings"]
    cutoff = s["coordination_cutoff"]
    cutoff_text = f"{cutoff:.3f} Å" if isinstance(cutoff, float) else json.dumps(cutoff)
    lines = [
        f"samples:   {report['samples']} ({report['n_samples']} structures)",
        f"reference: {report['reference']}, split {report['split']} ({report['n_reference']} structures)",
        f"coordination cutoff {cutoff_text}; min-distance threshold {s['min_distance_threshold']:.3f} Å; "
        + (
            f"phase tolerance {s['tolerance']} Å"
            if s["tolerance"] is not None
            else "no ideal crystals (no phase_match)"
        ),
        "",
    ]
    keys = list(report["metrics"]) + [k for k in report["reference_metrics"] if k not in report["metrics"]]
    width = max([len(k) for k in keys] + [6])
    lines.append(f"{'metric':<{width}}  {'samples':>10}  {'reference':>10}")
    for k in keys:
        lines.append(
            f"{k:<{width}}  {_fmt(report['metrics'].get(k)):>10}  {_fmt(report['reference_metrics'].get(k)):>10}"
        )
    if report["plots"]:
        lines += ["", "plots: " + ", ".join(report["plots"])]
    return "\n".join(lines)


def run_evaluate(args: argparse.Namespace) -> int:
    report = evaluate(args)
    if args.json:
        print(json.dumps(report, indent=2, allow_nan=False))
    else:
        print(format_report(report))
    return 0
