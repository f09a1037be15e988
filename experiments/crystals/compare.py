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

Profiles (all overridable: ``--steps``, ``--samples``, ``--batch-size``, ``--sigma``, ``--count``, ...):

``quick``  a 2-core CPU, all five phases and both models, two runs at a time (``--jobs 2``, one torch
           thread each), sized to finish in under 45 minutes.
``paper``  a GPU: larger networks, 20k steps, 256 samples, more sampler steps, ``accelerator="auto"``.

The measurements behind each number of the quick profile (sampler, learning rate, grids, offset
parametrisation, restarts, budgets), the current results table and the superseded runs are in
``experiments/crystals/RESULTS.md``; how to run the study is in ``experiments/crystals/README.md``.
"""

from __future__ import annotations

import argparse
import copy
import datetime as _dt
import json
import logging
import math
import os
import platform
import re
import sys
import time
import warnings
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

PHASES = ("sc", "fcc", "bcc", "hcp", "diamond")
MODELS = ("voxel", "particle", "particle_torus")
MODEL_LABELS = {
    "voxel": "GCDM voxel",
    "particle": "particle (Cartesian VE + MPNN)",
    "particle_torus": "particle (torus VE + all-pairs Fourier net)",
}
#: training budgets (``--budget``): the profile's optimiser steps, the voxel model's training wall time on the
#: same phase, or until the validation phase match stops improving (``RatePlateauStop``) within a step cap
BUDGETS = ("steps", "walltime", "converge")
BUDGET_LABELS = {"steps": "equal steps", "walltime": "equal wall time", "converge": "to convergence"}
COLORS = {
    "voxel": "tab:blue",
    "particle": "tab:orange",
    "particle_torus": "tab:green",
    "particle_torus@steps": "yellowgreen",
    "particle_torus@walltime": "darkolivegreen",
    "data": "0.35",
}
STUDY = "crystals_compare"

#: the torus model's --budget converge (both profiles): the study's step caps (20k on sc/fcc/bcc, 10k on hcp/diamond),
#: batch 32 as the probe, EMA 0.999 (FlowMM), a validation of 64 samples every 1,000 steps, stop after no more than
#: two standard errors of gain over five validations
TORUS_CONVERGE: dict[str, Any] = {
    "steps": {"sc": 20000, "fcc": 20000, "bcc": 20000, "hcp": 10000, "diamond": 10000},
    "batch_size": 32,
    "ema_decay": 0.999,
    "val_every": 1000,
    "val_samples": 64,
    "window": 5,
    "standard_errors": 2.0,
}

# ----------------------------------------------------------------------------------------------------
# Profiles. Every number here is a choice; the comments say why, and the measurements behind them are in
# experiments/crystals/RESULTS.md (History).
PROFILES: dict[str, dict[str, Any]] = {
    "quick": {
        "description": "2-core CPU, one torch thread per run, two runs at a time: all five phases, both models, < 45 "
        "min",
        "accelerator": "cpu",
        "threads": 1,
        # two runs at once, one per core, each with one torch thread: the ten runs are independent
        "jobs": 2,
        "num_workers": 0,
        # data: 128 rattled cells per phase (80 % train); thermal sigma as the builder's default
        "count": 128,
        "thermal_sigma": 0.05,
        "repeat": [2, 2, 2],
        "data_seed": 0,
        # the same budget for both models; 1200 steps is what fits the ten runs into 45 minutes on a shared
        # 2-core CPU (RESULTS.md, History: budget)
        "steps": 1200,
        # per-phase budgets (both models alike) where 1200 steps are too few: diamond Si keeps improving up to
        # 6000 steps, and on its 8^3 grid (see "grid_shapes") 6000 steps cost less than 3000 on 12^3
        # (RESULTS.md, History: diamond)
        "phase_steps": {"diamond": 6000},
        "batch_size": 16,
        # 64 samples: 32 left a binomial standard error too large to compare phases (RESULTS.md, History: samples)
        "samples": 64,
        # structures sampled in the 2x2x2 supercell of the training cell (--supercell-samples)
        "supercell_samples": 16,
        "seed": 0,
        "voxel": {
            # the capability-test recipe (tests/integration/test_voxel_model.py: 16-channel two-level U-Net, no
            # attention),
            # except lr 5e-4 instead of 2e-3: at 2e-3 diamond Si collapses to the mean grid (no atom decoded),
            # while 5e-4 keeps fcc and hcp where they were (RESULTS.md, History: learning rate)
            # offsets: "blend" (x0 = c x_t/sqrt(ā) + (1 - c) F, c = σ_d²/(σ² + σ_d²)) with σ_d = the data's thermal σ
            # (0.05 Å) and the loss on x0: x0-prediction emits ideal crystals (the thermal spread collapses) at this
            # budget, blend keeps the data's spread (RESULTS.md, History: offset parametrisation)
            # restart sampling (2 restarts back to 0.5 T after the DDPM-100 chain: 200 network evaluations): it
            # fixes most diamond samples the chain commits to a defect (RESULTS.md, History: restarts)
            "model": {
                "base_channels": 16,
                "channel_mults": [1, 2],
                "num_res_blocks": 1,
                "attention": False,
                "prediction": "x0",
                "offset_prediction": "blend",
                "offset_sigma_data": 0.05,
                "loss_space": "x0",
                "lr": 5e-4,
                "warmup_steps": 20,
                "ema_decay": 0.99,
                "sample_restarts": 2,
                "sample_restart_t": 0.5,
            },
            "spacing": None,  # the coarsest grid that keeps one atom per voxel (8^3 for fcc Cu)
            # diamond Si: 8^3 (voxel a/4 = 1.36 Å, both fcc sublattices on the voxel lattice, bonds along voxel
            # diagonals) instead of the 12^3 that the one-atom-per-voxel rule picks (its margin rejects 8^3; the
            # DataModule redraws the rare translations that put two atoms into one voxel): more matches for a
            # cheaper step (RESULTS.md, History: diamond)
            "grid_shapes": {"diamond": [8, 8, 8]},
            # ancestral DDPM-100 beat DDIM-50 and DDIM-200 on fcc Cu (RESULTS.md, History: sampler); DDIM-50 is
            # reported too, as a variant row
            "sampler": "ddpm",
            "sample_steps": 100,
        },
        "particle": {
            # hidden 64, 3 layers, sigma_max 2 and PC-300 from a colleague's 4-atom fcc study; lr 2e-3 beat 5e-4
            # on sc Po (RESULTS.md, History: particle baseline)
            "model": {
                "hidden": 64,
                "layers": 3,
                "num_rbf": 32,
                "sigma_min": 0.01,
                "lr": 2e-3,
                "warmup_steps": 20,
                "ema_decay": 0.99,
            },
            # per phase: cutoff = cutoff_factor × nearest-neighbour distance (sc Po and hcp Mg have their
            # first shell beyond the default 3 Å); sigma_max = sigma_max_factor × the longest cell edge,
            # so that the VE prior is close to the uniform positions the sampler starts from
            "cutoff_factor": 1.6,
            "sigma_max_factor": 0.35,
            "sigma_max_min": 2.0,
            # predictor-corrector beat Euler-Maruyama on 4-atom fcc and on sc Po (RESULTS.md, History: particle
            # baseline)
            "sampler": "pc",
            "sample_steps": 300,
        },
        "particle_torus": {
            # DiffCSP's recipe (fractional wrapped-normal VE, sigma 0.005-0.5, normalised score, all-pairs Fourier
            # network, predictor-corrector with step_lr 1e-5 over 1,000 levels) at the size of the probe in
            # RESULTS.md (hidden 128, 4 layers, 32 frequencies: DiffCSP's 512 x 6 x 128 is GPU sized)
            "model": {
                "hidden": 128,
                "layers": 4,
                "frequencies": 32,
                "sigma_min": 0.005,
                "sigma_max": 0.5,
                "step_lr": 1e-5,
                "lr": 1e-3,
                "warmup_steps": 20,
                "ema_decay": 0.99,
            },
            "sampler": "pc",
            "sample_steps": 1000,
            "converge": copy.deepcopy(TORUS_CONVERGE),
        },
        # other sampler settings evaluated on the same trained models (cheap for the voxel model): the
        # chain without restarts, and DDIM-50
        "extra_samplers": ["voxel:ddpm-100+r0", "voxel:ddim-50+r0"],
    },
    "paper": {
        "description": "one GPU: larger networks, more steps and samples",
        "accelerator": "auto",
        "threads": None,
        "jobs": 1,  # one run at a time on the one GPU
        "num_workers": 4,
        "count": 1024,
        "thermal_sigma": 0.05,
        "repeat": [2, 2, 2],
        "data_seed": 0,
        "steps": 20000,
        "batch_size": 32,
        "samples": 256,
        "supercell_samples": 64,
        "seed": 0,
        "voxel": {
            "model": {
                "base_channels": 32,
                "channel_mults": [1, 2],
                "num_res_blocks": 2,
                "attention": True,
                "prediction": "x0",
                "offset_prediction": "blend",
                "offset_sigma_data": 0.05,
                "loss_space": "x0",
                "lr": 1e-3,
                "warmup_steps": 200,
                "ema_decay": 0.999,
                "sample_restarts": 2,
                "sample_restart_t": 0.5,
            },
            "spacing": None,
            "sampler": "ddpm",
            "sample_steps": 250,
        },
        "particle": {
            "model": {
                "hidden": 128,
                "layers": 4,
                "num_rbf": 32,
                "sigma_min": 0.01,
                "lr": 1e-3,
                "warmup_steps": 200,
                "ema_decay": 0.999,
            },
            "cutoff_factor": 1.6,
            "sigma_max_factor": 0.35,
            "sigma_max_min": 2.0,
            "sampler": "pc",
            "sample_steps": 1000,
        },
        "particle_torus": {
            "model": {
                "hidden": 512,
                "layers": 6,
                "frequencies": 128,
                "sigma_min": 0.005,
                "sigma_max": 0.5,
                "step_lr": 1e-5,
                "lr": 1e-3,
                "warmup_steps": 200,
                "ema_decay": 0.999,
            },
            "sampler": "pc",
            "sample_steps": 1000,
            "converge": copy.deepcopy(TORUS_CONVERGE),
        },
        "extra_samplers": ["voxel:ddpm-250+r0", "voxel:ddim-100+r0", "particle:em-1000"],
    },
}


# ----------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="compare.py",
        description="Train the particle baseline and the grand canonical voxel model on the same crystal data "
        "with the same budget, sample both and compare them (results.json, results.md, PNGs).",
    )
    p.add_argument("--profile", choices=sorted(PROFILES), default="quick", help="settings preset (default: quick)")
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
        "(converge; resumable)",
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
        help="--budget converge: stop this process after so many minutes (its last.ckpt saved); the same "
        "command continues the run (for sessions or jobs with a time limit)",
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


def _set_path(settings: dict[str, Any], key: str, raw: str) -> None:
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    node = settings
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value


def phase_steps(settings: dict[str, Any], phase: str) -> int:
    """Optimiser steps of both models on ``phase``: the profile's per-phase budget, else ``steps``."""
    return int((settings.get("phase_steps") or {}).get(phase, settings["steps"]))


