"""Grain-boundary experiment: grand canonical in-painting (voxel GCDM) vs the fixed-count particle baseline.

One command builds a grain-boundary dataset (``gcd data build grain-boundaries``: relaxed bicrystals with a
range of boundary atom counts and random grain translations), trains BOTH models on it with the same budget,
in-paints boundaries — the bulk grains of dataset structures kept fixed, the slabs within
``boundary_width`` Å of the two boundary planes generated — relaxes every generated structure with the
dataset's calculator and cell mode (``system.relax_cell``, default ``normal``: the cell length normal to the
boundaries relaxed to zero normal stress, in-plane cell fixed; #28) and scores E_gb = (E_total − N·E_coh)/(2A):

* E_gb against the number of boundary atoms n = N − N_perfect (whole cell, two boundaries), generated
  (after relaxation) vs the reference's lowest E_gb at each n and overall;
* the fraction of generated boundaries within ``margin`` J/m² of the reference minimum (and below it);
* the counts each model explored: the voxel model may change n from its template's, the particle model
  keeps its template's N, so it is in-painted from templates at every reference count.

Usage::

    python experiments/grain_boundaries/run.py --profile quick      # Cu Σ5(100) twist, EMT, 2-core CPU
    python experiments/grain_boundaries/run.py --profile paper      # W Σ5(100) twist, LAMMPS EAM, GPU sized
    python experiments/grain_boundaries/run.py --steps 300 --set system.translations=2 --out /tmp/gb
    python experiments/grain_boundaries/run.py --profile w_search --models voxel   # trained on the annealed search
    python experiments/grain_boundaries/run.py --profile w_search --models voxel --anneal-samples  # + the anneal
    python experiments/grain_boundaries/run.py --profile cu_search --models particle --train-only  # then, side by
    python experiments/grain_boundaries/run.py --profile cu_search --models particle --shard 0/2    # side, shards
    python experiments/grain_boundaries/run.py --profile cu_search --models particle --shard 1/2    # 0/2 and 1/2,
    python experiments/grain_boundaries/run.py --profile cu_search --models particle                # then collect

Outputs in ``--out`` (default ``<workdir>/results``): ``results.json`` (every number, every generated
structure's n and E_gb, settings, machine), ``results.md`` (tables), ``egb_vs_n.png`` (E_gb against n:
reference, per-n reference minimum, both models), ``counts.png`` (histogram of generated n), and the
relaxed samples ``samples/<model>.extxyz``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from datamodules.builders.parts import parse_shard
from lightning_gcd.errors import GcdError
from lightning_gcd.io import write_json_atomic, write_structures_atomic, write_text_atomic
from lightning_gcd.runner.machine import machine_info
from lightning_gcd.runner.profiles import apply_overrides, load_profile, profile_names, profile_path
from lightning_gcd.runner.results import claim_folder, new_figure, read_json, save_figure, study_command
from lightning_gcd.runner.trainer import build_trainer, checkpointing, quiet_lightning, set_threads
from lightning_gcd.studies.crystals import (
    COLORS,
    MODEL_LABELS,
    PARTICLE_SECTION,
    TORUS_SECTION,
    VOXEL_SECTION,
    model_and_data,
    particle_geometry,
)

MODELS = ("voxel", "particle", "particle_torus")
DEFAULT_MODELS = ("voxel", "particle")  # the torus model (#25) on request: hours of CPU on these cells
STUDY = "grain_boundaries"

#: the study's profiles (``--profile quick``: ``profiles/quick.yaml``); their model sections are the crystal
#: study's (experiments/crystals/profiles/sections/), named by path in the YAML
PROFILES = Path(__file__).resolve().parent / "profiles"
#: the keys a profile may hold (``lightning_gcd.runner.profiles``)
PROFILE_SCHEMA = {
    "description": str,
    **dict.fromkeys(
        (
            "dataset",
            "accelerator",
            "threads",
            "num_workers",
            "steps",
            "batch_size",
            "seed",
            "templates_per_count",
            "samples_per_template",
            "boundary_width",
            "margin",
            "relax_steps",
        )
    ),
    "system": dict.fromkeys(
        ("element", "boundary", "calculator", "fractions", "translations", "repeat", "fmax", "max_steps", "relax_cell")
    ),
    "voxel": VOXEL_SECTION,
    "particle": PARTICLE_SECTION,
    "particle_torus": TORUS_SECTION,
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="run.py", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--profile",
        default="quick",
        help=f"settings preset: one of {', '.join(profile_names(PROFILES))} (experiments/grain_boundaries/profiles/"
        "*.yaml) or the path of a YAML profile of your own (default: quick)",
    )
    p.add_argument(
        "--models",
        nargs="+",
        choices=MODELS,
        default=None,
        help="models to run (default: voxel particle; particle_torus is DiffCSP's recipe over a radius graph)",
    )
    p.add_argument(
        "--workdir", default="runs/grain_boundaries", help="dataset, runs and samples (default: %(default)s)"
    )
    p.add_argument("--out", default=None, help="results folder (default: <workdir>/results)")
    p.add_argument(
        "--dataset",
        default=None,
        help="train on and in-paint from this grain-boundary HDF5 (e.g. a merged `gcd data build "
        "grain-boundary-search`) instead of building one from the profile's system section",
    )
    p.add_argument("--steps", type=int, default=None, help="optimiser steps of EACH model (profile default)")
    p.add_argument("--samples-per-template", type=int, default=None, help="in-paintings per template structure")
    p.add_argument("--margin", type=float, default=None, help="J/m² above the reference minimum that counts as found")
    p.add_argument("--boundary-width", type=float, default=None, help="Å either side of each boundary plane generated")
    p.add_argument("--relax-steps", type=int, default=None, help="relaxation step cap of generated boundaries")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any profile entry, e.g. --set system.element=W --set voxel.sample_steps=50 (JSON values)",
    )
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--rebuild", action="store_true", help="rebuild the dataset even when it exists")
    p.add_argument(
        "--anneal-samples",
        action="store_true",
        help="run nothing new: give the structures a finished run generated (<workdir>/samples/<model>_generated"
        ".extxyz) the annealed search's MD anneal, then the same relaxation; adds <model>_anneal to <out>/results.json",
    )
    p.add_argument(
        "--train-only", action="store_true", help="train (or resume training) each model and stop: no in-painting"
    )
    p.add_argument(
        "--shard",
        default=None,
        metavar="I/N",
        help="in-paint (with --anneal-samples: anneal) only the templates at places I mod N of the template list, "
        "keep their parts and stop: N processes or cluster jobs share one workdir once training has finished; the "
        "same command without --shard then collects every part into the results",
    )
    p.add_argument("--quiet", action="store_true")
    p.add_argument(
        "--replot", action="store_true", help="run nothing: rewrite results.md and the PNGs from <out>/results.json"
    )
    return p


def resolve_settings(args: argparse.Namespace) -> dict[str, Any]:
    s = load_profile(profile_path(PROFILES, args.profile), PROFILE_SCHEMA)
    s["profile"] = args.profile
    for name, key in (
        ("steps", "steps"),
        ("samples_per_template", "samples_per_template"),
        ("margin", "margin"),
        ("boundary_width", "boundary_width"),
        ("seed", "seed"),
        ("relax_steps", "relax_steps"),
        ("dataset", "dataset"),
    ):
        if getattr(args, name) is not None:
            s[key] = getattr(args, name)
    apply_overrides(s, args.set)
    s["models"] = list(args.models or DEFAULT_MODELS)
    for kind in s["models"]:
        if not {"model", "sampler", "sample_steps"} <= set(s.get(kind) or {}):
            raise SystemExit(
                f"run.py: profile {args.profile} has no {kind} section; add one (e.g. "
                f"{kind}: sections/particle_torus_radius.yaml, as profiles/cu_search.yaml does)"
            )
    s.setdefault("relax_steps", None)
    s.setdefault("dataset", None)
    return s


# ----------------------------------------------------------------------------------------------------
def build_data(settings: dict[str, Any], workdir: Path, rebuild: bool) -> Path:
    """The grain-boundary dataset, reused when a file with the same options exists (options in its name)."""
    from datamodules.builders import build_dataset

    sysd = settings["system"]
    key = json.dumps(sysd, sort_keys=True)
    path = workdir / "data" / f"{sysd['element']}_{sysd['boundary']}_{_stable_digest(key)}.h5"
    if path.exists() and not rebuild:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    return build_dataset(
        "grain-boundaries",
        path,
        element=sysd["element"],
        boundaries=[sysd["boundary"]],
        calculator=sysd.get("calculator"),
        fractions=sysd["fractions"],
        translations=int(sysd["translations"]),
        repeat=sysd.get("repeat"),
        fmax=float(sysd["fmax"]),
        max_steps=int(sysd["max_steps"]),
        seed=int(settings["seed"]),
        progress=False,
        relax_cell=sysd.get("relax_cell", "normal"),
    )  # in the file name's digest: no stale fixed-cell reuse


def _stable_digest(text: str) -> str:
    import hashlib

    return hashlib.sha1(text.encode()).hexdigest()[:8]


def reference_table(path: Path) -> dict[str, Any]:
    """The dataset's E_gb per boundary count: min, mean, count; the overall minimum."""
    from datamodules.h5format import AtomsH5

    with AtomsH5(path) as data:
        n = data.structure_property("n_boundary_atoms").astype(int)
        e = data.structure_property("gb_energy").astype(float)
        attrs = data.attrs
    per = {}
    for k in sorted(set(n.tolist())):
        sel = e[n == k]
        per[str(k)] = {"min": float(sel.min()), "mean": float(sel.mean()), "count": int(sel.size)}
    best = int(np.argmin(e))
    return {
        "n": n.tolist(),
        "gb_energy": e.tolist(),
        "per_count": per,
        "min": float(e[best]),
        "n_at_min": int(n[best]),
        "index_at_min": best,
        "calculator": str(attrs.get("meta_calculator")),
        "potential": str(attrs.get("meta_potential")),
        "element": str(attrs.get("meta_element")),
        "boundary": str(np.asarray(attrs.get("meta_boundaries", ["?"])).ravel()[0]),
        "builder": str(attrs.get("meta_builder", "grain-boundaries")),
    }


