"""The headline experiment: particle diffusion vs the grand canonical voxel model on simple crystals.

For each phase (sc Po, fcc Cu, bcc W, hcp Mg, diamond Si; 2×2×2 conventional cells, Gaussian thermal
displacements as in the crystal builder) this script builds one dataset, trains BOTH models on it with
the same budget (the same number of optimiser steps and the same batch size) with the real Lightning
``Trainer``, samples N structures from each with its EMA weights, and scores them with the project's
structure metrics against the training data:

* phase-match rate at 0.5 Å and at the stricter 0.2 Å (same atom count, every atom one-to-one within the
  tolerance of an ideal site after the best translation) — the training data's own rates alongside;
* RMS displacement of the matched samples' atoms from the ideal sites vs the training data's (a generator
  that collapses the thermal spread, or smears it, shows here);
* g(r) L1 against the training data; the atom-count error and the histogram of counts; the fraction of
  samples with a pair closer than 0.75 × the data's minimum distance;
* wall time to train and to sample (and the machine it ran on).

Usage::

    python experiments/crystals/compare.py --profile quick                     # 5 phases × 2 models, 2-core CPU
    python experiments/crystals/compare.py --profile paper                     # GPU sized
    python experiments/crystals/compare.py --phases fcc bcc --steps 300 --samples 16 --out /tmp/cmp
    python experiments/crystals/compare.py --profile quick --wandb             # one W&B run per phase/model

Outputs in ``--out`` (default ``<workdir>/results``): ``results.json`` (every number, the settings and
the machine), ``results.md`` (the table), ``curves.json`` (g(r) curves and atom-count histograms),
``phase_match.png``, ``rdf_<phase>.png``, ``n_atoms_<phase>.png``. ``results.json`` and ``results.md``
are rewritten after every run, so a long run can be inspected while it goes.

Profiles (YAML files in ``profiles/``; all overridable: ``--steps``, ``--samples``, ``--set KEY=VALUE``, ...):

``quick``  a 2-core CPU, all five phases and both models, two runs at a time (``--jobs 2``, one torch
           thread each), sized to finish in under 45 minutes.
``paper``  a GPU: larger networks, 20k steps, 256 samples, more sampler steps, ``accelerator="auto"``.

The measurements behind each number of the quick profile (sampler, learning rate, grids, offset
parametrisation, restarts, budgets), the current results table and the superseded runs are in
``experiments/crystals/RESULTS.md``; how to run the study is in ``experiments/crystals/README.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lightning_gcd.io import to_jsonable, write_json_atomic, write_structures_atomic, write_text_atomic
from lightning_gcd.runner.jobs import Job, run_jobs, write_job_output
from lightning_gcd.runner.machine import machine_info
from lightning_gcd.runner.profiles import apply_overrides, load_profile, profile_names, profile_path
from lightning_gcd.runner.results import (
    claim_folder,
    curves_from_json,
    new_figure,
    read_json,
    results_lock,
    save_figure,
    study_command,
)
from lightning_gcd.runner.trainer import build_trainer, checkpointing, quiet_lightning, set_threads
from lightning_gcd.studies.crystal_scores import data_reference, evaluate, strict_match
from lightning_gcd.studies.crystals import (
    COLORS,
    MODEL_LABELS,
    MODELS,
    PARTICLE_SECTION,
    PHASES,
    TORUS_SECTION,
    VOXEL_SECTION,
    model_and_data,
    nearest_neighbour_distance,
    particle_geometry,
)
from lightning_gcd.studies.sampler_specs import parse_variant

#: training budgets (``--budget``): the profile's optimiser steps, the voxel model's training wall time on the
#: same phase, or until the validation phase match stops improving (``RatePlateauStop``) within a step cap
BUDGETS = ("steps", "walltime", "converge")
BUDGET_LABELS = {"steps": "equal steps", "walltime": "equal wall time", "converge": "to convergence"}
STUDY = "crystals_compare"

#: the study's profiles (``--profile quick``: ``profiles/quick.yaml``): every number in them is a choice, the
#: comments there say why, and the measurements behind them are in experiments/crystals/RESULTS.md (History)
PROFILES = Path(__file__).resolve().parent / "profiles"
#: the keys a profile may hold (``lightning_gcd.runner.profiles``: None is any value, a mapping a section that
#: may also be given as the path of another YAML file)
PROFILE_SCHEMA = {
    "description": str,
    **dict.fromkeys(
        (
            "accelerator",
            "threads",
            "jobs",
            "num_workers",
            "count",
            "thermal_sigma",
            "repeat",
            "data_seed",
            "steps",
            "phase_steps",
            "batch_size",
            "samples",
            "supercell_samples",
            "seed",
            "extra_samplers",
            "tolerance",
            "strict_tolerance",
        )
    ),
    "voxel": VOXEL_SECTION,
    "particle": PARTICLE_SECTION,
    "particle_torus": TORUS_SECTION,
}


# ----------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="compare.py",
        description="Train the particle baseline and the grand canonical voxel model on the same crystal data "
        "with the same budget, sample both and compare them (results.json, results.md, PNGs).",
    )
    p.add_argument(
        "--profile",
        default="quick",
        help=f"settings preset: one of {', '.join(profile_names(PROFILES))} (experiments/crystals/profiles/*.yaml) "
        "or the path of a YAML profile of your own (default: quick)",
    )
    p.add_argument(
        "--phases",
        nargs="+",
        choices=PHASES,
        default=None,
        metavar="PHASE",
        help=f"phases to run (default: all of {' '.join(PHASES)})",
    )
    p.add_argument(
        "--models",
        nargs="+",
        choices=MODELS,
        default=None,
        metavar="MODEL",
        help=f"models to run (default: all of {' '.join(MODELS)})",
    )
    p.add_argument(
        "--budget",
        choices=BUDGETS,
        default="steps",
        help="training budget: the profile's steps (default), the voxel model's training wall time on the "
        "same phase (walltime: the steps that take as long as the voxel model's, both speeds measured side by "
        "side in this run), or until the validation phase match plateaus within the profile's step cap "
        "(converge). Every budget is resumable: the same command continues a killed run from its last.ckpt",
    )
    p.add_argument(
        "--key",
        default=None,
        help="results.json key of the runs (default: the model's name for its headline budget — steps for "
        "voxel and particle, converge for particle_torus — else MODEL@BUDGET, e.g. particle_torus@steps); "
        "one model per invocation when given",
    )
    p.add_argument(
        "--merge",
        action="store_true",
        help="add the runs to <out>/results.json and curves.json instead of starting them anew (phases and "
        "models run now replace their earlier entries)",
    )
    p.add_argument(
        "--chunk-minutes",
        type=float,
        default=None,
        help="stop each run's training after so many minutes (its last.ckpt saved); the same command continues "
        "it (for sessions or jobs with a time limit)",
    )
    p.add_argument(
        "--save-weights",
        default=None,
        metavar="DIR",
        help="also write each trained model's weights (EMA included, no optimiser state) to "
        "DIR/<phase>-<key>.ckpt: a small checkpoint that gcd sample reads",
    )
    p.add_argument(
        "--supercell-samples",
        type=int,
        default=None,
        help="structures sampled from each model in the 2x2x2 supercell of the training cell and matched "
        "against the ideal crystal there (default: the profile's; 0 skips)",
    )
    p.add_argument("--workdir", default="runs/crystals_compare", help="datasets and run folders (default: %(default)s)")
    p.add_argument("--out", default=None, help="results folder (default: <workdir>/results)")
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help="optimiser steps of EACH model on every phase (default: the profile's, quick: 1200, diamond 3000)",
    )
    p.add_argument("--samples", type=int, default=None, help="structures sampled from each model")
    p.add_argument("--batch-size", type=int, default=None, help="training batch size of both models")
    p.add_argument("--sigma", type=float, default=None, help="thermal displacement sigma per component, Å (0.05)")
    p.add_argument("--count", type=int, default=None, help="structures per phase dataset (80%% train)")
    p.add_argument("--voxel-sample-steps", type=int, default=None, help="DDIM/DDPM steps of the voxel model")
    p.add_argument("--particle-sample-steps", type=int, default=None, help="noise levels of the particle sampler")
    p.add_argument(
        "--voxel-sampler", choices=["ddim", "ddpm", "dpm2m", "dpm2m-sde"], default=None, help="voxel sampler"
    )
    p.add_argument("--particle-sampler", choices=["em", "pc"], default=None, help="particle sampler")
    p.add_argument(
        "--extra-samplers",
        nargs="*",
        default=None,
        metavar="MODEL:SAMPLER-STEPS",
        help="more sampler settings evaluated on the same trained models, e.g. voxel:ddim-200 "
        "particle:em-300 (profile default; none to disable)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any profile entry, e.g. --set voxel.model.base_channels=32 "
        "--set particle.model.hidden=128 (VALUE is parsed as JSON when it can be)",
    )
    p.add_argument("--threads", type=int, default=None, help="torch threads per run (profile default; quick: 1)")
    p.add_argument(
        "--jobs",
        type=int,
        default=None,
        help="runs trained at the same time, each in its own process (profile default; quick: 2, one "
        "per core; paper: 1). The longest runs start first",
    )
    p.add_argument("--task", default=None, help=argparse.SUPPRESS)  # internal: PHASE:MODEL of one worker process
    p.add_argument("--task-out", default=None, help=argparse.SUPPRESS)  # internal: where that worker writes
    p.add_argument("--accelerator", default=None, help="Lightning accelerator (quick: cpu, paper: auto)")
    p.add_argument("--seed", type=int, default=None, help="training and sampling seed")
    p.add_argument(
        "--wandb", action="store_true", help="log every run with a WandbLogger (offline unless WANDB_MODE=online)"
    )
    p.add_argument("--wandb-project", default="lightning_gcd", help="W&B project (default: %(default)s)")
    p.add_argument("--study", default=STUDY, help="study name: the W&B group (default: %(default)s)")
    p.add_argument("--rebuild", action="store_true", help="rebuild the datasets even when they exist")
    p.add_argument("--quiet", action="store_true", help="no per-run progress lines")
    p.add_argument(
        "--replot",
        action="store_true",
        help="train nothing: rewrite results.md and the PNGs from <out>/results.json and curves.json",
    )
    p.add_argument(
        "--note",
        action="append",
        default=[],
        metavar="TEXT",
        help="a line for the Notes section of results.md (repeatable; kept in results.json)",
    )
    return p


def phase_steps(settings: dict[str, Any], phase: str) -> int:
    """Optimiser steps of both models on ``phase``: the profile's per-phase budget, else ``steps``."""
    return int((settings.get("phase_steps") or {}).get(phase, settings["steps"]))