def resolve_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The profile with the command line's overrides applied."""
    s = copy.deepcopy(PROFILES[args.profile])
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
    for item in args.set:
        if "=" not in item:
            raise SystemExit(f"--set needs KEY=VALUE, got {item!r}")
        key, raw = item.split("=", 1)
        _set_path(s, key.strip(), raw)
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


RESTARTS_SUFFIX = re.compile(r"\+r(\d+)(?:@([0-9.]+))?$")


def split_restarts(spec: str) -> tuple[str, tuple[int, float] | None]:
    """``"ddpm-100+r2@0.3"`` -> ("ddpm-100", (2, 0.3)): 2 restarts back to 0.3 T (the voxel model's restart
    sampling); ``"ddpm-100+r0"`` -> ("ddpm-100", (0, 0.3)): none; without the suffix, None (the model's own)."""
    match = RESTARTS_SUFFIX.search(spec)
    if match is None:
        return spec, None
    restarts, level = int(match[1]), float(match[2]) if match[2] else 0.3
    if restarts and match[2] is None or not 0.0 < level < 1.0:
        raise SystemExit(f"{spec!r}: a restart suffix is +rN@T with T in (0, 1), e.g. +r2@0.3, or +r0 for none")
    return spec[: match.start()], (restarts, level)


def parse_variant(spec: str) -> tuple[str, str, int, tuple[int, float] | None]:
    """``"voxel:ddim-200"`` -> ("voxel", "ddim", 200, None); ``"voxel:ddpm-100+r0"`` -> (..., (0, 0.3))."""
    try:
        kind, rest = spec.split(":", 1)
        rest, restarts = split_restarts(rest)
        sampler, steps = rest.rsplit("-", 1)
        steps_i = int(steps)
    except ValueError:
        raise SystemExit(
            f"--extra-samplers takes MODEL:SAMPLER-STEPS[+rN@T] (e.g. voxel:ddpm-100+r0), got {spec!r}"
        ) from None
    valid = {"voxel": ("ddim", "ddpm", "dpm2m", "dpm2m-sde"), "particle": ("em", "pc")}
    if kind not in valid or sampler not in valid[kind] or steps_i < 1 or (restarts and kind != "voxel"):
        raise SystemExit(f"--extra-samplers: {spec!r} is not one of voxel:ddim|ddpm-N[+rN@T], particle:em|pc-N")
    return kind, sampler, steps_i, restarts