def choose_templates(path: Path, per_count: int) -> list[int]:
    """``per_count`` structures of every boundary count, from val/test first (then train)."""
    from datamodules.h5format import AtomsH5

    with AtomsH5(path) as data:
        n = data.structure_property("n_boundary_atoms").astype(int)
        held_out = [int(i) for name in ("val", "test") if name in data.split_names for i in data.split(name)]
        train = [int(i) for i in data.split("train")] if "train" in data.split_names else list(range(len(data)))
    order = sorted(held_out) + sorted(train)
    out = []
    for k in sorted(set(n.tolist())):
        out += [i for i in order if n[i] == k][:per_count]
    return out


#: optimiser steps between two saves of a run's ``checkpoints/last.ckpt`` (what a killed run resumes from)
CHECKPOINT_EVERY = 100


def train(
    kind: str,
    path: Path,
    settings: dict[str, Any],
    workdir: Path,
    geometry: dict[str, float],
    trained_only: bool = False,
):
    """Train ``kind`` for ``settings["steps"]`` optimiser steps in ``<workdir>/runs/<kind>``; returns (model, info).

    Resumable: ``checkpoints/last.ckpt`` is saved every ``CHECKPOINT_EVERY`` steps and a rerun continues from
    it (the training clock too); a finished run (``finished.json`` beside its ``last.ckpt``) is loaded, not
    trained again. A run folder that holds another dataset, step count or model section is refused, and so is
    an unfinished one when ``trained_only`` (in-painting shards must not train side by side)."""
    import lightning as L

    from lightning_gcd.callbacks.clock import TrainingClock
    from lightning_gcd.models.loading import load_model

    root = workdir / "runs" / kind
    steps = int(settings["steps"])
    identity = {
        "dataset": str(path),
        "steps": steps,
        "seed": settings["seed"],
        "batch_size": settings["batch_size"],
        kind: settings[kind],
    }
    finished = root / "finished.json"
    claim_folder(root / "run.json", identity, f"a {kind} run")
    if finished.is_file():
        return load_model(root / "last.ckpt"), read_json(finished)
    if trained_only:
        raise SystemExit(
            f"run.py --shard: the {kind} model has not finished training in {root}; run --train-only first"
        )
    L.seed_everything(int(settings["seed"]), workers=True, verbose=False)
    model, dm = model_and_data(kind, path, settings, geometry)
    clock = TrainingClock()
    options = checkpointing(root / "checkpoints", every_n_train_steps=CHECKPOINT_EVERY)
    trainer = build_trainer(
        settings, max_steps=steps, default_root_dir=str(root), callbacks=[clock, *options.pop("callbacks")], **options
    )
    last = root / "checkpoints" / "last.ckpt"
    trainer.fit(model, dm, ckpt_path=str(last) if last.is_file() else None)
    trainer.save_checkpoint(root / "last.ckpt")
    loss = trainer.callback_metrics.get("train/loss_epoch", trainer.callback_metrics.get("train/loss"))
    info = {
        "steps": int(trainer.global_step),
        "train_seconds": clock.seconds,
        "checkpoint": str(root / "last.ckpt"),
        "final_train_loss": float(loss) if loss is not None else float("nan"),
        "parameters": int(sum(p.numel() for p in model.net.parameters())),
    }
    write_json_atomic(finished, info, indent=1)
    return model, info


