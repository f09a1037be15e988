"""Few-step sampling study: phase match of the crystal experiment's voxel models against network evaluations.

Loads the voxel checkpoints that ``experiments/crystals/compare.py`` left in its work folder
(``<workdir>/runs/<phase>-voxel/last.ckpt``, EMA weights), samples the same number of structures with every
sampler/step pair given (same seed for all), and scores them exactly as the comparison does (phase match
at 0.5 Å and 0.2 Å, displacement RMS from ideal sites, atom counts). The first sampler is the reference;
the JSON says for every other one whether it stays within ``--margin`` points of it on every phase, and
with how many times fewer network evaluations (NFE: the steps, plus the restarts' steps where a ``+rN@T``
suffix asks for restart sampling; none of these samplers costs an extra call per step).

    python experiments/crystals/compare.py --profile quick          # trains the models (or reuse a run)
    python experiments/crystals/few_step.py --out experiments/crystals/results/few_step

Output: ``few_step.json``, ``few_step.md`` and ``few_step.png`` (phase match against NFE per sampler).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lightning_gcd.io import write_json_atomic, write_text_atomic
from lightning_gcd.runner.machine import machine_info
from lightning_gcd.runner.results import save_figure, study_command
from lightning_gcd.studies.crystal_scores import data_reference, evaluate
from lightning_gcd.studies.crystals import PHASES
from lightning_gcd.studies.sampler_specs import split_restarts

DEFAULT_SAMPLERS = ["ddpm-100", "ddpm-10", "ddim-10", "dpm2m-10", "dpm2m-sde-10", "dpm2m-20", "ddim-20"]


REMOVED_PROJECT = "+project"  # x0_projection, removed (lightning_gcd.models.retired): it emptied few-step samples


def parse_sampler(spec: str) -> tuple[str, int, str, tuple[int, float]]:
    """``"dpm2m-sde-10"`` -> ("dpm2m-sde", 10, "uniform", (0, 0.3)); ``"ddim-10@logsnr"`` -> ("ddim", 10,
    "logsnr", (0, 0.3)); a last ``+rN@T`` suffix (``"ddpm-100+r2@0.3"``) adds N restarts back to T × the
    training steps. The ``+project`` suffix of the removed ``x0_projection`` is refused in one line."""
    from lightning_gcd.diffusion.vp import SAMPLERS, TIMESTEP_SPACINGS
    from lightning_gcd.models.retired import RETIRED

    rest, restarts = split_restarts(spec)
    if rest.endswith(REMOVED_PROJECT):
        raise SystemExit(
            f"sampler {spec!r}: {REMOVED_PROJECT} (x0_projection) was removed: {RETIRED['x0_projection'].why}"
        )
    base, _, spacing = rest.partition("@")
    spacing = spacing or "uniform"
    name, _, steps = base.rpartition("-")
    if name not in SAMPLERS or not steps.isdigit() or int(steps) < 1 or spacing not in TIMESTEP_SPACINGS:
        raise SystemExit(
            f"sampler {spec!r}: expected SAMPLER-STEPS[@SPACING][+rN@T] with SAMPLER one "
            f"of {', '.join(SAMPLERS)} and SPACING one of {', '.join(TIMESTEP_SPACINGS)}"
        )
    return name, int(steps), spacing, restarts or (0, 0.3)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", default="runs/crystals_compare", help="compare.py's work folder (default: %(default)s)")
    p.add_argument(
        "--phases", nargs="+", choices=PHASES, default=None, help="default: every phase with a voxel checkpoint"
    )
    p.add_argument(
        "--samplers",
        nargs="+",
        default=DEFAULT_SAMPLERS,
        metavar="SAMPLER-STEPS[@SPACING][+rN@T]",
        help="the first is the reference; @quadratic or @logsnr places the steps otherwise than evenly "
        "(lightning_gcd.diffusion.vp.respaced_timesteps); +rN@T restarts the chain N times from "
        "T × the training steps (default: %(default)s)",
    )
    p.add_argument("--samples", type=int, default=32, help="structures per sampler and phase (default 32)")
    p.add_argument("--seed", type=int, default=1, help="sampling seed, the same for every sampler (default 1)")
    p.add_argument("--margin", type=float, default=0.02, help="allowed drop in phase match (default 0.02 = 2 points)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", required=True, help="results folder")
    return p


def _table(results: dict[str, Any]) -> str:
    samplers = results["samplers"]
    lines = [
        "# Few-step sampling of the crystal experiment's voxel models",
        "",
        f"{results['samples']} samples per sampler and phase, seed {results['seed']}; checkpoints from "
        f"`{results['workdir']}`. Phase match at 0.5 Å (0.2 Å in brackets); disp: RMS displacement from ideal "
        f"sites (Å; training data in the last column). Reference: {samplers[0]}.",
        f"Machine: {results['machine']['platform']}, {results['machine']['cpu_count']} CPUs, torch "
        f"{results['machine']['torch']}; {results['machine']['date']}.",
        "",
        "| phase | " + " | ".join(samplers) + " | data disp |",
        "|---|" + "---|" * (len(samplers) + 1),
    ]
    for phase, entry in results["phases"].items():
        cells = []
        for s in samplers:
            r = entry["samplers"][s]
            cells.append(f"{r['phase_match']:.0%} ({r['phase_match_strict']:.0%}), disp {r['displacement_rms']:.3f}")
        lines.append(f"| {phase} | " + " | ".join(cells) + f" | {entry['data']['displacement_rms']:.3f} |")
    lines += [
        "",
        "| sampler | NFE | NFE saving | worst drop vs reference (points) | within margin on every phase | sample s "
        "(all phases) |",
        "|---|---|---|---|---|---|",
    ]
    for s, summary in results["summary"].items():
        lines.append(
            f"| {s} | {summary['nfe']} | {summary['nfe_saving']:.0f}× | {summary['worst_drop_points']:+.1f} | "
            f"{'yes' if summary['within_margin'] else 'no'} | {summary['sample_seconds']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def _plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)

    def family(spec: str) -> str:  # sampler, spacing and restarts: one line per family
        name, _, spacing, (restarts, level) = parse_sampler(spec)
        return (name if spacing == "uniform" else f"{name}@{spacing}") + (f"+r{restarts}@{level:g}" if restarts else "")

    names = sorted({family(s) for s in results["samplers"]})
    for name in names:
        specs = sorted((results["summary"][s]["nfe"], s) for s in results["samplers"] if family(s) == name)
        nfe = [n for n, _ in specs]
        mean = [
            sum(e["samplers"][s]["phase_match"] for e in results["phases"].values()) / len(results["phases"])
            for _, s in specs
        ]
        ax.plot(nfe, [100 * m for m in mean], "o-", label=name)
    ax.set_xscale("log")
    ax.set_xlabel("network evaluations per sample")
    ax.set_ylabel("phase match, mean over phases (%)")
    ax.set_ylim(-2, 102)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    import torch

    from lightning_gcd.models.loading import load_model

    torch.set_num_threads(args.threads)
    specs = [parse_sampler(s) for s in args.samplers]
    workdir = Path(args.workdir)
    phases = args.phases or [p for p in PHASES if (workdir / "runs" / f"{p}-voxel" / "last.ckpt").exists()]
    if not phases:
        raise SystemExit(f"no voxel checkpoints under {workdir}/runs: run experiments/crystals/compare.py first")
    settings = {"threads": args.threads, "accelerator": "cpu"}
    results: dict[str, Any] = {
        "study": "crystals_few_step",
        "workdir": str(workdir),
        "samplers": list(args.samplers),
        "samples": args.samples,
        "seed": args.seed,
        "margin": args.margin,
        "machine": machine_info(settings),
        "command": study_command(__file__, argv or sys.argv[1:]),
        "phases": {},
    }
    for phase in phases:
        ckpt = workdir / "runs" / f"{phase}-voxel" / "last.ckpt"
        if not ckpt.exists():
            raise SystemExit(f"{ckpt}: no such checkpoint")
        model = load_model(ckpt)
        candidates = sorted((workdir / "data").glob(f"{phase}_*.h5"), key=lambda q: q.stat().st_mtime)
        if not candidates:
            raise SystemExit(f"no dataset for {phase} under {workdir}/data")
        data_path = candidates[-1]  # the newest: the one the checkpoint was trained on
        ideal, metrics, data_numbers = data_reference(data_path, 0.5, 0.2)
        entry: dict[str, Any] = {
            "checkpoint": str(ckpt),
            "dataset": str(data_path),
            "data": data_numbers,
            "samplers": {},
        }
        for spec, (sampler, steps, spacing, (restarts, level)) in zip(args.samplers, specs, strict=False):
            model.diffusion.timestep_spacing = spacing
            model.sample_restarts, model.sample_restart_t = restarts, level
            t0 = time.perf_counter()
            samples = model.sample(
                model.sample_template(args.samples),
                batch_size=min(args.samples, 64),
                steps=steps,
                sampler=sampler,
                seed=args.seed,
                progress=False,
            )
            seconds = time.perf_counter() - t0
            res, _ = evaluate(samples, metrics, ideal, 0.2)
            res.update(
                {
                    "sampler": sampler,
                    "nfe": model.sample_evaluations(steps, sampler),
                    "spacing": spacing,
                    "restarts": restarts,
                    "restart_t": level,
                    "sample_seconds": seconds,
                }
            )
            entry["samplers"][spec] = res
            print(
                f"[few-step] {phase} {spec}: match {res['phase_match']:.0%} / {res['phase_match_strict']:.0%}, disp "
                f"{res['displacement_rms']:.3f} Å (data {data_numbers['displacement_rms']:.3f}), mean n "
                f"{res['n_atoms_mean']:.1f}/{res['n_atoms_target']}, {seconds:.1f} s",
                flush=True,
            )
        results["phases"][phase] = entry
    ref = args.samplers[0]
    results["summary"] = {}
    first = next(iter(results["phases"].values()))["samplers"]
    for spec in args.samplers:
        drops = [
            e["samplers"][spec]["phase_match"] - e["samplers"][ref]["phase_match"] for e in results["phases"].values()
        ]
        nfe = first[spec]["nfe"]
        results["summary"][spec] = {
            "nfe": nfe,
            "nfe_saving": first[ref]["nfe"] / nfe,
            "worst_drop_points": 100 * min(drops),
            "within_margin": min(drops) >= -args.margin - 1e-9,
            "sample_seconds": sum(e["samplers"][spec]["sample_seconds"] for e in results["phases"].values()),
        }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "few_step.json", results, indent=1)
    write_text_atomic(out / "few_step.md", _table(results))
    _plot(results, out / "few_step.png")
    print(_table(results))
    return results


if __name__ == "__main__":
    main()
