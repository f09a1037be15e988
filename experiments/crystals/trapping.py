"""Where a fixed-count particle model fails: how far back in the anneal can sampling start and still end on the crystal?

The seed paper's explanation for particle models failing on crystals is trapping: while the noise falls,
particles settle into sites one by one, and an atom that lands on an occupied site cannot leave it once the
noise is small. This script measures it on a trained torus particle checkpoint. It takes real training
crystals, noises them to the level of diffusion time ``t`` (sigma(t), in fractional units and in Å along the
first cell edge), runs the sampler's remaining levels from there, and scores the results: the phase-match rate
(0.5 Å) and the fraction of samples with overlapping atoms (a pair closer than 0.75 × the data's minimum
distance). ``t = 1`` is ordinary sampling from uniform positions. Each ``--samplers`` entry is also run, so
the step rule and the number of levels are measured on the same checkpoint.

Usage::

    python experiments/crystals/trapping.py --ckpt runs/crystals_compare/runs/fcc-particle_torus/last.ckpt \\
        --dataset runs/crystals_compare/data/fcc_2x2x2_s0.05_n128_seed0.h5 \\
        --out experiments/crystals/results/trapping_fcc

Writes ``trapping.json`` (every number and the command), ``trapping.md`` and ``trapping.png`` to ``--out``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lightning_gcd.io import write_json_atomic, write_text_atomic
from lightning_gcd.runner.results import new_figure, save_figure, study_command


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="trapping.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", required=True, help="a TorusParticleDiffusion checkpoint")
    p.add_argument("--dataset", required=True, help="the phase's HDF5 dataset (training split: the starting crystals)")
    p.add_argument(
        "--start-times",
        type=float,
        nargs="+",
        default=[0.2, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0],
        metavar="T",
        help="diffusion times to start from (1: uniform positions)",
    )
    p.add_argument(
        "--samplers",
        nargs="+",
        default=["pc-1000"],
        metavar="SAMPLER-LEVELS",
        help="sampler and number of levels of the full schedule, e.g. pc-1000 pc-200 em-1000",
    )
    p.add_argument("--samples", type=int, default=32, help="structures per (sampler, start time)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--out", required=True, help="output folder")
    return p


def parse_sampler(spec: str) -> tuple[str, int]:
    name, _, levels = spec.rpartition("-")
    if name not in ("pc", "em") or not levels.isdigit() or int(levels) < 1:
        raise SystemExit(f"{spec!r}: a sampler is pc-LEVELS or em-LEVELS, e.g. pc-1000")
    return name, int(levels)


def score(samples: Sequence[Any], ideal, threshold: float) -> dict[str, float]:
    """Phase-match rate at 0.5 Å and the fraction of samples with a pair closer than ``threshold`` Å."""
    from ase.neighborlist import neighbor_list

    from lightning_gcd.metrics.phase_match import phase_matches

    matched = [bool(phase_matches(a, ideal, 0.5)[0]) for a in samples]
    overlap = [bool(neighbor_list("d", a, threshold).size) for a in samples]
    return {"phase_match": float(np.mean(matched)), "overlap_fraction": float(np.mean(overlap))}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    import torch

    from datamodules.h5format import AtomsH5
    from lightning_gcd.metrics.phase_match import ideal_for_dataset
    from lightning_gcd.metrics.suite import StructureMetrics
    from lightning_gcd.models.loading import load_model
    from lightning_gcd.models.particle_torus import TorusParticleDiffusion
    from lightning_gcd.structures import StructureBatch

    torch.set_num_threads(args.threads)
    samplers = [parse_sampler(s) for s in args.samplers]
    if not all(0.0 < t <= 1.0 for t in args.start_times):
        raise SystemExit("--start-times must lie in (0, 1]")
    model = load_model(args.ckpt, base=TorusParticleDiffusion)
    ideal = ideal_for_dataset(args.dataset)[0]
    with AtomsH5(args.dataset) as data:
        train = [data.atoms(int(k)) for k in data.split("train")]
    threshold = float(StructureMetrics(train, ideal=ideal).min_distance_threshold)
    rng = np.random.default_rng(args.seed)
    starts = [train[int(i)] for i in rng.integers(0, len(train), args.samples)]
    batch = StructureBatch.from_atoms(starts)
    edge = float(np.linalg.norm(ideal.cell[0]))
    rows: list[dict[str, Any]] = []
    result = {
        "command": study_command(__file__, argv),
        "checkpoint": args.ckpt,
        "dataset": args.dataset,
        "samples": args.samples,
        "min_distance_threshold": threshold,
        "rows": rows,
        "machine": {"platform": platform.platform(), "torch": torch.__version__, "threads": args.threads},
    }
    context = model.ema.swapped_in(model.net) if model.ema is not None else None
    if context is not None:
        context.__enter__()
    try:
        for name, levels in samplers:
            for t in sorted(args.start_times):
                generator = torch.Generator().manual_seed(args.seed + 1)
                t0 = time.perf_counter()
                if t >= 1.0:
                    template = {"cell": batch.cell, "numbers": batch.numbers, "mask": batch.mask}
                    out = model.generate(template, steps=levels, sampler=name, generator=generator)
                else:
                    out = model.resample(batch, t, steps=levels, sampler=name, generator=generator)
                seconds = time.perf_counter() - t0
                sigma = float(model.diffusion.sigma(torch.tensor([t]), batch.n_atoms[:1])[0])
                row = {
                    "sampler": name,
                    "levels": levels,
                    "start_time": t,
                    "sigma_frac": sigma,
                    "sigma_angstrom": sigma * edge,
                    "seconds": seconds,
                    **score(out.to_atoms(), ideal, threshold),
                }
                rows.append(row)
                print(
                    f"[trapping] {name}-{levels} from t={t:.2f} (σ {sigma:.4f} = {sigma * edge:.3f} Å): "
                    f"match {row['phase_match']:.0%}, overlap {row['overlap_fraction']:.0%} ({seconds:.0f} s)",
                    flush=True,
                )
                result["machine"]["date"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
                write(result, Path(args.out))  # after every row: an interrupted run keeps what it measured
    finally:
        if context is not None:
            context.__exit__(None, None, None)
    return result


def write(result: dict[str, Any], out: Path) -> None:
    write_json_atomic(out / "trapping.json", result, keep_nan=True, indent=1)
    lines = [
        "# Trapping: sampling started from noised training crystals",
        "",
        f"`{' '.join(result['command'])}`",
        "",
        f"{result['samples']} samples per row; overlap: a pair closer than {result['min_distance_threshold']:.2f} Å.",
        "",
        "| sampler | start t | σ (frac) | σ (Å) | phase match | overlap | s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['sampler']}-{r['levels']} | {r['start_time']:.2f} | {r['sigma_frac']:.4f} | "
            f"{r['sigma_angstrom']:.3f} | {100 * r['phase_match']:.0f}% | {100 * r['overlap_fraction']:.0f}% | "
            f"{r['seconds']:.0f} |"
        )
    write_text_atomic(out / "trapping.md", "\n".join(lines) + "\n")
    fig = new_figure((6, 3.8))
    ax = fig.add_subplot()
    for spec in dict.fromkeys(f"{r['sampler']}-{r['levels']}" for r in result["rows"]):
        rows = [r for r in result["rows"] if f"{r['sampler']}-{r['levels']}" == spec]
        x = [r["sigma_angstrom"] for r in rows]
        ax.plot(x, [r["phase_match"] for r in rows], "o-", label=f"{spec} phase match")
        ax.plot(x, [r["overlap_fraction"] for r in rows], "s--", label=f"{spec} overlapping atoms")
    ax.set_xscale("log")
    ax.set_xlabel("noise at the start (Å, along the first cell edge)")
    ax.set_ylabel("fraction of samples")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(frameon=False, fontsize=8)
    save_figure(fig, out / "trapping.png", dpi=120)


if __name__ == "__main__":
    main()