def _record(index: int, source, atoms) -> dict[str, Any]:
    """What every generated boundary's record holds: its template (dataset index, count, E_gb) and its own
    count, atoms, E_gb (J/m²), relaxation and grain core shift (Å; whether both grains survived it)."""
    from lightning_gcd.grain_boundaries.grains import grain_core_shift, grains_kept

    info = atoms.info
    shift = float(info["grain_core_shift"]) if "grain_core_shift" in info else grain_core_shift(atoms, source)
    return {
        "template": int(index),
        "template_n": int(source.properties["n_boundary_atoms"]),
        "template_gb_energy": float(source.properties["gb_energy"]),
        "n": int(info["n_boundary_atoms"]),
        "n_atoms": len(atoms),
        "gb_energy": float(info["gb_energy"]),
        "relax_steps": int(info["relax_steps"]),
        "relax_fmax": float(info["relax_fmax"]),
        "grain_core_shift": shift,
        "grains_kept": grains_kept(shift),
    }


def _closest_pair(atoms) -> float:
    """Å between the two closest atoms of ``atoms`` as generated (periodic); inf (null in JSON) when none are
    within 3 Å. Stacked atoms (closest pairs of a few tenths of an Å) are what destroys grains in the
    relaxation."""
    from ase.neighborlist import neighbor_list

    distances = neighbor_list("d", atoms, 3.0) if len(atoms) else []
    return float(np.min(distances)) if len(distances) else float("inf")


