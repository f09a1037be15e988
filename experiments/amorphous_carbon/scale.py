"""Scale-agnostic generation of amorphous carbon: trained on 64-atom cells, sampled as 512-atom cells.

Both diffusion models are trained (or loaded) on the 64-atom a-C file with the structure's mean C K-edge
XANES as a classifier-free-guidance condition (``guided.py``'s priors). For every 512-atom melt-quench
reference (one per density, ``gcd data build amorphous-carbon --n-atoms 512``) each model samples
``--samples`` structures in the cubic cell of ``--n-atoms`` atoms at the reference's density, conditioned on
the mean spectrum of the 64-atom training cells of that density (what a user with a measured spectrum of
that material would give), and, as the in-distribution baseline, as many 64-atom cells at the same density
with the same condition:

* particle model: N = ``--n-atoms`` atoms in the cell (density × volume);
* voxel model: the grid that holds the training grids' voxels per atom (``grid_for_cell(cell, n_atoms)``:
  twice the training grid per axis for 8× the atoms); the atom count is the model's own (grand canonical).

Measured against the 512-atom reference of the same density and against the 64-atom training cells of that
density: g(r) L1 (0-6 Å), sp/sp2/sp3 fractions (C-C bonds < 1.85 Å), the samples' atom count and mass
density, the mean minimum interatomic distance. With ``--relax STEPS`` every sample is first relaxed with the builder's
Tersoff potential at fixed cell and these are measured on the relaxed structures (the raw samples' kept as
``raw_*``). Writes ``results.json``, ``curves.json`` and ``scale.png``
(g(r) per density; sp3 fraction against density) to ``--out``.

    gcd data build amorphous-carbon --n-structures 300 --xanes-sites 8 \
        --out experiments/amorphous_carbon/data/a_c_300.h5 --finished-only
    gcd data build amorphous-carbon --n-structures 5 --n-atoms 512 --xanes-sites 1 \
        --out experiments/amorphous_carbon/data/a_c_512_ref.h5 --finished-only
    python experiments/amorphous_carbon/scale.py --out experiments/amorphous_carbon/results/scale
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lightning_gcd.io import write_json_atomic
from lightning_gcd.runner.results import save_figure
from lightning_gcd.structures import mass_density
from lightning_gcd.studies.amorphous_carbon import min_distances, relax_samples, train_prior

R_MAX, N_BINS = 6.0, 120
# with --relax: the figures of the raw samples kept next to the relaxed ones
RAW_KEYS = ("min_distance_mean", "first_peak_r", "sp_fraction", "sp2_fraction", "sp3_fraction", "rdf_l1_vs_ref512")
COLORS = {"particle": "tab:orange", "voxel": "tab:blue"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="experiments/amorphous_carbon/data/a_c_300.h5", help="64-atom a-C training file")
    p.add_argument("--refs", default="experiments/amorphous_carbon/data/a_c_512_ref.h5", help="512-atom references")
    p.add_argument("--out", default="experiments/amorphous_carbon/results/scale")
    p.add_argument("--models", nargs="+", default=["particle", "voxel"], choices=["particle", "voxel"])
    p.add_argument("--samples", type=int, default=4, help="structures per model, density and size")
    p.add_argument("--n-atoms", type=int, default=512, help="size to generate (default 512)")
    p.add_argument("--prior-steps", type=int, default=3000, help="training steps of each prior trained here")
    p.add_argument("--particle-ckpt", help="use this particle prior instead of training one")
    p.add_argument("--voxel-ckpt", help="use this voxel prior instead of training one")
    p.add_argument("--guidance", type=float, default=1.0, help="CFG scale of the spectrum condition (1: conditional)")
    p.add_argument("--particle-steps", type=int, default=64, help="Euler-Maruyama steps (the paper's 64)")
    p.add_argument(
        "--particle-sampler",
        choices=["em", "pc"],
        default="em",
        help="particle sampler: Euler-Maruyama (default, the paper's) or predictor-corrector (Langevin)",
    )
    p.add_argument("--voxel-steps", type=int, default=100, help="voxel sampler steps")
    p.add_argument("--voxel-sampler", choices=["ddpm", "ddim"], default="ddpm", help="voxel sampler (default DDPM)")
    p.add_argument(
        "--voxel-geometry",
        choices=["on", "off"],
        default="off",
        help="train the voxel prior told each grid's voxel spacing (geometry_condition; default off)",
    )
    p.add_argument(
        "--standardize-condition",
        choices=["on", "off"],
        default="on",
        help="priors trained here standardise the spectrum condition (default on)",
    )
    p.add_argument(
        "--voxel-input-perturbation",
        type=float,
        default=0.0,
        help="a voxel prior trained here uses DDPM-IP input perturbation with this γ (default 0: off)",
    )
    p.add_argument(
        "--voxel-restarts", type=int, default=0, help="restart sampling of the voxel model: N restarts (default 0)"
    )
    p.add_argument(
        "--voxel-restart-t", type=float, default=0.5, help="the level restarts go back to, × T (default 0.5)"
    )
    p.add_argument(
        "--relax",
        type=int,
        default=0,
        metavar="STEPS",
        help="relax every sample with the builder's Tersoff potential (fixed cell, at most STEPS steps) and "
        "measure the relaxed structures; the raw samples' figures are kept as raw_* (default 0: off)",
    )
    p.add_argument(
        "--density-tolerance", type=float, default=0.05, help="g/cm³: training cells counted as 'this density'"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    return p


def first_peak(g: np.ndarray) -> float:
    """Å: where g(r) peaks between 1.0 and 2.0 Å (the C-C bond; bins' centres), NaN for no curve."""
    r = (np.arange(N_BINS) + 0.5) * R_MAX / N_BINS
    window = (r > 1.0) & (r < 2.0)
    return float(r[window][np.argmax(g[window])]) if np.isfinite(g[window]).all() else float("nan")


def structure_metrics(structures: list, reference_g: dict[str, np.ndarray]) -> tuple[dict[str, Any], np.ndarray]:
    """sp fractions, atom count, density, minimum distance and g(r) L1 against each reference curve."""
    from lightning_gcd.metrics.coordination import sp_fractions
    from lightning_gcd.metrics.rdf import rdf_l1, structure_rdf
    from lightning_gcd.structures import StructureBatch

    batch = StructureBatch.from_atoms(structures)
    g, valid = structure_rdf(batch, r_max=R_MAX, n_bins=N_BINS)
    g_mean = g[:, 0][valid[:, 0]].mean(0).numpy() if valid[:, 0].any() else np.full(N_BINS, np.nan)  # none: no curve
    dists = min_distances(structures)
    row: dict[str, Any] = {
        "n_atoms_mean": float(np.mean([len(a) for a in structures])),
        "n_atoms": [len(a) for a in structures],
        "density_mean": float(np.mean([mass_density(a) for a in structures])),
        "min_distance_mean": float(np.nanmean(dists)) if np.isfinite(dists).any() else float("nan"),
        "first_peak_r": first_peak(g_mean),
        **{f"{k}_fraction": v for k, v in sp_fractions(batch).items()},
    }
    for name, curve in reference_g.items():
        row[f"rdf_l1_vs_{name}"] = float(rdf_l1(g_mean, curve, R_MAX / N_BINS))
    return row, g_mean


def load_references(args: argparse.Namespace) -> list[dict[str, Any]]:
    """One entry per 512-atom reference: its structure, density, the condition (mean spectrum of the
    training cells of that density) and those 64-atom cells."""
    from datamodules.h5format import AtomsH5

    with AtomsH5(args.data) as data:
        train = [int(i) for i in data.split("train")]
        cells = [(data.atoms(i), np.asarray(data.structure_property("xanes", i), dtype=np.float64)) for i in train]
    with AtomsH5(args.refs) as refs:
        references = [refs.atoms(i) for i in range(len(refs))]
    entries = []
    for ref in sorted(references, key=mass_density):
        rho = mass_density(ref)
        same = [(a, s) for a, s in cells if abs(mass_density(a) - rho) <= args.density_tolerance]
        if not same:
            raise SystemExit(
                f"no 64-atom training cell within {args.density_tolerance} g/cm³ of the reference at "
                f"{rho:.2f} g/cm³: build more data or widen --density-tolerance"
            )
        entries.append(
            {
                "reference": ref,
                "density": rho,
                "cells": [a for a, _ in same],
                "condition": np.mean([s for _, s in same], axis=0),
            }
        )
    return entries


def thinned_sp3(cells: list, keep_fraction: float, draws: int = 4, seed: int = 0) -> float:
    """sp3 fraction of ``cells`` after deleting atoms at random down to ``keep_fraction`` of each (``draws``
    thinnings per cell): what an atom deficit alone does to the sp3 fraction of the real structures."""
    from lightning_gcd.metrics.coordination import sp_fractions

    rng = np.random.default_rng(seed)
    thinned = []
    for atoms in cells:
        n_delete = len(atoms) - int(round(min(max(keep_fraction, 0.0), 1.0) * len(atoms)))
        for _ in range(draws if n_delete else 1):
            copy = atoms.copy()
            del copy[rng.choice(len(copy), n_delete, replace=False).tolist()]
            thinned.append(copy)
    return float(sp_fractions(thinned)["sp3"])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    from lightning_gcd.metrics.coordination import sp_fractions
    from lightning_gcd.metrics.rdf import structure_rdf
    from lightning_gcd.models.base import DiffusionModule
    from lightning_gcd.models.loading import load_model
    from lightning_gcd.structures import StructureBatch, cubic_cell

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    entries = load_references(args)
    results: dict[str, Any] = {"settings": vars(args), "references": [], "runs": [], "timings": {}}
    curves: dict[str, Any] = {"r": np.linspace(0.0, R_MAX, N_BINS + 1)[:-1].tolist(), "g": {}}  # bin starts, Å
    for e in entries:
        g_ref, _ = structure_rdf(StructureBatch.from_atoms([e["reference"]]), r_max=R_MAX, n_bins=N_BINS)
        g_cells, valid = structure_rdf(StructureBatch.from_atoms(e["cells"]), r_max=R_MAX, n_bins=N_BINS)
        e["g"] = {"ref512": g_ref[0, 0].numpy(), "data64": g_cells[:, 0][valid[:, 0]].mean(0).numpy()}
        key = f"{e['density']:.2f}"
        curves["g"][f"ref512 {key}"] = e["g"]["ref512"].tolist()
        curves["g"][f"data64 {key}"] = e["g"]["data64"].tolist()
        results["references"].append(
            {
                "density": e["density"],
                "n_atoms": len(e["reference"]),
                "first_peak_r": first_peak(e["g"]["ref512"]),
                **{f"{k}_fraction": v for k, v in sp_fractions([e["reference"]]).items()},
                "data64_cells": len(e["cells"]),
                **{f"data64_{k}_fraction": v for k, v in sp_fractions(e["cells"]).items()},
            }
        )

    ckpt_dir = out / "checkpoints"
    for kind in args.models:
        t = time.time()
        given = getattr(args, f"{kind}_ckpt")
        if given:
            path = Path(given)
        else:
            ckpt_dir.mkdir(parents=True, exist_ok=True)
            path = train_prior(
                kind,
                args.data,
                args.prior_steps,
                ckpt_dir,
                voxel_geometry=args.voxel_geometry == "on",
                standardize_condition=args.standardize_condition == "on",
                voxel_input_perturbation=args.voxel_input_perturbation,
            )
        results["timings"][f"train_{kind}_s"] = time.time() - t
        model = load_model(path, base=DiffusionModule)
        sampler, steps = (
            (args.particle_sampler, args.particle_steps)
            if kind == "particle"
            else (args.voxel_sampler, args.voxel_steps)
        )
        if kind == "voxel":
            model.sample_restarts, model.sample_restart_t = args.voxel_restarts, args.voxel_restart_t
        for e in entries:
            cond = torch.as_tensor(e["condition"], dtype=torch.float32)
            for n_atoms in dict.fromkeys((64, args.n_atoms)):  # once each (--n-atoms 64: one size)
                cell = cubic_cell(n_atoms, e["density"], {6: 1.0})
                template = model.sample_template(args.samples, cond=cond, cell=cell, n_atoms=n_atoms)
                t = time.time()
                samples = model.sample(
                    template,
                    batch_size=args.samples,
                    steps=steps,
                    sampler=sampler,
                    guidance_scale=args.guidance,
                    seed=args.seed,
                    progress=False,
                )
                seconds = time.time() - t
                raw: dict[str, Any] = {}
                if args.relax:  # the raw samples' figures first, then measure the relaxed ones
                    raw_row, raw_g = structure_metrics(samples, e["g"])
                    raw = {f"raw_{k}": v for k, v in raw_row.items() if k in RAW_KEYS}
                    curves["g"][f"{kind}{n_atoms} {e['density']:.2f} raw"] = raw_g.tolist()
                    t = time.time()
                    samples, energies = relax_samples(samples, args.relax)
                    raw.update(relax_seconds=time.time() - t, relaxed_energy_per_atom=float(np.nanmean(energies)))
                row, g_mean = structure_metrics(samples, e["g"])
                run = {
                    "model": kind,
                    "density": e["density"],
                    "requested_atoms": n_atoms,
                    "sampler": sampler,
                    "steps": steps,
                    "sample_seconds": seconds,
                    **row,
                    **raw,
                }
                # the training cells of this density thinned to the samples' share of the requested atoms
                run["data64_thinned_sp3_fraction"] = thinned_sp3(e["cells"], row["n_atoms_mean"] / n_atoms)
                if hasattr(model, "grid_for_cell"):
                    run["grid"] = list(model.grid_for_cell(torch.as_tensor(cell), n_atoms))
                results["runs"].append(run)
                curves["g"][f"{kind}{n_atoms} {e['density']:.2f}"] = g_mean.tolist()
                print(
                    f"[scale] {kind} {n_atoms} atoms at {e['density']:.2f} g/cm³: n {run['n_atoms_mean']:.1f}, "
                    f"density {run['density_mean']:.2f}, sp3 {run['sp3_fraction']:.2f}, first peak "
                    f"{run['first_peak_r']:.2f} Å, g(r) L1 vs ref512 "
                    f"{run['rdf_l1_vs_ref512']:.2f}, sp3 of the data thinned to that count "
                    f"{run['data64_thinned_sp3_fraction']:.2f}, "
                    f"{seconds:.0f} s",
                    file=sys.stderr,
                    flush=True,
                )
                results["timings"]["total_s"] = time.time() - started
                write_json_atomic(out / "results.json", results, keep_nan=True, indent=1)
    write_json_atomic(out / "curves.json", curves, keep_nan=True)
    plot(results, curves, out / "scale.png")
    return results


def plot(results: dict[str, Any], curves: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    refs = results["references"]
    models = sorted({r["model"] for r in results["runs"]})
    big = results["settings"]["n_atoms"]
    fig, axes = plt.subplots(2, len(refs), figsize=(3.4 * len(refs), 6.5), squeeze=False)
    r = np.asarray(curves["r"])
    for k, ref in enumerate(refs):
        ax, key = axes[0, k], f"{ref['density']:.2f}"
        ax.plot(r, curves["g"][f"ref512 {key}"], "k", lw=2, label=f"melt-quench {ref['n_atoms']}")
        ax.plot(r, curves["g"][f"data64 {key}"], color="0.5", ls="--", lw=1, label="training 64")
        for model in models:
            g = curves["g"].get(f"{model}{big} {key}")
            if g is not None:
                ax.plot(r, g, color=COLORS[model], lw=1.2, label=f"{model} {big}")
        ax.set_title(f"{ref['density']:.1f} g/cm³")
        ax.set_xlabel("r (Å)")
        if k == 0:
            ax.set_ylabel("g(r)")
            ax.legend(fontsize=7)
    for ax in axes[1, 1:]:
        ax.remove()
    ax = axes[1, 0]
    if len(refs) > 1:
        ax.set_position([0.07, 0.08, 0.4, 0.36])
    rho = [ref["density"] for ref in refs]
    ax.plot(rho, [ref["sp3_fraction"] for ref in refs], "ks-", label=f"melt-quench {refs[0]['n_atoms']}")
    ax.plot(rho, [ref["data64_sp3_fraction"] for ref in refs], "o--", color="0.5", label="training 64")
    for model in models:
        for n, style in ((64, "o:"), (big, "^-")):
            rows = [run for run in results["runs"] if run["model"] == model and run["requested_atoms"] == n]
            ax.plot(
                [run["density"] for run in rows],
                [run["sp3_fraction"] for run in rows],
                style,
                color=COLORS[model],
                mfc="none" if n == 64 else COLORS[model],
                label=f"{model} {n}",
            )
    ax.set_xlabel("density (g/cm³)")
    ax.set_ylabel("sp3 fraction")
    ax.legend(fontsize=7, ncol=2)
    save_figure(fig, path, dpi=110, bbox_inches="tight")
    plt.close(fig)


if __name__ == "__main__":
    main()