def _steps_words(settings: dict[str, Any]) -> str:
    """The steps budget of the phases run, e.g. "1200 steps (diamond 6000)"."""
    own = {phase: phase_steps(settings, phase) for phase in settings["phases"]}
    other = ", ".join(f"{phase} {steps}" for phase, steps in own.items() if steps != int(settings["steps"]))
    if other and all(steps != int(settings["steps"]) for steps in own.values()):
        return f"{other} steps"
    return f"{settings['steps']} steps" + (f" ({other})" if other else "")


def budget_words(settings: dict[str, Any], phase: str, kind: str) -> str:
    """What a run on ``phase`` trains for, in words, for the progress lines."""
    if settings["budget"] == "walltime":
        return f"for the voxel model's time for {phase_steps(settings, phase)} steps"
    if settings["budget"] == "converge":
        cap = settings[kind]["converge"]["steps"][phase]
        return f"until the validation phase match plateaus (at most {cap} steps)"
    return f"{phase_steps(settings, phase)} steps"


def resolve_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The profile with the command line's overrides applied."""
    s = load_profile(profile_path(PROFILES, args.profile), PROFILE_SCHEMA)
    s["profile"] = args.profile
    for name, key in (
        ("steps", "steps"),
        ("samples", "samples"),
        ("batch_size", "batch_size"),
        ("sigma", "thermal_sigma"),
        ("count", "count"),
        ("threads", "threads"),
        ("accelerator", "accelerator"),
        ("seed", "seed"),
        ("jobs", "jobs"),
    ):
        value = getattr(args, name)
        if value is not None:
            s[key] = value
    if args.steps is not None:  # an explicit --steps applies to every phase
        s["phase_steps"] = {}
    if args.sigma is not None and "offset_sigma_data" in s["voxel"]["model"]:
        s["voxel"]["model"]["offset_sigma_data"] = args.sigma  # the blended offsets' scale is the thermal σ
    if args.voxel_sample_steps is not None:
        s["voxel"]["sample_steps"] = args.voxel_sample_steps
    if args.particle_sample_steps is not None:
        s["particle"]["sample_steps"] = args.particle_sample_steps
    if args.particle_sampler is not None:
        s["particle"]["sampler"] = args.particle_sampler
    if args.voxel_sampler is not None:
        s["voxel"]["sampler"] = args.voxel_sampler
    if args.extra_samplers is not None:
        s["extra_samplers"] = list(args.extra_samplers)
    apply_overrides(s, args.set)
    s.setdefault("extra_samplers", [])
    for spec in s["extra_samplers"]:
        parse_variant(spec)
    s["phases"] = list(args.phases or PHASES)
    s["models"] = list(args.models or MODELS)
    s["budget"] = args.budget
    if args.key is not None and len(s["models"]) != 1:
        raise SystemExit("--key names the runs of one model: give one --models MODEL with it")
    if args.supercell_samples is not None:
        s["supercell_samples"] = int(args.supercell_samples)
    s.setdefault("supercell_samples", 0)
    s.setdefault("jobs", 1)
    for key in ("steps", "samples", "batch_size", "count", "jobs"):
        if int(s[key]) < 1:
            raise SystemExit(f"--{key.replace('_', '-')} must be at least 1")
    return s


# ----------------------------------------------------------------------------------------------------
# data
def build_phase_dataset(phase: str, settings: dict[str, Any], workdir: Path, rebuild: bool = False) -> Path:
    """One crystals dataset of ``phase`` (ASE default element and lattice constant), reused when it exists
    with the same options (the options are part of the file name)."""
    from datamodules.builders import build_dataset

    sigma = float(settings["thermal_sigma"])
    repeat = [int(r) for r in settings["repeat"]]
    name = (
        f"{phase}_{'x'.join(map(str, repeat))}_s{sigma:g}_n{int(settings['count'])}_seed{int(settings['data_seed'])}.h5"
    )
    path = workdir / "data" / name
    if path.exists() and not rebuild:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        path.unlink()
    return build_dataset(
        "crystals",
        path,
        phases=[phase],
        count=int(settings["count"]),
        thermal_sigma=sigma,
        repeat=repeat,
        seed=int(settings["data_seed"]),
        progress=False,
    )