def _with_checks(batch: list[dict[str, Any]], relaxed: list, generated: list, source) -> list[dict[str, Any]]:
    """A template's records with the closest generated pair and the grain core shift of each structure added
    where they lack them (parts written before these checks); ``relaxed`` and ``generated``: the non-empty
    structures, in the records' order."""
    from lightning_gcd.grain_boundaries.grains import grain_core_shift, grains_kept

    relaxed, generated = iter(relaxed), iter(generated)
    out = []
    for r in batch:
        if r["n_atoms"]:
            shift, closest = grain_core_shift(next(relaxed), source), _closest_pair(next(generated))
        else:
            shift, closest = float("nan"), float("inf")
        out.append({"closest_pair": closest, "grain_core_shift": shift, "grains_kept": grains_kept(shift)} | r)
    return out


def inpaint_and_relax(
    model,
    kind: str,
    path: Path,
    templates: Sequence[int],
    settings: dict[str, Any],
    parts: Path,
    say,
    shard: tuple[int, int] = (0, 1),
) -> tuple[list[dict[str, Any]], list, list, float, float]:
    """In-paint every template, relax, score; returns (records, relaxed structures, generated structures,
    sampling seconds, relaxation seconds).

    Resumable: each template's records and structures are written to ``parts`` (``template_<index>.json``,
    ``.extxyz`` relaxed, ``_generated.extxyz`` as generated) as it finishes; a rerun reads those and in-paints
    only the rest (each template's seed is fixed by its place in ``templates``, so the result is the same).
    ``shard`` (i, n): only the templates at places i mod n (the others are skipped, not read)."""
    from ase.io import read

    from lightning_gcd.grain_boundaries import fixed_atoms_kept, inpaint, read_source, relax_boundaries

    cfg = settings[kind]
    identity = (
        {key: settings.get(key) for key in ("seed", "samples_per_template", "boundary_width", "relax_steps")}
        | {"dataset": str(path), "templates": list(templates)}
        | {"sample_steps": cfg["sample_steps"], "sampler": cfg["sampler"]}
    )
    claim_folder(parts / "settings.json", identity, "in-paintings")
    records, structures, raw = [], [], []
    for j, index in enumerate(templates):
        if j % shard[1] != shard[0]:
            continue
        done = parts / f"template_{index}.json"
        relaxed_file, generated_file = parts / f"template_{index}.extxyz", parts / f"template_{index}_generated.extxyz"
        if not done.is_file():
            source = read_source(f"{path}:{index}")
            t0 = time.perf_counter()
            generated, fixed = inpaint(
                model,
                source,
                float(settings["boundary_width"]),
                int(settings["samples_per_template"]),
                steps=int(cfg["sample_steps"]),
                sampler=cfg["sampler"],
                seed=int(settings["seed"]) + 1 + j,
                batch_size=64,
            )
            t1 = time.perf_counter()
            kept = [fixed_atoms_kept(a, source, fixed, tol=1e-3) for a in generated]
            closest = [_closest_pair(a) for a in generated]
            relaxed = relax_boundaries(generated, source, max_steps=settings.get("relax_steps"))
            t2 = time.perf_counter()
            batch = [
                {
                    **_record(index, source, atoms),
                    "fixed_region_kept": bool(ok),
                    "closest_pair": near,
                    # wall time of this candidate: its share of the template batch's sampling + its relaxation
                    "sample_seconds": (t1 - t0) / len(generated),
                    "relax_seconds": float(atoms.info.get("relax_seconds", (t2 - t1) / len(generated))),
                }
                for atoms, ok, near in zip(relaxed, kept, closest, strict=True)
            ]
            unrelaxed = [a.copy() for a in generated if len(a)]  # as generated: what a later anneal starts from
            for atoms in unrelaxed:
                atoms.info = {"template": int(index)}
            write_structures_atomic(generated_file, unrelaxed)
            write_structures_atomic(relaxed_file, [a for a in relaxed if len(a)])
            write_json_atomic(done, batch, indent=1)  # last: the template's mark of completion
        batch = read_json(done)
        # a template whose samples all decoded to no atoms leaves empty files, which ASE cannot read
        relaxed = read(relaxed_file, index=":") if relaxed_file.stat().st_size else []
        unrelaxed = read(generated_file, index=":") if generated_file.stat().st_size else []
        if any("grain_core_shift" not in r or "closest_pair" not in r for r in batch):  # parts of older runs
            batch = _with_checks(batch, relaxed, unrelaxed, read_source(f"{path}:{index}"))
        records += batch
        structures += relaxed
        raw += unrelaxed
        say(f"[gb] {kind}: template {j + 1}/{len(templates)} in-painted and relaxed")
    t_sample = float(sum(r["sample_seconds"] for r in records))
    t_relax = float(sum(r["relax_seconds"] for r in records))
    return records, structures, raw, t_sample, t_relax