def machine_info(settings: dict[str, Any]) -> dict[str, Any]:
    import lightning
    import torch

    info = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "accelerator": settings["accelerator"],
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
    }
    try:
        info["load_average"] = list(os.getloadavg())
    except OSError:
        pass
    return info


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


def nearest_neighbour_distance(atoms) -> float:
    """Smallest interatomic distance of a periodic structure (Å), images included."""
    from ase.neighborlist import neighbor_list

    d = neighbor_list("d", atoms, 6.0)
    return float(d.min())


def particle_geometry(ideal, settings: dict[str, Any]) -> dict[str, float]:
    """Cutoff and sigma_max of the particle model for this phase (see the profile comments)."""
    p = settings["particle"]
    nn = nearest_neighbour_distance(ideal)
    cutoff = p.get("cutoff") or round(float(p["cutoff_factor"]) * nn, 2)
    longest = float(np.max(ideal.cell.lengths()))
    sigma_max = p.get("sigma_max") or round(max(float(p["sigma_max_min"]), float(p["sigma_max_factor"]) * longest), 2)
    return {"cutoff": float(cutoff), "sigma_max": float(sigma_max), "nearest_neighbour": nn}


# ----------------------------------------------------------------------------------------------------
# evaluation
def _strict_match(samples: Sequence[Any], ideal, tolerance: float) -> tuple[float, float]:
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
    strict_rate, strict_rms = _strict_match(samples, ideal, strict_tolerance)
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
    strict_rate, strict_rms = _strict_match(train_atoms, ideal, strict_tolerance)
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