#: the results.json key of each model's headline budget; other budgets are stored as ``model@budget``
HEADLINE_BUDGET = {"voxel": "steps", "particle": "steps", "particle_torus": "converge"}


def run_key(kind: str, settings: dict[str, Any], key: str | None = None) -> str:
    """The results.json key of a run: ``--key``, else the model's name for its headline budget (voxel and Cartesian
    particle: steps; torus particle: converge), else ``model@budget``."""
    if key:
        return key
    return kind if settings["budget"] == HEADLINE_BUDGET[kind] else f"{kind}@{settings['budget']}"


#: --budget walltime: optimiser steps timed per model (after WALLTIME_WARMUP untimed ones), and how many times
#: the pair (voxel, model) is timed in turn; the faster time of each model is kept
WALLTIME_TIMED_STEPS, WALLTIME_WARMUP, WALLTIME_REPEATS = 30, 5, 2


def step_seconds(kind: str, path: Path, settings: dict[str, Any], geometry: dict[str, float], phase: str) -> float:
    """Seconds per optimiser step of ``kind`` on ``phase``: a short fit with the run's model, data and batch (no
    logger, no sampling, one process), timing the last ``WALLTIME_TIMED_STEPS`` steps."""
    import lightning as L
    from lightning.pytorch.callbacks import Callback

    class StepTimer(Callback):
        def __init__(self) -> None:
            self.start: float | None = None
            self.end = 0.0

        def on_train_batch_start(self, trainer, *_: Any) -> None:
            if self.start is None and trainer.global_step >= WALLTIME_WARMUP:
                self.start = time.perf_counter()

        def on_train_batch_end(self, *_: Any) -> None:
            self.end = time.perf_counter()

    L.seed_everything(int(settings["seed"]), workers=True, verbose=False)
    model, dm = model_and_data(kind, path, settings, geometry, phase)
    timer = StepTimer()
    trainer = build_trainer(settings, max_steps=WALLTIME_WARMUP + WALLTIME_TIMED_STEPS, callbacks=[timer])
    trainer.fit(model, dm)
    return (timer.end - float(timer.start)) / WALLTIME_TIMED_STEPS


def wall_time_steps(
    kind: str, path: Path, settings: dict[str, Any], geometry: dict[str, float], phase: str
) -> dict[str, Any]:
    """``--budget walltime``: the optimiser steps of ``kind`` that take as long as the voxel model's equal-steps
    training on ``phase`` (the profile's steps for the phase).

    Both speeds are measured here, in turn (voxel, model, voxel, model), keeping each model's faster time: on a
    shared machine a ratio measured in one process holds, two training times from different runs do not (the
    load changes the seconds, not the steps). The budget is then a step count, so the run is reproducible.
    """
    if kind == "voxel":
        raise SystemExit("--budget walltime gives another model the voxel model's training time; run voxel with steps")
    timings: dict[str, list[float]] = {"voxel": [], kind: []}
    for _ in range(WALLTIME_REPEATS):
        for k in timings:
            timings[k].append(step_seconds(k, path, settings, geometry, phase))
    voxel_steps = phase_steps(settings, phase)
    voxel_s, model_s = min(timings["voxel"]), min(timings[kind])
    return {
        "voxel_steps": voxel_steps,
        "voxel_seconds_per_step": voxel_s,
        "seconds_per_step": model_s,
        "wall_time_seconds": voxel_steps * voxel_s,
        "steps": max(1, int(round(voxel_steps * voxel_s / model_s))),
        "timings": timings,
        "load_average": list(os.getloadavg()),
    }


def _wandb_logger(
    args: argparse.Namespace,
    settings: dict[str, Any],
    phase: str,
    kind: str,
    workdir: Path,
    extra: dict[str, Any],
    key: str,
):
    """One W&B run per (phase, model, budget), grouped by phase so that a dashboard shows the models side by side."""
    from lightning.pytorch.loggers import WandbLogger

    offline = os.environ.get("WANDB_MODE", "offline").lower() != "online"
    save_dir = workdir / "wandb"
    save_dir.mkdir(parents=True, exist_ok=True)
    config = {
        "phase": phase,
        "model": kind,
        "key": key,
        "budget": settings["budget"],
        "profile": settings["profile"],
        "steps": phase_steps(settings, phase),
        "batch_size": settings["batch_size"],
        "samples": settings["samples"],
        "thermal_sigma": settings["thermal_sigma"],
        "model_settings": settings[kind],
        **extra,
    }
    return WandbLogger(
        project=args.wandb_project,
        group=f"{args.study}-{phase}",
        name=f"{phase}-{key}",
        tags=[kind, phase, settings["budget"]],
        save_dir=str(save_dir),
        offline=offline,
        config=config,
        job_type="compare",
    )


class ChunkEnded(Exception):
    """A ``--chunk-minutes`` chunk of a run ended before the run did (its last.ckpt is saved)."""


#: optimiser steps between the last.ckpt writes of an equal-steps or equal-wall-time run (a killed run loses less)
RESUME_EVERY_STEPS = 250


def run_settings(kind: str, phase: str, settings: dict[str, Any]) -> dict[str, Any]:
    """What a run's checkpoint depends on: a run folder's checkpoint resumes only a run with these settings."""
    shared = ("profile", "count", "thermal_sigma", "repeat", "data_seed", "steps", "phase_steps", "batch_size", "seed")
    return {"model": kind, "phase": phase, "budget": settings["budget"], kind: settings[kind]} | {
        k: settings.get(k) for k in shared
    }


def supercell_evaluation(model: Any, kind: str, ideal, metrics, settings: dict[str, Any]) -> dict[str, Any]:
    """Sample ``supercell_samples`` structures in the 2x2x2 supercell of the training cell and match them
    against the ideal crystal there (0.5 Å); or say why this model cannot (``{"na": reason}``)."""
    n = int(settings.get("supercell_samples") or 0)
    if n <= 0:
        return {"na": "not run (--supercell-samples 0)"}
    if kind == "particle_torus" and model.hparams.graph == "all_pairs":
        return {"na": "all-pairs Fourier features are tied to the training cell (train with graph: radius)"}
    big = ideal.repeat((2, 2, 2))
    t0 = time.perf_counter()
    samples = model.sample(
        model.sample_template(n, supercell=(2, 2, 2)),
        batch_size=min(n, 16),
        seed=int(settings["seed"]) + 2,
        progress=False,
    )
    seconds = time.perf_counter() - t0
    rate, rms = strict_match(samples, big, float(settings["tolerance"]))
    threshold = float(metrics.min_distance_threshold)
    overlap = [bool(len(a) > 1 and nearest_neighbour_distance(a) < threshold) for a in samples]
    return {
        "n_samples": n,
        "phase_match": rate,
        "displacement_rms": rms,
        "n_atoms_target": len(big),
        "n_atoms_mean": float(np.mean([len(a) for a in samples])),
        "n_atoms_exact": float(np.mean([len(a) == len(big) for a in samples])),
        "overlap_fraction": float(np.mean(overlap)),
        "sample_seconds": seconds,
    }