def anneal_samples(
    kind: str, path: Path, workdir: Path, settings: dict[str, Any], say, shard: tuple[int, int] = (0, 1)
) -> dict[str, Any]:
    """In-painting + anneal: the structures ``kind`` generated, annealed as the search anneals its candidates
    (``lightning_gcd.grain_boundaries.anneal``) and relaxed; records as ``inpaint_and_relax`` writes them.
    Resumable: each template's annealed structures are written to ``samples/<kind>_anneal.parts/`` as they
    finish, and a rerun anneals only the templates without a part; ``shard`` (i, n): only the templates at
    places i mod n."""
    from ase.io import read

    from lightning_gcd.grain_boundaries import anneal_boundaries, read_source

    generated = read(workdir / "samples" / f"{kind}_generated.extxyz", index=":")
    by_template: dict[int, list] = {}
    for atoms in generated:
        by_template.setdefault(int(atoms.info["template"]), []).append(atoms)
    parts = workdir / "samples" / f"{kind}_anneal.parts"
    records, structures = [], []
    for j, (index, batch) in enumerate(sorted(by_template.items())):
        if j % shard[1] != shard[0]:
            continue
        source = read_source(f"{path}:{index}")
        part = parts / f"template_{index}.extxyz"
        if part.is_file():
            relaxed = read(part, index=":")
        else:
            relaxed = anneal_boundaries(
                batch, source, seed=int(settings["seed"]) + 1000 * (j + 1), max_steps=settings.get("relax_steps")
            )
            write_structures_atomic(part, relaxed)
        for atoms in relaxed:
            info = atoms.info
            records.append(
                {
                    **_record(index, source, atoms),
                    "fixed_region_kept": True,  # the grains were the template's when the anneal started
                    "anneal_temperature": float(info["anneal_temperature"]),
                    "anneal_steps": int(info["anneal_steps"]),
                    "relax_seconds": float(info["relax_seconds"]),
                }
            )
            structures.append(atoms)
        say(f"[gb] {kind} + anneal: template {j + 1}/{len(by_template)}")
    write_structures_atomic(workdir / "samples" / f"{kind}_anneal.extxyz", structures)
    return {"records": records, "relax_seconds": float(sum(r["relax_seconds"] for r in records))}