# ----------------------------------------------------------------------------------------------------
# one run
def _model_and_data(
    kind: str, path: Path, settings: dict[str, Any], geometry: dict[str, float], phase: str | None = None
):
    from datamodules.datamodule import AtomsDataModule
    from lightning_gcd.models.particle import ParticleDiffusion
    from lightning_gcd.models.voxel import GrandCanonicalDiffusion

    common = {"val_samples": 0, "sample_every_n_epochs": 0}
    if kind == "voxel":
        v = settings["voxel"]
        dm = AtomsDataModule(
            str(path),
            view="voxel",
            batch_size=int(settings["batch_size"]),
            num_workers=int(settings["num_workers"]),
            spacing=v.get("spacing"),
            grid_shape=(v.get("grid_shapes") or {}).get(phase) or v.get("grid_shape"),
            build={},
        )
        model = GrandCanonicalDiffusion(
            **v["model"], sampler=v["sampler"], sample_steps=int(v["sample_steps"]), **common
        )
    elif kind == "particle":
        p = settings["particle"]
        dm = AtomsDataModule(
            str(path),
            view="particle",
            batch_size=int(settings["batch_size"]),
            num_workers=int(settings["num_workers"]),
            build={},
        )
        model = ParticleDiffusion(
            **p["model"],
            cutoff=geometry["cutoff"],
            sigma_max=geometry["sigma_max"],
            sampler=p["sampler"],
            sample_steps=int(p["sample_steps"]),
            **common,
        )
    else:
        from lightning_gcd.models.particle_torus import TorusParticleDiffusion

        p = settings["particle_torus"]
        options = dict(p["model"])
        batch_size = int(settings["batch_size"])
        if settings["budget"] == "converge":
            c = p["converge"]
            options["ema_decay"] = c["ema_decay"]
            batch_size = int(c["batch_size"])
            common = {"val_samples": int(c["val_samples"]), "sample_every_n_epochs": 1}
        dm = AtomsDataModule(
            str(path), view="particle", batch_size=batch_size, num_workers=int(settings["num_workers"]), build={}
        )
        model = TorusParticleDiffusion(**options, sampler=p["sampler"], sample_steps=int(p["sample_steps"]), **common)
    return model, dm


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
    model, dm = _model_and_data(kind, path, settings, geometry, phase)
    timer = StepTimer()
    trainer = L.Trainer(
        max_steps=WALLTIME_WARMUP + WALLTIME_TIMED_STEPS,
        accelerator=settings["accelerator"],
        devices=1,
        logger=False,
        callbacks=[timer],
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
    )
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
    """A ``--chunk-minutes`` chunk of a converge run ended before the run did (its last.ckpt is saved)."""


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
    rate, rms = _strict_match(samples, big, float(settings["tolerance"]))
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

    from lightning_gcd.callbacks.checkpointing import AtomicCheckpointIO
    from lightning_gcd.callbacks.clock import TrainingClock
    from lightning_gcd.callbacks.plateau import RatePlateauStop
    from lightning_gcd.io import write_json_atomic

    budget = settings["budget"]
    key = run_key(kind, settings, args.key)
    walltime = wall_time_steps(kind, path, settings, geometry, phase) if budget == "walltime" else {}
    L.seed_everything(int(settings["seed"]), workers=True, verbose=False)
    model, dm = _model_and_data(kind, path, settings, geometry, phase)
    logger = (
        _wandb_logger(args, settings, phase, kind, workdir, geometry if kind == "particle" else {}, key)
        if args.wandb
        else False
    )
    run_dir = workdir / "runs" / f"{phase}-{key}"
    steps = phase_steps(settings, phase)
    clock = TrainingClock(chunk_seconds=60.0 * args.chunk_minutes if args.chunk_minutes else None)
    callbacks: list[Any] = [clock]
    options: dict[str, Any] = {"limit_val_batches": 0, "enable_checkpointing": False}
    resume = None
    if budget == "walltime":
        steps = int(walltime["steps"])
    elif budget == "converge":
        if kind != "particle_torus":
            raise SystemExit("--budget converge is set up for particle_torus (its validation sampling and step caps)")
        from lightning.pytorch.callbacks import ModelCheckpoint

        c = settings[kind]["converge"]
        steps = int(c["steps"][phase])
        plateau = RatePlateauStop(
            "val/phase_match",
            int(c["val_samples"]),
            int(c["window"]),
            float(c["standard_errors"]),
            every_n_steps=int(c["val_every"]),
        )
        # last.ckpt after every validation (its rate already in the plateau history), not before it: a run stopped
        # while sampling for a validation resumes from the previous one and repeats it
        callbacks += [plateau, ModelCheckpoint(dirpath=run_dir / "checkpoints", save_last=True, save_top_k=0)]
        options = {
            "limit_val_batches": 1,
            "val_check_interval": int(c["val_every"]),
            "check_val_every_n_epoch": None,
            "enable_checkpointing": True,
            "plugins": [AtomicCheckpointIO()],
        }
        last = run_dir / "checkpoints" / "last.ckpt"
        resume = str(last) if last.is_file() else None
    trainer = L.Trainer(
        max_steps=steps,
        accelerator=settings["accelerator"],
        devices=1,
        logger=logger,
        callbacks=callbacks,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=max(1, min(50, abs(steps) // 20)),
        default_root_dir=str(run_dir),
        **options,
    )
    finished = run_dir / "finished.json"  # a converge run that ended: sample it again without training
    convergence: dict[str, Any] = {}
    if budget == "converge" and finished.is_file():
        from lightning_gcd.models.loading import load_model

        convergence = json.loads(finished.read_text())
        model = load_model(run_dir / "last.ckpt")
        global_step, loss = int(convergence["steps"]), convergence.get("final_train_loss")
    else:
        trainer.fit(model, dm, ckpt_path=resume)
        global_step = int(trainer.global_step)
        loss = trainer.callback_metrics.get("train/loss_epoch", trainer.callback_metrics.get("train/loss"))
        loss = float(loss) if loss is not None else float("nan")
        if budget == "converge":
            trainer.save_checkpoint(run_dir / "checkpoints" / "last.ckpt")
            if plateau.stopped_step is None and global_step < steps:
                raise ChunkEnded(
                    f"{phase}-{key}: chunk ended at step {global_step} of at most {steps}; the same "
                    f"command continues from {run_dir / 'checkpoints' / 'last.ckpt'}"
                )
            convergence = {
                "steps": global_step,
                "step_cap": steps,
                "final_train_loss": loss,
                "stopped": "plateau" if plateau.stopped_step is not None else "step cap",
                "validations": [{"step": st, "phase_match": r} for st, r in plateau.history],
                "train_seconds": clock.seconds,
                "validation_seconds": clock.validation_seconds,
            }
        trainer.save_checkpoint(run_dir / "last.ckpt")  # for later sampling / inspection (gcd sample --ckpt ...)
        if args.save_weights:  # slim (no optimiser state): small enough to ship as a pretrained model
            slim = Path(args.save_weights) / f"{phase}-{key}.ckpt"
            slim.parent.mkdir(parents=True, exist_ok=True)
            trainer.save_checkpoint(slim, weights_only=True)
        if budget == "converge":
            write_json_atomic(finished, convergence, indent=1)
    train_s = convergence.get("train_seconds", clock.seconds)
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
            progress=False,
        )
        sample_s = time.perf_counter() - t0
        res, crv = evaluate(samples, metrics, ideal, float(settings["strict_tolerance"]))
        res.update({"sampler": sampler, "sample_steps": sample_steps, "sample_seconds": sample_s})
        res["network_evaluations"] = int(model.sample_evaluations(sample_steps, sampler))
        if kind == "voxel":
            res.update({"restarts": model.sample_restarts, "restart_t": model.sample_restart_t})
        nonempty = [a for a in samples if len(a)]
        if nonempty:  # keep the samples for later inspection
            import ase.io

            sample_dir = workdir / "samples"
            sample_dir.mkdir(parents=True, exist_ok=True)
            ase.io.write(sample_dir / f"{name}.extxyz", nonempty)
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


def run_label(run: dict[str, Any]) -> str:
    """The model's name and, for a budget other than the profile's steps, which budget."""
    kind = run.get("model", "voxel")
    budget = run.get("budget", "steps")
    label = MODEL_LABELS.get(kind, kind)
    if kind == "particle_torus" or budget != "steps":
        label += f" [{BUDGET_LABELS.get(budget, budget)}, {run.get('steps', '?')} steps]"
    return label


def run_color(key: str) -> str:
    return COLORS.get(key) or COLORS.get(key.partition("@")[0], "0.5")


class _locked:
    """An exclusive lock on ``<out>/.lock`` (processes that merge into the same results folder take turns)."""

    def __init__(self, out: Path) -> None:
        out.mkdir(parents=True, exist_ok=True)
        self.path = out / ".lock"

    def __enter__(self) -> _locked:
        import fcntl

        self.handle = open(self.path, "w")
        fcntl.flock(self.handle, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc: Any) -> None:
        import fcntl

        fcntl.flock(self.handle, fcntl.LOCK_UN)
        self.handle.close()


def overlay_runs(
    out: Path, results: dict[str, Any], own_runs: dict[tuple[str, str], tuple[dict, dict]]
) -> tuple[dict, dict]:
    """``<out>/results.json`` and curves as they are on disk now, with this process's finished runs put in (so
    that processes merging into one folder at the same time keep each other's runs)."""
    if not (out / "results.json").is_file():
        disk, disk_curves = json.loads(json.dumps(_jsonable(results))), {}
    else:
        disk = json.loads((out / "results.json").read_text())
        raw = json.loads((out / "curves.json").read_text()) if (out / "curves.json").is_file() else {}
        disk_curves = {phase: {k: _curves_from_json(c) for k, c in per.items()} for phase, per in raw.items()}
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
    earlier = json.loads((out / "results.json").read_text())
    raw = json.loads((out / "curves.json").read_text()) if (out / "curves.json").is_file() else {}
    earlier.setdefault("merged", []).append(
        {"command": results["command"], "settings": results["settings"], "machine": results["machine"]}
    )
    earlier["notes"] = [*earlier.get("notes", []), *results["notes"]]
    for kind in MODELS:  # settings of a model the earlier runs did not have (e.g. the torus model added later)
        if kind in results["settings"]:
            earlier["settings"].setdefault(kind, results["settings"][kind])
    for phase, per in raw.items():
        curves.setdefault(phase, {}).update({kind: _curves_from_json(c) for kind, c in per.items()})
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


def _figure(figsize):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def plot_phase_match(results: dict[str, Any], path: Path) -> Path:
    phases = list(results["phases"])
    kinds = sorted({k for p in phases for k in results["phases"][p]["models"]}, key=table_order)
    fig = _figure((max(7.0, 1.6 * len(phases) + 2), 3.4 + 0.3 * (len(kinds) + 1)))
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
        label = "training data" if name == "data" else (run_label(runs[0]) if runs else name)
        ax.bar(pos, loose, width=width, color=run_color(name), alpha=0.45, label=f"{label} (0.5 Å)")
        ax.bar(pos, strict, width=width, color=run_color(name), label=f"{label} (0.2 Å)")
        for xp, v in zip(pos, loose, strict=False):
            if v == v:  # not NaN: the 0.5 Å rate above the bar, so that 0 % is visible too
                ax.text(xp, v + 0.01, f"{100 * v:.0f}", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(x, [f"{p} {results['phases'][p]['element']}" for p in phases])
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("phase-match rate")
    s = results["settings"]
    budget = f"{s['steps']} steps each" + "".join(
        f", {p} {n}" for p, n in (s.get("phase_steps") or {}).items() if p in s["phases"]
    )
    ax.set_title(f"Samples that are the crystal ({budget}): dark 0.2 Å, light 0.5 Å tolerance, % at 0.5 Å", fontsize=10)
    ax.legend(frameon=False, fontsize=7, ncol=2, loc="upper center", bbox_to_anchor=(0.5, -0.1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path


def plot_rdf(phase: str, entry: dict[str, Any], curves: dict[str, Any], path: Path) -> Path:
    fig = _figure((6, 3.8))
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
    fig.savefig(path, dpi=120)
    return path


def plot_counts(phase: str, entry: dict[str, Any], path: Path) -> Path:
    fig = _figure((6, 3.5))
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
    fig.savefig(path, dpi=120)
    return path


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        return float(obj) if math.isfinite(float(obj)) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def write_outputs(results: dict[str, Any], curves: dict[str, dict[str, Any]], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    tmp = out / "results.json.tmp"
    tmp.write_text(json.dumps(_jsonable(results), indent=1, allow_nan=False))
    tmp.replace(out / "results.json")
    written.append(out / "results.json")
    (out / "results.md").write_text(results_markdown(results))
    written.append(out / "results.md")
    small = {
        phase: {kind: {"r": c["r"], "g": c["g"], "g_reference": c["g_reference"]} for kind, c in per.items()}
        for phase, per in curves.items()
    }
    (out / "curves.json").write_text(json.dumps(_jsonable(small)))
    written.append(out / "curves.json")
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
    results = json.loads(results_path.read_text())
    if notes:
        results["notes"] = [*results.get("notes", []), *notes]
    raw = json.loads(curves_path.read_text())
    curves = {phase: {kind: _curves_from_json(c) for kind, c in per.items()} for phase, per in raw.items()}
    write_outputs(results, curves, out)
    return results


def _quiet_lightning() -> None:
    import lightning  # noqa: F401  (importing it sets its logger to INFO: import first, then lower it)

    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "lightning_fabric", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*number of training batches.*")
    warnings.filterwarnings("ignore", message=".*Total length of.*")
    warnings.filterwarnings("ignore", message=".*isinstance.treespec, LeafSpec.*")


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
    task_out.parent.mkdir(parents=True, exist_ok=True)
    tmp = task_out.with_suffix(".tmp")
    tmp.write_text(json.dumps(_jsonable({"results": res, "curves": crv}), allow_nan=False))
    tmp.replace(task_out)
    if logger:
        entry = _phase_entry(ideal, path, data_numbers, geometry)
        entry["models"][res["key"]] = res
        own = {"study": args.study, "settings": settings, "machine": machine_info(settings), "phases": {phase: entry}}
        written = write_outputs(own, {phase: {res["key"]: crv}}, task_out.parent / f"{phase}-{res['key']}")
        _finish_wandb(logger, res, [p for p in written if p.suffix == ".png"])
    return res


def _curves_from_json(raw: dict[str, Any]) -> dict[str, Any]:
    return {
        k: np.asarray([np.nan if x is None else x for x in v], dtype=float) if isinstance(v, list) else v
        for k, v in raw.items()
    }


def _run_parallel(
    tasks: Sequence[tuple[str, str]], argv: Sequence[str], workdir: Path, jobs: int, done: Any
) -> list[str]:
    """Run ``tasks`` (phase, model) as ``jobs`` concurrent worker processes of this script (``--task``), in the
    given order; call ``done(phase, kind, results, curves)`` as each finishes. Returns the failures (one line
    each, with the worker's log file); the other runs' results are kept."""
    import subprocess

    task_dir = workdir / "tasks"
    task_dir.mkdir(parents=True, exist_ok=True)
    child_argv = [a for a in argv if a != "--rebuild"]  # the datasets exist by now
    pending, running, failures = list(tasks), [], []
    while pending or running:
        while pending and len(running) < jobs:
            phase, kind = pending.pop(0)
            out = task_dir / f"{phase}-{kind}.json"
            out.unlink(missing_ok=True)
            log = task_dir / f"{phase}-{kind}.log"
            cmd = [
                sys.executable,
                str(Path(__file__).resolve()),
                *child_argv,
                "--jobs",
                "1",
                "--task",
                f"{phase}:{kind}",
                "--task-out",
                str(out),
            ]
            with open(log, "w") as handle:
                proc = subprocess.Popen(cmd, stdout=handle, stderr=subprocess.STDOUT)
            running.append((proc, phase, kind, out, log))
        time.sleep(0.5)
        for item in list(running):
            proc, phase, kind, out, log = item
            if proc.poll() is None:
                continue
            running.remove(item)
            if proc.returncode != 0 or not out.is_file():
                failures.append(f"{phase}-{kind}: worker exited with {proc.returncode}; log {log}")
                continue
            raw = json.loads(out.read_text())
            done(phase, kind, raw["results"], _curves_from_json(raw["curves"]))
    return failures


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

    if settings.get("threads"):
        torch.set_num_threads(int(settings["threads"]))
    _quiet_lightning()
    if args.task:
        return _run_task(args, settings, workdir)
    say = (lambda *a: None) if args.quiet else (lambda *a: print(*a, flush=True))

    results: dict[str, Any] = {
        "study": args.study,
        "settings": settings,
        "machine": machine_info(settings),
        "command": [sys.argv[0], *argv],
        "phases": {},
        "notes": list(args.note),
    }
    curves: dict[str, dict[str, Any]] = {phase: {} for phase in settings["phases"]}
    if args.merge and (out / "results.json").is_file():
        results, curves = merged_start(results, curves, out)
    jobs = int(settings["jobs"])
    start = time.perf_counter()
    say(
        f"[compare] profile {settings['profile']}: phases {' '.join(settings['phases'])}, models "
        f"{' '.join(settings['models'])}, {settings['steps']} steps × batch {settings['batch_size']}, "
        f"{settings['samples']} samples; torch threads {torch.get_num_threads()} per run, {jobs} run(s) at a time; "
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
            with _locked(out):
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
        failures = _run_parallel(tasks, argv, workdir, jobs, done)
    else:
        for i, (phase, kind) in enumerate(tasks, 1):
            path, ideal, metrics, _, geometry = prepared[phase]
            say(f"[compare] run {i}/{len(tasks)}: {phase}-{kind} training {phase_steps(settings, phase)} steps ...")
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