def run_one(
    kind: str,
    phase: str,
    path: Path,
    ideal,
    metrics,
    settings: dict[str, Any],
    workdir: Path,
    geometry: dict[str, float],
    args: argparse.Namespace,
) -> tuple[dict[str, Any], dict[str, Any], Any]:
    """Train one model on one phase, sample it, evaluate; returns (results, curves, logger or None)."""
    import lightning as L
    import torch

    from lightning_gcd.callbacks.clock import TrainingClock
    from lightning_gcd.callbacks.plateau import RatePlateauStop

    budget = settings["budget"]
    key = run_key(kind, settings, args.key)
    run_dir = workdir / "runs" / f"{phase}-{key}"
    claim_folder(
        run_dir / "run_settings.json",
        run_settings(kind, phase, settings),
        "a run",
        "remove that folder to start it again, or only its run_settings.json to continue it with the new ones",
    )
    walltime: dict[str, Any] = {}
    if budget == "walltime":  # measured once per run: a resumed run keeps its step budget
        walltime = read_json(run_dir / "wall_time.json", {})
        if not walltime:
            walltime = wall_time_steps(kind, path, settings, geometry, phase)
            write_json_atomic(run_dir / "wall_time.json", walltime, indent=1)
    L.seed_everything(int(settings["seed"]), workers=True, verbose=False)
    model, dm = model_and_data(kind, path, settings, geometry, phase)
    logger = (
        _wandb_logger(args, settings, phase, kind, workdir, geometry if kind == "particle" else {}, key)
        if args.wandb
        else False
    )
    steps = phase_steps(settings, phase)
    clock = TrainingClock(chunk_seconds=60.0 * args.chunk_minutes if args.chunk_minutes else None)
    callbacks: list[Any] = [clock]
    if budget == "walltime":
        steps = int(walltime["steps"])
    # every budget is resumable: last.ckpt every RESUME_EVERY_STEPS steps (converge: after every validation)
    options: dict[str, Any] = checkpointing(run_dir / "checkpoints", every_n_train_steps=RESUME_EVERY_STEPS)
    if budget == "converge":
        if kind != "particle_torus":
            raise SystemExit("--budget converge is set up for particle_torus (its validation sampling and step caps)")
        c = settings[kind]["converge"]
        steps = int(c["steps"][phase])
        plateau = RatePlateauStop(
            "val/phase_match",
            int(c["val_samples"]),
            int(c["window"]),
            float(c["standard_errors"]),
            every_n_steps=int(c["val_every"]),
            min_steps=int((c.get("min_steps") or {}).get(phase, 0)),
        )
        # last.ckpt after every validation (its rate already in the plateau history), not before it: a run stopped
        # while sampling for a validation resumes from the previous one and repeats it
        callbacks.append(plateau)
        options = {
            **checkpointing(run_dir / "checkpoints"),
            "limit_val_batches": 1,
            "val_check_interval": int(c["val_every"]),
            "check_val_every_n_epoch": None,
        }
    callbacks += options.pop("callbacks")
    last = run_dir / "checkpoints" / "last.ckpt"
    resume = str(last) if last.is_file() else None
    trainer = build_trainer(
        settings,
        max_steps=steps,
        logger=logger,
        callbacks=callbacks,
        log_every_n_steps=max(1, min(50, abs(steps) // 20)),
        default_root_dir=str(run_dir),
        **options,
    )
    finished = run_dir / "finished.json"  # a run whose training ended: sample it again without training
    trained: dict[str, Any] = read_json(finished, {})
    if trained:
        from lightning_gcd.models.loading import load_model

        model = load_model(run_dir / "last.ckpt")
    else:
        trainer.fit(model, dm, ckpt_path=resume)
        loss = trainer.callback_metrics.get("train/loss_epoch", trainer.callback_metrics.get("train/loss"))
        trained = {"steps": int(trainer.global_step), "final_train_loss": float("nan") if loss is None else float(loss)}
        trainer.save_checkpoint(last)  # a run killed while sampling resumes here, without training again
        if trained["steps"] < steps and not (budget == "converge" and plateau.stopped_step is not None):
            raise ChunkEnded(
                f"{phase}-{key}: chunk ended at step {trained['steps']} of "
                f"{'at most ' * (budget == 'converge')}{steps}; the same command continues from {last}"
            )
        if budget == "converge":
            trained |= {
                "step_cap": steps,
                "stopped": "plateau" if plateau.stopped_step is not None else "step cap",
                "validations": [{"step": st, "phase_match": r} for st, r in plateau.history],
            }
        trained |= {"train_seconds": clock.seconds, "validation_seconds": clock.validation_seconds}
        trainer.save_checkpoint(run_dir / "last.ckpt")  # for later sampling / inspection (gcd sample --ckpt ...)
        if args.save_weights:  # slim (no optimiser state): small enough to ship as a pretrained model
            slim = Path(args.save_weights) / f"{phase}-{key}.ckpt"
            slim.parent.mkdir(parents=True, exist_ok=True)
            trainer.save_checkpoint(slim, weights_only=True)
        write_json_atomic(finished, trained, indent=1)
    global_step, loss, train_s = int(trained["steps"]), trained["final_train_loss"], trained["train_seconds"]
    convergence = trained if budget == "converge" else {}
    ckpt = run_dir / "last.ckpt"

    sampler = settings[kind]["sampler"]
    sample_steps = int(settings[kind]["sample_steps"])
    n = int(settings["samples"])

    # the voxel model's own restart sampling (from the profile's model settings); a variant may ask for other
    own_restarts = (model.sample_restarts, model.sample_restart_t) if kind == "voxel" else (0, 0.3)

    def sample_and_evaluate(sampler: str, sample_steps: int, name: str, restarts: tuple[int, float] | None = None):
        if kind == "voxel":
            model.sample_restarts, model.sample_restart_t = restarts or own_restarts
        t0 = time.perf_counter()
        samples = model.sample(
            model.sample_template(n),
            batch_size=min(n, 64),
            steps=sample_steps,
            sampler=sampler,
            seed=int(settings["seed"]) + 1,
            progress=not args.quiet,  # a bar in the run's log: the torus model's PC-1000 takes tens of minutes on a CPU
        )
        sample_s = time.perf_counter() - t0
        res, crv = evaluate(samples, metrics, ideal, float(settings["strict_tolerance"]))
        res.update({"sampler": sampler, "sample_steps": sample_steps, "sample_seconds": sample_s})
        res["network_evaluations"] = int(model.sample_evaluations(sample_steps, sampler))
        if kind == "voxel":
            res.update({"restarts": model.sample_restarts, "restart_t": model.sample_restart_t})
        nonempty = [a for a in samples if len(a)]
        if nonempty:  # keep the samples for later inspection
            write_structures_atomic(workdir / "samples" / f"{name}.extxyz", nonempty)
        return res, crv

    results, curves = sample_and_evaluate(sampler, sample_steps, f"{phase}-{key}")
    variants = []
    for spec in settings.get("extra_samplers", []):
        vkind, vsampler, vsteps, vrestarts = parse_variant(spec)
        same_restarts = vrestarts is None or vrestarts == own_restarts or (vrestarts[0] == 0 == own_restarts[0])
        if vkind == kind and not ((vsampler, vsteps) == (sampler, sample_steps) and same_restarts):
            suffix = f"-r{vrestarts[0]}" if vrestarts else ""
            res, _ = sample_and_evaluate(vsampler, vsteps, f"{phase}-{key}-{vsampler}{vsteps}{suffix}", vrestarts)
            variants.append(res)
    results["variants"] = variants
    results["supercell"] = supercell_evaluation(model, kind, ideal, metrics, settings)
    results.update(
        {
            "model": kind,
            "key": key,
            "budget": budget,
            "phase": phase,
            "steps": global_step,
            "batch_size": int(dm.batch_size),
            "parameters": int(sum(p.numel() for p in model.net.parameters())),
            "final_train_loss": float(loss) if loss is not None else float("nan"),
            "train_seconds": train_s,
            **({"convergence": convergence} if convergence else {}),
            **({"wall_time": walltime} if walltime else {}),
            "device": str(model.device),
            "checkpoint": str(ckpt),
        }
    )
    if kind == "voxel":
        results["grid_shape"] = list(model.info["grid_shape"])
        results["spacing"] = [float(x) for x in model.info["spacing"]]
    elif kind == "particle":
        results.update({"cutoff": geometry["cutoff"], "sigma_max": geometry["sigma_max"]})
    del trainer
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return results, curves, logger


def _finish_wandb(logger, results: dict[str, Any], plots: Sequence[Path]) -> None:
    if not logger:
        return
    scalars = {
        f"val/{k}": v
        for k, v in results.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("train_seconds", "sample_seconds")
    }
    scalars["time/train_seconds"] = results["train_seconds"]
    scalars["time/sample_seconds"] = results["sample_seconds"]
    for v in results.get("variants", []):  # other sampler settings of the same model
        prefix = f"val_{v['sampler']}{v['sample_steps']}" + (f"_r{v['restarts']}" if "restarts" in v else "")
        scalars.update(
            {
                f"{prefix}/{k}": x
                for k, x in v.items()
                if isinstance(x, (int, float)) and not isinstance(x, bool) and k != "sample_seconds"
            }
        )
    logger.log_metrics(scalars)
    try:
        import wandb

        run = logger.experiment
        run.log({f"figures/{p.stem}": wandb.Image(str(p)) for p in plots if p.exists()})
        run.summary.update({k: v for k, v in scalars.items() if isinstance(v, (int, float)) and math.isfinite(v)})
        run.finish()
    except Exception as exc:  # W&B is optional: never lose the results for a logging failure
        print(f"  (W&B logging failed: {type(exc).__name__}: {exc})", flush=True)


# ----------------------------------------------------------------------------------------------------
# outputs
def table_order(key: str) -> tuple[int, int]:
    """Table and plot order of a results key: by model, then budget (steps, walltime, converge)."""
    kind, _, budget = key.partition("@")
    rank = {"steps": 0, "walltime": 1, "converge": 2}
    return (MODELS.index(kind) if kind in MODELS else len(MODELS), rank.get(budget or HEADLINE_BUDGET.get(kind, ""), 3))


def run_label(run: dict[str, Any], with_steps: bool = True) -> str:
    """The model's name and, for a budget other than the profile's steps, which budget (and its step count
    unless ``with_steps`` is off: a figure over phases whose runs trained for different steps says them per bar)."""
    kind = run.get("model", "voxel")
    budget = run.get("budget", "steps")
    label = MODEL_LABELS.get(kind, kind)
    if kind == "particle_torus" or budget != "steps":
        steps = f", {run.get('steps', '?')} steps" if with_steps else ", steps below the bars"
        label += f" [{BUDGET_LABELS.get(budget, budget)}{steps}]"
    return label


def run_color(key: str) -> str:
    return COLORS.get(key) or COLORS.get(key.partition("@")[0], "0.5")


def overlay_runs(
    out: Path, results: dict[str, Any], own_runs: dict[tuple[str, str], tuple[dict, dict]]
) -> tuple[dict, dict]:
    """``<out>/results.json`` and curves as they are on disk now, with this process's finished runs put in (so
    that processes merging into one folder at the same time keep each other's runs)."""
    if not (out / "results.json").is_file():
        disk, disk_curves = json.loads(json.dumps(to_jsonable(results))), {}
    else:
        disk = read_json(out / "results.json")
        raw = read_json(out / "curves.json", {})
        disk_curves = {phase: {k: curves_from_json(c) for k, c in per.items()} for phase, per in raw.items()}
    record = results.get("merged", [])[-1:]  # this invocation's command, when it merges into an earlier folder
    disk.setdefault("merged", [])
    if record and record[0] not in disk["merged"]:
        disk["merged"].append(record[0])
    for kind in MODELS:
        if kind in results["settings"]:
            disk["settings"].setdefault(kind, results["settings"][kind])
    for (phase, key), (res, crv) in own_runs.items():
        entry = disk["phases"].setdefault(phase, {**results["phases"][phase], "models": {}})
        entry["models"][key] = res
        entry["models"] = dict(sorted(entry["models"].items(), key=lambda item: table_order(item[0])))
        disk_curves.setdefault(phase, {})[key] = crv
    return disk, disk_curves


def merged_start(results: dict[str, Any], curves: dict[str, dict[str, Any]], out: Path) -> tuple[dict, dict]:
    """``--merge``: the earlier results.json and curves.json of ``out``, to which this invocation's runs are added;
    this invocation's command and settings are recorded under ``merged`` (the first run's stay on top)."""
    earlier = read_json(out / "results.json")
    raw = read_json(out / "curves.json", {})
    earlier.setdefault("merged", []).append(
        {"command": results["command"], "settings": results["settings"], "machine": results["machine"]}
    )
    earlier["notes"] = [*earlier.get("notes", []), *results["notes"]]
    for kind in MODELS:  # settings of a model the earlier runs did not have (e.g. the torus model added later)
        if kind in results["settings"]:
            earlier["settings"].setdefault(kind, results["settings"][kind])
    for phase, per in raw.items():
        curves.setdefault(phase, {}).update({kind: curves_from_json(c) for kind, c in per.items()})
    return earlier, curves


def _fmt(v: Any, digits: int = 2) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "—"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _num(v: Any) -> float:
    return float("nan") if v is None else float(v)


def _pct(v: Any) -> str:
    return "—" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{100 * v:.0f}%"


def sampler_label(run: dict[str, Any]) -> str:
    """ "DDPM-100", or "DDPM-100 +2 restarts @0.3T" for the voxel model's restart sampling."""
    label = f"{run['sampler'].upper()}-{run['sample_steps']}"
    if run.get("restarts"):
        label += f" +{run['restarts']} restarts @{run['restart_t']:g}T"
    return label


def _hist_text(hist: dict[str, int], target: int, limit: int = 5) -> str:
    items = sorted(((int(k), int(v)) for k, v in hist.items()), key=lambda kv: (-kv[1], kv[0]))
    shown = [f"{k}×{v}" if k != target else f"**{k}**×{v}" for k, v in items[:limit]]
    if len(items) > limit:
        shown.append(f"+{sum(v for _, v in items[limit:])} more")
    return " ".join(shown)


def results_markdown(results: dict[str, Any]) -> str:
    s = results["settings"]
    m = results["machine"]
    vm = s["voxel"]["model"]
    voxel_sampler = sampler_label(
        {
            "sampler": s["voxel"]["sampler"],
            "sample_steps": s["voxel"]["sample_steps"],
            "restarts": vm.get("sample_restarts"),
            "restart_t": vm.get("sample_restart_t", 0.3),
        }
    )
    lines = [
        "# Crystalline phases: particle baseline vs grand canonical voxel model",
        "",
        f"Profile `{s['profile']}`: {s['steps']} optimiser steps"
        + "".join(f" ({p}: {n})" for p, n in (s.get("phase_steps") or {}).items() if p in s["phases"])
        + f" and batch {s['batch_size']} for BOTH models, "
        f"{s['samples']} samples each; {s['count']} rattled 2×2×2 cells per phase (80 % train), thermal σ "
        f"{s['thermal_sigma']} Å per component. Voxel: U-Net {s['voxel']['model'].get('base_channels')} channels, "
        f"mults {s['voxel']['model'].get('channel_mults')}, {voxel_sampler}. "
        f"Particle (Cartesian): MPNN hidden {s['particle']['model'].get('hidden')}, "
        f"{s['particle']['model'].get('layers')} layers, "
        f"{s['particle']['sampler'].upper()}-{s['particle']['sample_steps']}."
        + (
            f" Particle (torus): pair network hidden {s['particle_torus']['model'].get('hidden')}, "
            f"{s['particle_torus']['model'].get('layers')} layers, {s['particle_torus']['model'].get('frequencies')} "
            f"frequencies, {s['particle_torus']['sampler'].upper()}-{s['particle_torus']['sample_steps']}; its "
            "budget and batch are in its row (steps) and in results.json."
            if "particle_torus" in s
            else ""
        ),
        f"Machine: {m['platform']}, {m['cpu_count']} CPUs, torch {m['torch']} ({m['torch_threads']} threads), "
        f"{m['cuda'] or 'no GPU'}; {m['date']}.",
        "",
        "match: phase-match rate (same atom count, every atom within the tolerance of an ideal site after the best "
        "translation). disp RMS: RMS displacement (Å) of matched samples' atoms from ideal sites (0.5 Å matching) — "
        "the training data's value is the target, not zero. g(r) L1 against the training data (Å). "
        "n (hist): atom counts, target in bold. viol.: fraction of samples with a pair closer than 0.75 × the "
        "data's minimum distance.",
        "",
        "2×2×2 supercell: phase match at 0.5 Å of samples drawn in twice the training cell (scored against the ideal "
        "crystal there), and the fraction of them with overlapping atoms; n/a where the model cannot sample it.",
        "",
        "| phase | model | match 0.5 Å | match 0.2 Å | disp RMS (Å) | g(r) L1 | mean n (target) | mean abs Δn | n "
        "(hist) "
        "| viol. | train s | sample s | evals | 2×2×2 match (overlap) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for phase, entry in results["phases"].items():
        d = entry["data"]
        lines.append(
            f"| {phase} {entry['element']} | training data | {_pct(d['phase_match'])} | "
            f"{_pct(d['phase_match_strict'])} | {_fmt(d['displacement_rms'], 3)} | — | {d['n_atoms']} | 0 | "
            f"**{d['n_atoms']}**×{d['n_structures']} | 0% | — | — | — | — |"
        )
        for run in entry["models"].values():
            for r, label in [(run, f"{run_label(run)}, {sampler_label(run)}")] + [
                (v, f"↳ same model, {sampler_label(v)}") for v in run.get("variants", [])
            ]:
                lines.append(
                    f"| {phase} {entry['element']} | {label} | {_pct(r['phase_match'])} | "
                    f"{_pct(r['phase_match_strict'])} | {_fmt(r['displacement_rms'], 3)} | {_fmt(r['rdf_l1'], 3)} | "
                    f"{_fmt(r['n_atoms_mean'], 1)} ({r['n_atoms_target']}) | {_fmt(r['n_atoms_error'], 2)} | "
                    f"{_hist_text(r['n_atoms_hist'], r['n_atoms_target'])} | {_pct(r['min_distance_violations'])} | "
                    f"{run['train_seconds']:.0f} | {r['sample_seconds']:.0f} | {r.get('network_evaluations') or '—'} | "
                    f"{_supercell_text(run) if r is run else '—'} |"
                )
    lines += ["", f"Total wall time: {results.get('total_seconds', float('nan')):.0f} s.", ""]
    notes = results.get("notes")
    if notes:
        lines += ["## Notes", "", *[f"- {n}" for n in notes], ""]
    return "\n".join(lines)


def _supercell_text(run: dict[str, Any]) -> str:
    cell = run.get("supercell") or {}
    if "na" in cell:
        return f"n/a: {cell['na']}"
    if not cell:
        return "—"
    return f"{_pct(cell['phase_match'])} ({_pct(cell['overlap_fraction'])})"


def plot_phase_match(results: dict[str, Any], path: Path) -> Path:
    phases = list(results["phases"])
    kinds = sorted({k for p in phases for k in results["phases"][p]["models"]}, key=table_order)
    fig = new_figure((max(7.0, 1.6 * len(phases) + 2), 3.4 + 0.3 * (len(kinds) + 1)))
    ax = fig.add_subplot()
    x = np.arange(len(phases))
    width = 0.8 / (len(kinds) + 1)
    series = [("data", lambda p: results["phases"][p]["data"])] + [
        (k, lambda p, k=k: results["phases"][p]["models"].get(k)) for k in kinds
    ]
    for i, (name, get) in enumerate(series):
        pos = x + (i - len(kinds) / 2) * width
        loose = [_num((get(p) or {}).get("phase_match")) for p in phases]
        strict = [_num((get(p) or {}).get("phase_match_strict")) for p in phases]
        runs = [get(p) for p in phases if get(p)]
        same_steps = len({run.get("steps") for run in runs}) <= 1
        label = "training data" if name == "data" else (run_label(runs[0], same_steps) if runs else name)
        ax.bar(pos, loose, width=width, color=run_color(name), alpha=0.45, label=f"{label} (0.5 Å)")
        ax.bar(pos, strict, width=width, color=run_color(name), label=f"{label} (0.2 Å)")
        for xp, v, p in zip(pos, loose, phases, strict=True):
            if v == v:  # not NaN: the 0.5 Å rate above the bar, so that 0 % is visible too
                ax.text(xp, v + 0.01, f"{100 * v:.0f}", ha="center", va="bottom", fontsize=7)
            if not same_steps and get(p):  # each bar's own step count, under the axis
                ax.text(xp, -0.02, f"{round(get(p)['steps'] / 1000, 1):g}k", ha="center", va="top", fontsize=6)
    ax.set_xticks(x, [f"{p} {results['phases'][p]['element']}" for p in phases])
    ax.tick_params(axis="x", pad=10)
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("phase-match rate")
    s = results["settings"]
    budget = f"equal budgets {s['steps']} steps" + "".join(
        f", {p} {n}" for p, n in (s.get("phase_steps") or {}).items() if p in s["phases"]
    )
    ax.set_title(f"Samples that are the crystal ({budget}): dark 0.2 Å, light 0.5 Å tolerance, % at 0.5 Å", fontsize=10)
    ax.legend(frameon=False, fontsize=7, ncol=2, loc="upper center", bbox_to_anchor=(0.5, -0.1))
    path.parent.mkdir(parents=True, exist_ok=True)
    save_figure(fig, path, dpi=120)
    return path


def plot_rdf(phase: str, entry: dict[str, Any], curves: dict[str, Any], path: Path) -> Path:
    fig = new_figure((6, 3.8))
    ax = fig.add_subplot()
    first = next(iter(curves.values()))
    r = np.asarray(first["r"])
    ax.plot(r, np.asarray(first["g_reference"]), color=COLORS["data"], lw=2.2, label="training data")
    for kind, c in curves.items():
        if kind not in entry["models"]:
            continue
        res = entry["models"][kind]
        ax.plot(
            r, np.asarray(c["g"]), color=run_color(kind), lw=1.2, label=f"{run_label(res)} (L1 {_fmt(res['rdf_l1'])})"
        )
    ax.set_xlabel("r (Å)")
    ax.set_ylabel("g(r)")
    ax.set_xlim(0, float(r[-1]))
    ax.set_title(f"g(r), {phase} {entry['element']}")
    ax.legend(frameon=False)
    save_figure(fig, path, dpi=120)
    return path


def plot_counts(phase: str, entry: dict[str, Any], path: Path) -> Path:
    fig = new_figure((6, 3.5))
    ax = fig.add_subplot()
    target = entry["data"]["n_atoms"]
    kinds = list(entry["models"])
    all_n = {target}
    for kind in kinds:
        all_n |= {int(k) for k in entry["models"][kind]["n_atoms_hist"]}
    lo, hi = min(all_n), max(all_n)
    n = np.arange(lo, hi + 1)
    width = 0.8 / (len(kinds) + 1)
    ax.bar(
        n - width * len(kinds) / 2,
        (n == target).astype(float),
        width=width,
        color=COLORS["data"],
        label="training data",
    )
    for i, kind in enumerate(kinds):
        hist = entry["models"][kind]["n_atoms_hist"]
        total = max(1, sum(hist.values()))
        h = np.array([hist.get(str(k), 0) / total for k in n])
        ax.bar(
            n + width * (i + 1 - len(kinds) / 2),
            h,
            width=width,
            color=run_color(kind),
            label=run_label(entry["models"][kind]),
        )
    ax.set_xlabel("atoms per structure")
    ax.set_ylabel("fraction of structures")
    ax.set_title(f"Atom counts, {phase} {entry['element']} (target {target})")
    ax.set_xlim(lo - 1.5, hi + 1.5)
    ax.legend(frameon=False)
    save_figure(fig, path, dpi=120)
    return path


def write_outputs(results: dict[str, Any], curves: dict[str, dict[str, Any]], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = [write_json_atomic(out / "results.json", results, indent=1)]
    written.append(write_text_atomic(out / "results.md", results_markdown(results)))
    small = {
        phase: {kind: {"r": c["r"], "g": c["g"], "g_reference": c["g_reference"]} for kind, c in per.items()}
        for phase, per in curves.items()
    }
    written.append(write_json_atomic(out / "curves.json", small))
    if results["phases"]:
        written.append(plot_phase_match(results, out / "phase_match.png"))
    for phase, entry in results["phases"].items():
        if entry["models"] and phase in curves:
            written.append(plot_rdf(phase, entry, curves[phase], out / f"rdf_{phase}.png"))
            written.append(plot_counts(phase, entry, out / f"n_atoms_{phase}.png"))
    return written


# ----------------------------------------------------------------------------------------------------
def replot(out: Path, notes: Sequence[str] = ()) -> dict[str, Any]:
    """Rewrite results.md and the PNGs of a finished run (``--replot``), adding ``notes``."""
    results_path, curves_path = out / "results.json", out / "curves.json"
    if not results_path.is_file() or not curves_path.is_file():
        raise SystemExit(f"{out}: no results.json and curves.json to replot")
    results = read_json(results_path)
    if notes:
        results["notes"] = [*results.get("notes", []), *notes]
    raw = read_json(curves_path)
    curves = {phase: {kind: curves_from_json(c) for kind, c in per.items()} for phase, per in raw.items()}
    write_outputs(results, curves, out)
    return results


def _prepare_phase(phase: str, settings: dict[str, Any], workdir: Path, rebuild: bool):
    """Build (or reuse) a phase's dataset; returns (path, ideal cell, metrics, the data's own numbers, geometry)."""
    path = build_phase_dataset(phase, settings, workdir, rebuild=rebuild)
    ideal, metrics, data_numbers = data_reference(
        path, float(settings["tolerance"]), float(settings["strict_tolerance"])
    )
    return path, ideal, metrics, data_numbers, particle_geometry(ideal, settings)


def _phase_entry(ideal, path: Path, data_numbers: dict[str, Any], geometry: dict[str, float]) -> dict[str, Any]:
    return {
        "element": ideal.info.get("element", ""),
        "dataset": str(path),
        "data": data_numbers,
        "particle_geometry": geometry,
        "models": {},
    }


def _run_task(args: argparse.Namespace, settings: dict[str, Any], workdir: Path) -> dict[str, Any]:
    """Worker process of ``--jobs N``: train, sample and score one (phase, model) run; write its results and
    curves to ``--task-out`` (JSON), and finish its W&B run with that run's own plots."""
    phase, _, kind = args.task.partition(":")
    if phase not in PHASES or kind not in MODELS or not args.task_out:
        raise SystemExit(f"--task needs PHASE:MODEL and --task-out, got {args.task!r}")
    path, ideal, metrics, data_numbers, geometry = _prepare_phase(phase, settings, workdir, rebuild=False)
    try:
        res, crv, logger = run_one(kind, phase, path, ideal, metrics, settings, workdir, geometry, args)
    except ChunkEnded as stop:
        print(f"[compare] {stop}", flush=True)
        raise SystemExit(3) from None
    task_out = Path(args.task_out)
    write_job_output(task_out, {"results": res, "curves": crv})
    if logger:
        entry = _phase_entry(ideal, path, data_numbers, geometry)
        entry["models"][res["key"]] = res
        own = {"study": args.study, "settings": settings, "machine": machine_info(settings), "phases": {phase: entry}}
        written = write_outputs(own, {phase: {res["key"]: crv}}, task_out.parent / f"{phase}-{res['key']}")
        _finish_wandb(logger, res, [p for p in written if p.suffix == ".png"])
    return res


def task_jobs(tasks: Sequence[tuple[str, str]], argv: Sequence[str], workdir: Path) -> list[Job]:
    """The worker processes of ``--jobs N``: this script once per (phase, model) with ``--task PHASE:MODEL``,
    writing ``<workdir>/tasks/<phase>-<model>.json`` and its log beside it, in the given order."""
    task_dir = workdir / "tasks"
    child_argv = [a for a in argv if a != "--rebuild"]  # the datasets exist by now
    jobs = []
    for phase, kind in tasks:
        out = task_dir / f"{phase}-{kind}.json"
        command = [sys.executable, str(Path(__file__).resolve()), *child_argv, "--jobs", "1"]
        command += ["--task", f"{phase}:{kind}", "--task-out", str(out)]
        jobs.append(Job(f"{phase}-{kind}", command, out, task_dir / f"{phase}-{kind}.log"))
    return jobs


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the comparison; returns the results dict (also written to ``<out>/results.json``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.replot:
        return replot(Path(args.out) if args.out else Path(args.workdir) / "results", args.note)
    settings = resolve_settings(args)
    settings.setdefault("tolerance", 0.5)
    settings.setdefault("strict_tolerance", 0.2)
    workdir = Path(args.workdir)
    out = Path(args.out) if args.out else workdir / "results"
    import torch

    set_threads(settings.get("threads"))
    quiet_lightning()
    if args.task:
        return _run_task(args, settings, workdir)
    say = (lambda *a: None) if args.quiet else (lambda *a: print(*a, flush=True))

    results: dict[str, Any] = {
        "study": args.study,
        "settings": settings,
        "machine": machine_info(settings),
        "command": study_command(__file__, argv),
        "phases": {},
        "notes": list(args.note),
    }
    curves: dict[str, dict[str, Any]] = {phase: {} for phase in settings["phases"]}
    if args.merge and (out / "results.json").is_file():
        results, curves = merged_start(results, curves, out)
    jobs = int(settings["jobs"])
    start = time.perf_counter()
    say(
        f"[compare] profile {settings['profile']}, budget {settings['budget']}: phases "
        f"{' '.join(settings['phases'])}, models {' '.join(settings['models'])}, "
        + (f"{_steps_words(settings)} × batch {settings['batch_size']}, " if settings["budget"] == "steps" else "")
        + f"{settings['samples']} samples; torch threads {torch.get_num_threads()} per run, {jobs} run(s) at a time; "
        f"out {out}"
    )
    prepared = {}
    for phase in settings["phases"]:
        t0 = time.perf_counter()
        prepared[phase] = path, ideal, metrics, data_numbers, geometry = _prepare_phase(
            phase, settings, workdir, args.rebuild
        )
        earlier = results["phases"].get(phase, {}).get("models", {})
        results["phases"][phase] = entry = _phase_entry(ideal, path, data_numbers, geometry)
        entry["models"].update(earlier)
        say(
            f"[compare] {phase} {entry['element']}: {data_numbers['n_structures']} training cells of {len(ideal)} "
            f"atoms; data "
            f"match {data_numbers['phase_match']:.0%} / {data_numbers['phase_match_strict']:.0%} (0.5/0.2 Å), disp RMS "
            f"{data_numbers['displacement_rms']:.3f} Å ({time.perf_counter() - t0:.1f} s)"
        )
    tasks = [(phase, kind) for phase in settings["phases"] for kind in settings["models"]]
    finished = []
    own_runs: dict[tuple[str, str], tuple[dict[str, Any], dict[str, Any]]] = {}  # (phase, key) -> (results, curves)

    def done(phase: str, kind: str, res: dict[str, Any], crv: dict[str, Any], logger: Any = None) -> None:
        entry = results["phases"][phase]
        key = res.get("key", kind)
        entry["models"][key] = res
        entry["models"] = dict(sorted(entry["models"].items(), key=lambda item: table_order(item[0])))
        curves.setdefault(phase, {})[key] = crv
        finished.append((phase, kind))
        results["total_seconds"] = time.perf_counter() - start
        own_runs[(phase, key)] = (res, crv)
        if args.merge:  # another process may have added runs since this one started: take them in, under a lock
            with results_lock(out):
                merged, merged_curves = overlay_runs(out, results, own_runs)
                written = write_outputs(merged, merged_curves, out)
        else:
            written = write_outputs(results, curves, out)
        _finish_wandb(logger, res, [p for p in written if p.suffix == ".png" and phase in p.stem])
        data_numbers = entry["data"]
        extra = {
            "voxel": lambda: f" grid {res['grid_shape']}",
            "particle": lambda: f" cutoff {res['cutoff']} Å σmax {res['sigma_max']} Å",
        }.get(kind, lambda: "")()
        say(
            f"[compare] run {len(finished)}/{len(tasks)}: {phase}-{key} done: match {_pct(res['phase_match'])} (0.5 Å) "
            f"{_pct(res['phase_match_strict'])} (0.2 Å), disp RMS {_fmt(res['displacement_rms'], 3)} Å (data "
            f"{data_numbers['displacement_rms']:.3f}), g(r) L1 {_fmt(res['rdf_l1'], 3)}, mean n "
            f"{_fmt(res['n_atoms_mean'], 1)}/"
            f"{res['n_atoms_target']}, viol. {_pct(res['min_distance_violations'])}; train "
            f"{res['train_seconds']:.0f} s, "
            f"sample {res['sample_seconds']:.0f} s;{extra}; elapsed {time.perf_counter() - start:.0f} s"
        )
        for v in res["variants"]:
            say(
                f"[compare]   same model, {sampler_label(v)}: match {_pct(v['phase_match'])} / "
                f"{_pct(v['phase_match_strict'])}, disp RMS {_fmt(v['displacement_rms'], 3)} Å, mean n "
                f"{_fmt(v['n_atoms_mean'], 1)}, viol. {_pct(v['min_distance_violations'])}; sample "
                f"{v['sample_seconds']:.0f} s"
            )

    failures: list[str] = []
    if jobs > 1 and len(tasks) > 1:
        # the longest runs first (most steps, then most atoms), so that the last ones to start are short
        tasks.sort(key=lambda t: (phase_steps(settings, t[0]), len(prepared[t[0]][1])), reverse=True)
        say(
            f"[compare] {len(tasks)} runs, {jobs} at a time, in this order: {' '.join(f'{p}-{k}' for p, k in tasks)}; "
            f"worker logs in {workdir / 'tasks'}"
        )
        task_of = {f"{phase}-{kind}": (phase, kind) for phase, kind in tasks}  # the jobs' names

        def job_done(job: Job, raw: dict[str, Any]) -> None:
            done(*task_of[job.name], raw["results"], curves_from_json(raw["curves"]))

        failures = run_jobs(task_jobs(tasks, argv, workdir), jobs, job_done)
    else:
        for i, (phase, kind) in enumerate(tasks, 1):
            path, ideal, metrics, _, geometry = prepared[phase]
            say(f"[compare] run {i}/{len(tasks)}: {phase}-{kind} training {budget_words(settings, phase, kind)} ...")
            try:
                res, crv, logger = run_one(kind, phase, path, ideal, metrics, settings, workdir, geometry, args)
            except ChunkEnded as stop:
                failures.append(str(stop))
                continue
            done(phase, kind, res, crv, logger)
    results["total_seconds"] = time.perf_counter() - start
    if not args.merge:  # with --merge every finished run was written into the folder's files as it landed
        write_outputs(results, curves, out)
    if failures:
        raise SystemExit(
            "[compare] some runs did not finish (the others are in " + str(out) + "):\n  " + "\n  ".join(failures)
        )
    say(f"[compare] done in {results['total_seconds']:.0f} s: {out / 'results.md'}")
    return results


if __name__ == "__main__":
    main()