def summarize(records: Sequence[dict[str, Any]], reference: dict[str, Any], margin: float) -> dict[str, Any]:
    """Rates and minima of ``records`` against the reference; a structure whose grains the relaxation destroyed
    (``grains_kept`` false) has no E_gb and counts as not relaxed into a boundary."""
    e = np.array([r["gb_energy"] for r in records], dtype=float)
    n = np.array([r["n"] for r in records], dtype=int)
    kept = np.array([r.get("grains_kept", True) for r in records], dtype=bool)
    ok = np.isfinite(e) & kept
    ref_min = reference["min"]
    per_ref = reference["per_count"]
    within_count = [
        bool(ok[i] and str(n[i]) in per_ref and e[i] <= per_ref[str(n[i])]["min"] + margin) for i in range(len(e))
    ]
    per_count = {}
    for k in sorted(set(n.tolist())):
        sel = e[(n == k) & ok]
        per_count[str(k)] = {
            "count": int((n == k).sum()),
            "min": float(sel.min()) if sel.size else float("nan"),
            "reference_min": per_ref.get(str(k), {}).get("min", float("nan")),
        }
    best = int(np.nanargmin(np.where(ok, e, np.nan))) if ok.any() else -1
    return {
        "n_samples": len(records),
        "relaxed_ok": int(ok.sum()),
        "grains_lost": int((~kept).sum()),
        # Å, the median over structures of each one's closest pair as generated (stacked atoms: tenths of an Å)
        "closest_pair_median": float(np.median([r["closest_pair"] or np.inf for r in records if "closest_pair" in r]))
        if any("closest_pair" in r for r in records)
        else float("nan"),
        "within_margin_of_reference_min": float(np.mean(ok & (e <= ref_min + margin))) if len(e) else float("nan"),
        "below_reference_min": float(np.mean(ok & (e < ref_min))) if len(e) else float("nan"),
        "within_margin_of_reference_min_at_same_n": float(np.mean(within_count)) if len(e) else float("nan"),
        "best_gb_energy": float(e[best]) if best >= 0 else float("nan"),
        "n_at_best": int(n[best]) if best >= 0 else None,
        "median_gb_energy": float(np.median(e[ok])) if ok.any() else float("nan"),
        "n_changed_from_template": float(np.mean([r["n"] != r["template_n"] for r in records]))
        if records
        else float("nan"),
        "distinct_n": sorted(set(n.tolist())),
        "fixed_region_kept": float(np.mean([r["fixed_region_kept"] for r in records])) if records else float("nan"),
        "per_count": per_count,
    }


# ----------------------------------------------------------------------------------------------------
def _fmt(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "—"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def results_markdown(results: dict[str, Any]) -> str:
    ref = results["reference"]
    margin = results["settings"]["margin"]
    sysd = results["settings"]["system"]
    lines = [
        f"# Grain-boundary in-painting: {ref['element']} {ref.get('boundary', sysd['boundary'])} ({ref['potential']})",
        "",
        f"Reference: {len(ref['n'])} relaxed structures; lowest E_gb {ref['min']:.3f} J/m² at n = {ref['n_at_min']:+d} "
        f"(n = N − N_perfect, whole cell, two boundaries). Margin {margin} J/m². Boundary slab "
        f"±{results['settings']['boundary_width']} Å.",
        "",
        "| model | samples | relaxed into a boundary | grains lost | within margin of ref. min | below ref. min | "
        "within margin of ref. min at same n | best E_gb (n) | median E_gb | n changed from template | fixed region "
        "kept |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for kind, m in results["models"].items():
        s = m["summary"]
        lines.append(
            f"| {MODEL_LABELS.get(kind, kind)} | {s['n_samples']} | {s['relaxed_ok']} | {s.get('grains_lost', '—')} | "
            f"{s['within_margin_of_reference_min']:.0%} | "
            f"{s['below_reference_min']:.0%} | {s['within_margin_of_reference_min_at_same_n']:.0%} | "
            f"{_fmt(s['best_gb_energy'])} ({s['n_at_best'] if s['n_at_best'] is not None else '—'}) | "
            f"{_fmt(s['median_gb_energy'])} | "
            f"{s['n_changed_from_template']:.0%} | {s['fixed_region_kept']:.0%} |"
        )
    counts = sorted(
        {int(k) for k in ref["per_count"]}
        | {int(k) for m in results["models"].values() for k in m["summary"]["per_count"]}
    )
    lines += [
        "",
        "Lowest E_gb (J/m²) per boundary count n (number of samples in brackets):",
        "",
        "| n | reference | " + " | ".join(MODEL_LABELS.get(k, k) for k in results["models"]) + " |",
        "|---|---|" + "---|" * len(results["models"]),
    ]
    for k in counts:
        r = ref["per_count"].get(str(k))
        cells = [f"{r['min']:.3f} ({r['count']})" if r else "—"]
        for m in results["models"].values():
            c = m["summary"]["per_count"].get(str(k))
            cells.append(f"{_fmt(c['min'])} ({c['count']})" if c else "—")
        lines.append(f"| {k:+d} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Timing (s): "
        + "; ".join(
            f"{k}: train {m['train']['train_seconds']:.0f}, sample {m['sample_seconds']:.0f}, relax "
            f"{m['relax_seconds']:.0f}"
            for k, m in results["models"].items()
        )
        + f"; total {results.get('total_seconds', float('nan')):.0f}.",
        "",
    ]
    return "\n".join(lines)


def plot_results(results: dict[str, Any], out: Path) -> list[Path]:
    ref = results["reference"]
    margin = results["settings"]["margin"]
    fig = new_figure((6.4, 4.4))
    ax = fig.add_subplot()
    rn, re = np.asarray(ref["n"]), np.asarray(ref["gb_energy"])
    ax.scatter(rn, re, s=14, color=COLORS["data"], alpha=0.5, label="reference (dataset)")
    ks = sorted(int(k) for k in ref["per_count"])
    ax.plot(ks, [ref["per_count"][str(k)]["min"] for k in ks], color=COLORS["data"], lw=1, label="reference min per n")
    ax.axhspan(ref["min"], ref["min"] + margin, color="0.85", label=f"ref. minimum + {margin} J/m²")
    offsets = {"voxel": -0.12, "particle": 0.12}
    top = 2.0 * float(np.max(re))  # generated boundaries above twice the worst reference are counted, not drawn
    for kind, m in results["models"].items():
        n = np.asarray([r["n"] for r in m["samples"]], dtype=float)
        e = np.asarray([np.nan if r["gb_energy"] is None else r["gb_energy"] for r in m["samples"]], dtype=float)
        above = int(np.sum(~np.isfinite(e) | (e > top)))
        note = f", {above} above {top:.1f} or failed" if above else ""
        ax.scatter(
            n + offsets.get(kind, 0.0),
            np.where(e > top, np.nan, e),
            s=18,
            color=COLORS.get(kind),
            alpha=0.8,
            label=f"{MODEL_LABELS.get(kind, kind)} (relaxed{note})",
        )
    shown = np.concatenate(
        [re]
        + [
            np.asarray([np.nan if r["gb_energy"] is None else r["gb_energy"] for r in m["samples"]], float)
            for m in results["models"].values()
        ]
    )
    shown = shown[np.isfinite(shown) & (shown <= top)]
    ax.set_ylim(min(float(shown.min()), ref["min"]) - 0.1, float(shown.max()) + 0.1)
    ax.set_xlabel("n = N − N_perfect (boundary atoms, two boundaries)")
    ax.set_ylabel("E_gb (J/m²)")
    boundary = ref.get("boundary", results["settings"]["system"]["boundary"])
    ax.set_title(f"{ref['element']} {boundary}: generated vs reference")
    ax.legend(fontsize=7)
    paths = [out / "egb_vs_n.png"]
    save_figure(fig, paths[0], dpi=120)
    fig2 = new_figure((6.0, 3.4))
    ax2 = fig2.add_subplot()
    for kind, m in results["models"].items():
        n = [r["n"] for r in m["samples"]]
        if n:
            bins = np.arange(min(n) - 0.5, max(n) + 1.5)
            ax2.hist(n, bins=bins, alpha=0.6, color=COLORS.get(kind), label=MODEL_LABELS.get(kind, kind))
    ax2.hist(
        ref["n"],
        bins=np.arange(min(ref["n"]) - 0.5, max(ref["n"]) + 1.5),
        histtype="step",
        color=COLORS["data"],
        label="reference",
    )
    ax2.set_xlabel("n = N − N_perfect")
    ax2.set_ylabel("structures")
    ax2.legend(fontsize=7)
    paths.append(out / "counts.png")
    save_figure(fig2, paths[1], dpi=120)
    return paths


def write_outputs(results: dict[str, Any], out: Path) -> list[Path]:
    write_json_atomic(out / "results.json", results, indent=2)
    write_text_atomic(out / "results.md", results_markdown(results))
    return [out / "results.json", out / "results.md", *plot_results(results, out)]


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    settings = resolve_settings(args)
    workdir = Path(args.workdir)
    out = Path(args.out) if args.out else workdir / "results"
    if args.replot:
        results = read_json(out / "results.json")
        write_outputs(results, out)
        return results
    say = (lambda *a: None) if args.quiet else (lambda *a: print(*a, flush=True))
    try:
        shard = parse_shard(args.shard)
    except GcdError as err:
        raise SystemExit(f"run.py: {err}") from None
    sharded = args.shard is not None
    if args.anneal_samples:
        results = read_json(out / "results.json")
        path = Path(results["dataset"])
        for kind in [k for k in settings["models"] if k in results["models"]]:
            done = anneal_samples(kind, path, workdir, results["settings"], say, shard)
            if sharded:
                say(f"[gb] {kind} + anneal: shard {shard[0]}/{shard[1]} done; rerun without --shard to collect")
                continue
            first = results["models"][kind]
            per_template: dict[int, list[float]] = {}
            for r in first["samples"]:
                per_template.setdefault(r["template"], []).append(float(r.get("sample_seconds", float("nan"))))
            for r in done["records"]:  # the generation this candidate started from
                r["sample_seconds"] = float(np.mean(per_template.get(r["template"], [float("nan")])))
            results["models"][f"{kind}_anneal"] = {
                "train": first["train"],
                "summary": summarize(done["records"], results["reference"], float(results["settings"]["margin"])),
                "samples": done["records"],
                "sample_seconds": first["sample_seconds"],
                "relax_seconds": done["relax_seconds"],
            }
            write_outputs(results, out)
        return results

    set_threads(settings.get("threads"))
    quiet_lightning()
    start = time.perf_counter()
    from datamodules.h5format import AtomsH5

    path = Path(settings["dataset"]) if settings["dataset"] else build_data(settings, workdir, args.rebuild)
    if not path.is_file():
        raise SystemExit(f"run.py: no dataset file {path}")
    reference = reference_table(path)
    templates = choose_templates(path, int(settings["templates_per_count"]))
    with AtomsH5(path) as data:
        geometry = particle_geometry(data.atoms(reference["index_at_min"]), settings)
    say(
        f"[gb] {path}: {len(reference['n'])} structures, counts {sorted(int(k) for k in reference['per_count'])}, "
        f"reference min "
        f"{reference['min']:.3f} J/m² at n={reference['n_at_min']:+d} ({time.perf_counter() - start:.0f} s); "
        f"templates {templates}"
    )
    results: dict[str, Any] = {
        "study": STUDY,
        "settings": settings,
        "machine": machine_info(settings),
        "command": study_command(__file__, argv if argv is not None else sys.argv[1:]),
        "dataset": str(path),
        "reference": reference,
        "templates": templates,
        "models": {},
    }

    for kind in settings["models"]:
        say(f"[gb] {kind}: training {settings['steps']} steps ...")
        model, train_info = train(kind, path, settings, workdir, geometry, trained_only=sharded)
        if args.train_only:
            say(f"[gb] {kind}: trained ({train_info['steps']} steps)")
            continue
        records, structures, raw, t_sample, t_relax = inpaint_and_relax(
            model, kind, path, templates, settings, workdir / "samples" / f"{kind}.parts", say, shard
        )
        if sharded:
            say(f"[gb] {kind}: shard {shard[0]}/{shard[1]} in-painted; rerun without --shard to collect")
            continue
        write_structures_atomic(workdir / "samples" / f"{kind}.extxyz", structures)
        write_structures_atomic(workdir / "samples" / f"{kind}_generated.extxyz", raw)
        summary = summarize(records, reference, float(settings["margin"]))
        results["models"][kind] = {
            "train": train_info,
            "summary": summary,
            "samples": records,
            "sample_seconds": t_sample,
            "relax_seconds": t_relax,
            **({"grid_shape": list(model.info["grid_shape"])} if kind == "voxel" else geometry),
        }
        results["total_seconds"] = time.perf_counter() - start
        write_outputs(results, out)
        say(
            f"[gb] {kind}: within {settings['margin']} J/m² of the reference min "
            f"{summary['within_margin_of_reference_min']:.0%}, "
            f"best {_fmt(summary['best_gb_energy'])} J/m² at n={summary['n_at_best']}, counts {summary['distinct_n']}; "
            f"train {train_info['train_seconds']:.0f} s, sample {t_sample:.0f} s, relax {t_relax:.0f} s"
        )
    if sharded or args.train_only:
        return results  # parts and checkpoints only: the run without --shard writes the results
    results["total_seconds"] = time.perf_counter() - start
    write_outputs(results, out)
    say(f"[gb] done in {results['total_seconds']:.0f} s: {out / 'results.md'}")
    return results


if __name__ == "__main__":
    main()
