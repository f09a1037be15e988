"""Spectrum-guided vs unguided generation of amorphous carbon, for both diffusion models.

For each target (the mean XANES of a test-split structure) and each model (the particle baseline and the
grand canonical voxel model, both trained with the spectrum as a classifier-free-guidance condition), it
samples ``--samples`` structures in the target's cell (or, with ``--n-atoms N``, in the cubic cell of N atoms
at the target's density: the size a user asks for) in four modes, with the same seeds:

* ``unguided``: CFG scale 0 (the learned unconditional model);
* ``cfg``: classifier-free guidance on the target spectrum (``--cfg-scale``);
* ``dps``: CFG scale 0 plus diffusion posterior sampling with the forward model (``--dps-scale-*``);
* ``cfg+dps``: both.

``--modes`` picks some of them; ``--dps-scale-particle``/``--dps-scale-voxel`` take several ρ (a ρ sweep),
each DPS mode then runs once per ρ and is labelled with it (``dps ρ400``). ``--merge`` joins separate runs
(one per model, or one per ρ) into one table and plot. ``--relax STEPS`` relaxes every sample with the
builder's Tersoff potential (fixed cell) and measures the relaxed structures (the raw samples' sp fractions
and minimum distance kept as ``raw_*``); ``--density RHO`` samples every target at RHO instead of its own
density (the steering test: can guidance move a structure toward another density's spectrum?).

and measures, against the target structure: sp/sp2/sp3 fractions (1.85 Å), g(r) L1 (0–6 Å), atom count,
minimum distance, the spectrum error by the forward model (relative L2 of the mean predicted spectrum
against the target), and, on ``--feff-structures`` samples per mode with ``--feff-sites`` random sites
each, the spectrum error by FEFF10 itself (the builder's settings; the run's dominant cost). FEFF's error on a
few sites carries sampling noise: the same number of the target structure's own labelled sites, drawn at
random, gives the noise floor (``feff_floor``).

Models: trained here with the real Lightning ``Trainer`` for ``--prior-steps``/``--forward-epochs`` unless
checkpoints are given (``--particle-ckpt``, ``--voxel-ckpt``, ``--forward-ckpt``, e.g. from ``gcd fit
--config experiments/amorphous_carbon/{particle,voxel,spectrum}.yaml``). Writes ``results.json``
(every number and the settings), ``curves.json``, ``guided.png`` and every run's samples
(``samples/*.extxyz``; with ``--relax`` also the raw ones, ``*_raw.extxyz``) to ``--out``. The results are
written after every run: a killed run, rerun with the same command, keeps the runs it finished and
continues with the next. FEFF's sites are drawn per sample from (seed, target, sample index), so a run's
sites do not depend on the runs before it.

    python experiments/amorphous_carbon/guided.py --data data/a_c_small.h5 --out experiments/amorphous_carbon/results
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from lightning_gcd.cli_sample import density_value
from lightning_gcd.io import write_extxyz_atomic, write_json_atomic
from lightning_gcd.runner.results import save_figure
from lightning_gcd.runner.trainer import build_trainer
from lightning_gcd.studies.amorphous_carbon import (
    data_density_range,
    density_scan_pool,
    min_distances,
    relax_samples,
    train_prior,
)


def write_json(path: Path, payload: dict) -> None:
    """``path`` holds either the old or the new JSON, never half of one (a kill mid-write). NaN (a voxel
    sample without atoms) stays NaN, which ``summary``'s ``nanmean`` skips when a resumed or merged file is
    read back; ``null`` (``write_json_atomic``'s strict-JSON default) would break it."""
    write_json_atomic(path, payload, keep_nan=True, indent=1)


MODES = ("unguided", "cfg", "dps", "cfg+dps")


def train_forward(path: str, epochs: int, out: Path):
    import lightning as L

    from datamodules.datamodule import AtomsDataModule
    from lightning_gcd.spectra.forward_model import SpectrumModel

    L.seed_everything(0, verbose=False)
    dm = AtomsDataModule(path, view="particle", batch_size=4, atom_properties=["xanes", "xanes_mask"])
    model = SpectrumModel(hidden=64, layers=3, lr=2e-3, weight_decay=1e-4)
    trainer = build_trainer(max_epochs=epochs)
    trainer.fit(model, dm)
    trainer.save_checkpoint(out / "forward.ckpt")
    return out / "forward.ckpt"


def feff_site_spectra(atoms, sites, energy: np.ndarray, work: Path) -> tuple[np.ndarray, list[str]]:
    """FEFF10 spectra (n_sites, K) of ``sites`` of ``atoms`` on ``energy``, with the builder's functions."""
    from datamodules.builders.amorphous_carbon import FeffSettings, feff_xanes, redirect_output, site_clusters

    feff = FeffSettings()
    spectra, errors = [], []
    for j, neighbours in zip(sites, site_clusters(atoms, sites, feff.cluster_radius), strict=False):
        try:
            with redirect_output(work / "feff.log"):
                e, mu = feff_xanes(neighbours, feff, work / f"site{int(j)}")
            spectra.append(np.interp(energy, e, mu))
        except Exception as exc:  # noqa: BLE001 - a broken sample (overlapping atoms) is reported, not fatal
            errors.append(f"site {int(j)}: {str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__}")
    return np.asarray(spectra), errors


def rel_l2(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


SITE_DRAW = "per sample: rng(seed, target, sample)"


def feff_sites(n_atoms: int, n_sites: int, seed: int, target: int, sample: int) -> np.ndarray:
    """The sorted atom indices FEFF runs on in sample ``sample`` of target ``target``: drawn from a generator
    seeded by (seed, target, sample) alone, so a run's sites do not depend on which runs came before it (a
    resumed or split run draws the same ones) and every mode's sample k of a target uses the same indices."""
    return np.sort(np.random.default_rng([seed, target, sample]).choice(n_atoms, n_sites, replace=False))


def run_key(run: dict) -> tuple:
    """What tells two runs of one results file apart: model, target, mode, DPS ρ and density setting."""
    return run["model"], str(run["target"]), run["mode"], float(run.get("dps_scale", 0.0)), run.get("density_setting")


def sample_file(out: Path, kind: str, run: dict, raw: bool = False) -> Path:
    """``OUT/samples/{model}_{mode}_{density setting}_rho{ρ}_target{i}[_raw].extxyz``: a run's samples."""
    mode = run["mode"].replace("+", "-")
    name = f"{kind}_{mode}_{run['density_setting']}_rho{run['dps_scale']:g}_target{run['target']}"
    return out / "samples" / f"{name}{'_raw' if raw else ''}.extxyz"


def previous_results(out: Path, settings: dict) -> tuple[dict, dict] | None:
    """The results and curves an earlier, killed run of the same command left in ``out`` (None if none).

    The runs already finished there are kept and not sampled again. A results file of other settings, or of
    an older FEFF site draw, is not mixed in: that raises SystemExit naming the differences."""
    path, curves_path = out / "results.json", out / "curves.json"
    if not path.exists():
        return None
    old = json.loads(path.read_text())
    if "merged_from" in old:
        raise SystemExit(f"--out {out} holds merged results; give another --out")
    differ = sorted(
        k for k in set(settings) | set(old.get("settings", {})) if old.get("settings", {}).get(k) != settings.get(k)
    )
    if old.get("feff_site_draw") != SITE_DRAW:
        differ.append("FEFF site draw (results of an older guided.py)")
    if differ or not curves_path.exists():
        why = ", ".join(differ) if differ else "no curves.json"
        raise SystemExit(f"--out {out} holds results of another run ({why}); give another --out or remove them")
    return old, json.loads(curves_path.read_text())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="data/a_c_small.h5")
    parser.add_argument("--out", default="experiments/amorphous_carbon/results")
    parser.add_argument("--split", default="test", help="targets: the structures of this split")
    parser.add_argument("--max-targets", type=int, default=2)
    parser.add_argument("--targets", type=int, nargs="+", help="dataset indices of the targets (instead of --split)")
    parser.add_argument(
        "--merge",
        nargs="+",
        metavar="DIR",
        help="join the results of runs made separately (e.g. one per model, in parallel) into --out",
    )
    parser.add_argument("--models", nargs="+", default=["particle", "voxel"], choices=["particle", "voxel"])
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--prior-steps", type=int, default=1500)
    parser.add_argument("--forward-epochs", type=int, default=200)
    parser.add_argument("--particle-ckpt")
    parser.add_argument("--voxel-ckpt")
    parser.add_argument("--forward-ckpt")
    parser.add_argument("--cfg-scale", type=float, default=2.0)
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES, help="modes to run (default: all)")
    parser.add_argument(
        "--dps-scale-particle",
        type=float,
        nargs="+",
        default=[800.0],
        help="DPS ρ of the particle model; several values: a sweep (each DPS mode once per ρ)",
    )
    parser.add_argument("--dps-scale-voxel", type=float, nargs="+", default=[10.0], help="DPS ρ of the voxel model")
    parser.add_argument("--particle-steps", type=int, default=64, help="Euler-Maruyama steps (the paper's 64)")
    parser.add_argument("--voxel-steps", type=int, default=50, help="DDIM steps")
    parser.add_argument(
        "--feff-structures", type=int, default=1, help="samples per (model, target, mode) run through FEFF"
    )
    parser.add_argument("--feff-sites", type=int, default=4)
    parser.add_argument(
        "--n-atoms",
        type=int,
        default=None,
        help="sample this many atoms in a cubic cell at each target's density (default: the target's "
        "own cell and count); e.g. 512 from priors trained on 64-atom cells",
    )
    parser.add_argument(
        "--density",
        type=density_value,
        default=None,
        metavar="G_PER_CM3|auto",
        help="sample every target's structures at this density instead of the target's own (a steering "
        "test: can guidance move a structure of one density toward another's spectrum?); auto: "
        "the density the forward model reads from each target's spectrum (gcd sample --density "
        "auto: unconditional samples at --density-range, relaxed with --relax)",
    )
    parser.add_argument(
        "--density-range",
        type=float,
        nargs=2,
        default=None,
        metavar=("LOW", "HIGH"),
        help="--density auto: the densities to scan (default: the file's training cells' range)",
    )
    parser.add_argument("--density-scan-points", type=int, default=9)
    parser.add_argument("--density-scan-samples", type=int, default=4)
    parser.add_argument(
        "--relax",
        type=int,
        default=0,
        metavar="STEPS",
        help="relax every sample with the builder's Tersoff potential (fixed cell, at most STEPS "
        "conjugate-gradient steps) and measure the relaxed structures; the raw samples' "
        "sp fractions and minimum distance are kept as raw_* (default 0: no relaxation)",
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from datamodules.h5format import AtomsH5
    from lightning_gcd.metrics.coordination import sp_fractions
    from lightning_gcd.metrics.rdf import rdf_l1, structure_rdf
    from lightning_gcd.models.base import DiffusionModule
    from lightning_gcd.models.loading import load_model
    from lightning_gcd.spectra.density_scan import choose_density
    from lightning_gcd.spectra.forward_model import SpectrumModel
    from lightning_gcd.spectra.guidance import SpectrumGuidance
    from lightning_gcd.structures import StructureBatch, cubic_cell, mass_density

    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.merge:
        return merge([Path(d) for d in args.merge], args.data, out)
    started = time.time()
    timings: dict[str, float] = {}
    settings = json.loads(json.dumps(vars(args), default=float))
    previous = previous_results(out, settings)
    with AtomsH5(args.data) as data:
        energy = np.asarray(data.attrs["meta_xanes_energy"], dtype=np.float64)
        target_ids = args.targets or [int(i) for i in data.split(args.split)[: args.max_targets]]
        if not all(0 <= i < len(data) for i in target_ids):
            raise SystemExit(f"--targets: {args.data} has structures 0-{len(data) - 1}, got {target_ids}")
        targets = {
            i: (
                data.atoms(i),
                np.asarray(data.structure_property("xanes", i), dtype=np.float64),
                np.asarray(data.atom_property("xanes", i)),
                np.asarray(data.atom_property("xanes_mask", i), bool),
            )
            for i in target_ids
        }

    ckpt_dir = out / "checkpoints"
    ckpt_dir.mkdir(exist_ok=True)
    t = time.time()
    trained_forward = ckpt_dir / "forward.ckpt"
    forward_path = (
        Path(args.forward_ckpt)
        if args.forward_ckpt
        else trained_forward
        if previous and trained_forward.exists()  # resumed: trained before the kill
        else train_forward(args.data, args.forward_epochs, ckpt_dir)
    )
    timings["train_forward_s"] = time.time() - t
    forward = load_model(forward_path, base=SpectrumModel).float()
    guidance_rhos = {"particle": args.dps_scale_particle, "voxel": args.dps_scale_voxel}

    def predicted(atoms_list) -> np.ndarray:
        batch = StructureBatch.from_atoms(atoms_list)
        with torch.no_grad():
            return forward.mean_spectrum(
                batch.frac_coords.float(), batch.numbers, batch.mask, batch.cell.float()
            ).numpy()

    rng = np.random.default_rng(args.seed)
    results: dict = {"settings": settings, "feff_site_draw": SITE_DRAW, "targets": {}, "runs": []}
    curves: dict = {"r": None, "target_g": {}, "g": {}, "spectra": {}}
    if previous:
        results["runs"], curves = previous[0]["runs"], previous[1]
        timings = previous[0].get("timings", {})
        started -= timings.get("total_s", 0.0)
        print(f"resuming {out}: {len(results['runs'])} runs already there are kept", flush=True)
    done = {run_key(r) for r in results["runs"]}
    setting = "target" if args.density is None else f"{args.density:g}" if args.density != "auto" else "auto"
    for i, (atoms, spectrum, site_spectra, site_mask) in targets.items():
        g_ref, _ = structure_rdf(StructureBatch.from_atoms([atoms]))
        labelled = np.flatnonzero(site_mask)
        floor = [
            rel_l2(site_spectra[rng.choice(labelled, args.feff_sites, replace=False)].mean(0), spectrum)
            for _ in range(200)
        ]
        results["targets"][i] = {
            "n_atoms": len(atoms),
            "density": mass_density(atoms),
            **{f"{k}_fraction": v for k, v in sp_fractions([atoms]).items()},
            "forward_rel_l2": rel_l2(predicted([atoms])[0], spectrum),
            "feff_floor_rel_l2_mean": float(np.mean(floor)),
            "feff_floor_rel_l2_p90": float(np.quantile(floor, 0.9)),
        }
        curves["target_g"][i] = g_ref[0, 0].tolist()
        curves["spectra"][f"target {i}"] = spectrum.tolist()

    for kind in args.models:
        t = time.time()
        given, trained = getattr(args, f"{kind}_ckpt"), ckpt_dir / f"{kind}.ckpt"
        path = (
            Path(given)
            if given
            else trained
            if previous and trained.exists()
            else train_prior(kind, args.data, args.prior_steps, ckpt_dir)
        )
        timings[f"train_{kind}_s"] = time.time() - t
        model = load_model(path, base=DiffusionModule)
        steps, sampler = (args.particle_steps, "em") if kind == "particle" else (args.voxel_steps, "ddim")
        scan_pool = None
        if args.density == "auto":  # one unconditional pool per model serves every target's scan
            t = time.time()
            scan_pool = density_scan_pool(model, forward, args, data_density_range(args.data), steps, sampler)
            timings[f"density_scan_{kind}_s"] = time.time() - t
        for i, (atoms, spectrum, _, _) in targets.items():
            target = torch.as_tensor(spectrum, dtype=torch.float32)
            scan = choose_density(*scan_pool, spectrum) if scan_pool is not None else None
            # g/cm³ of the requested atoms: the scan's choice, the given density, or the target's own
            cell_density = scan.best if scan else (args.density or results["targets"][i]["density"])
            if args.n_atoms or args.density:  # a cubic cell of the size asked for at that density
                n_atoms = args.n_atoms or len(atoms)
                cell = cubic_cell(n_atoms, cell_density, {6: 1.0})
            else:  # the target's own cell and atom count
                n_atoms, cell = len(atoms), np.asarray(atoms.cell[:])
            template = model.sample_template(args.samples, cond=target, target=target, cell=cell, n_atoms=n_atoms)
            runs_here = [
                (mode, rho if "dps" in mode else 0.0)
                for mode in args.modes
                for rho in (guidance_rhos[kind] if "dps" in mode else [0.0])
            ]
            for mode, rho in runs_here:
                if (kind, str(i), mode, float(rho), setting) in done:
                    continue
                cfg = args.cfg_scale if "cfg" in mode else 0.0
                posterior = SpectrumGuidance(forward, rho) if "dps" in mode else None
                t = time.time()
                samples = model.sample(
                    template,
                    batch_size=args.samples,
                    steps=steps,
                    sampler=sampler,
                    guidance_scale=cfg,
                    seed=args.seed + i,
                    progress=False,
                    posterior=posterior,
                )
                seconds = time.time() - t
                raw, raw_samples = {}, samples
                if args.relax:
                    raw = {
                        "raw_min_distance_mean": float(np.nanmean(min_distances(samples))),
                        **{f"raw_{k}_fraction": v for k, v in sp_fractions(samples).items()},
                    }
                    t = time.time()
                    samples, energies = relax_samples(samples, args.relax)
                    raw.update(relax_seconds=time.time() - t, relaxed_energy_per_atom=float(np.nanmean(energies)))
                batch = StructureBatch.from_atoms(samples)
                pred = predicted(samples) if batch.mask.any() else np.full((len(samples), len(energy)), np.nan)
                g, valid = structure_rdf(batch)
                g_mean = g[:, 0][valid[:, 0]].mean(0) if valid.any() else torch.zeros_like(g[0, 0])
                dists = min_distances(samples)
                run = {
                    "model": kind,
                    "target": i,
                    "mode": mode,
                    "cfg_scale": cfg,
                    "cell_density": cell_density,
                    "density_setting": setting,
                    **({"density_scan": scan.as_dict()} if scan else {}),
                    "dps_scale": rho,
                    "sample_seconds": seconds,
                    "n_atoms_mean": float(np.mean([len(a) for a in samples])),
                    "density_mean": float(np.mean([mass_density(a) for a in samples])),  # g/cm³ the samples hold
                    "min_distance_mean": float(np.nanmean(dists)),
                    **{f"{k}_fraction": v for k, v in sp_fractions(batch).items()},
                    "rdf_l1": float(rdf_l1(g_mean, torch.as_tensor(curves["target_g"][i]), 6.0 / g.shape[-1])),
                    "forward_rel_l2_per_sample": [rel_l2(p, spectrum) for p in pred],
                    **raw,
                }
                run["forward_rel_l2"] = float(np.mean(run["forward_rel_l2_per_sample"]))
                write_extxyz_atomic(sample_file(out, kind, run), list(samples))  # to be scored again later
                if args.relax:
                    write_extxyz_atomic(sample_file(out, kind, run, raw=True), list(raw_samples))
                feff = []
                for k, a in enumerate(samples[: args.feff_structures]):
                    if len(a) < args.feff_sites:
                        continue
                    sites = feff_sites(len(a), args.feff_sites, args.seed, i, k)
                    with tempfile.TemporaryDirectory(prefix="gcd-guided-") as work:
                        t = time.time()
                        spectra, errors = feff_site_spectra(a, sites, energy, Path(work))
                        timings["feff_s"] = timings.get("feff_s", 0.0) + time.time() - t
                    entry = {"sample": k, "sites": sites.tolist(), "errors": errors}
                    if len(spectra):
                        entry["feff_rel_l2"] = rel_l2(spectra.mean(0), spectrum)
                        entry["feff_mean_spectrum"] = spectra.mean(0).tolist()
                        entry["feff_sites_used"] = len(spectra)
                        entry["forward_same_sites_rel_l2"] = rel_l2(forward_sites(forward, a, sites).mean(0), spectrum)
                        curves["spectra"][f"{kind} {curve_label(run)} target {i} FEFF"] = spectra.mean(0).tolist()
                    feff.append(entry)
                run["feff"] = feff
                pooled = [(e["feff_mean_spectrum"], e["feff_sites_used"]) for e in feff if "feff_mean_spectrum" in e]
                if pooled:  # every FEFF site of the run's samples together: the run's spectrum by FEFF
                    mean = np.average([m for m, _ in pooled], axis=0, weights=[n for _, n in pooled])
                    run["feff_pooled_rel_l2"] = rel_l2(mean, spectrum)
                    run["feff_pooled_sites"] = int(sum(n for _, n in pooled))
                results["runs"].append(run)
                curves["g"][f"{kind} {curve_label(run)} target {i}"] = g_mean.tolist()
                curves["spectra"][f"{kind} {curve_label(run)} target {i} forward"] = np.nanmean(pred, 0).tolist()
                curves["r"] = np.linspace(0, 6.0, g.shape[-1] + 1)[:-1].tolist()
                print(
                    json.dumps({k: v for k, v in run.items() if k != "forward_rel_l2_per_sample"}),
                    file=sys.stderr,
                    flush=True,
                )
                results["timings"] = {**timings, "total_s": time.time() - started}
                # curves first: a kill between the two writes only repeats this run on resume
                write_json(out / "curves.json", curves)
                write_json(out / "results.json", results)
    write_json(out / "curves.json", curves)
    write_json(out / "results.json", results)
    plot(results, curves, energy, out / "guided.png")
    print(json.dumps(summary(results), indent=1))
    return 0


def forward_sites(forward, atoms, sites) -> np.ndarray:
    from lightning_gcd.structures import StructureBatch

    batch = StructureBatch.from_atoms([atoms])
    with torch.no_grad():
        per_atom = forward(batch.frac_coords.float(), batch.numbers, batch.mask, batch.cell.float())[0]
    return per_atom[torch.as_tensor(sites)].numpy()


def merge(dirs: list[Path], data: str, out: Path) -> int:
    """Join the ``results.json``/``curves.json`` of separate runs (same targets) into ``out``, replot."""
    from datamodules.h5format import AtomsH5

    parts = [(json.loads((d / "results.json").read_text()), json.loads((d / "curves.json").read_text())) for d in dirs]
    results, curves = parts[0]
    for other, other_curves in parts[1:]:
        if set(other["targets"]) != set(results["targets"]):
            raise SystemExit(
                f"--merge: the runs have different targets ({sorted(results['targets'])} vs {sorted(other['targets'])})"
            )
        results["runs"] += other["runs"]
        seen = [
            (r["model"], r["mode"], r.get("dps_scale", 0.0), str(r["target"]), r.get("density_setting"))
            for r in results["runs"]
        ]
        if len(set(seen)) != len(seen):
            raise SystemExit(
                "--merge: two runs hold the same model, mode, ρ, density setting and target; merge one of them only"
            )
        for key in ("g", "spectra"):
            curves[key].update(other_curves[key])
    results["merged_from"] = [str(d) for d in dirs]
    with AtomsH5(data) as h5:
        energy = np.asarray(h5.attrs["meta_xanes_energy"], dtype=np.float64)
    write_json(out / "results.json", results)
    write_json(out / "curves.json", curves)
    plot(results, curves, energy, out / "guided.png")
    print(json.dumps(summary(results), indent=1))
    return 0


def density_tag(run: dict) -> str:
    """`` @auto`` or `` @2.5`` for runs sampled at a density other than the target's own (``--density``)."""
    setting = run.get("density_setting", "target")
    return "" if setting == "target" else f" @{setting}"


def curve_label(run: dict) -> str:
    """A run's mode and density setting, with its DPS ρ for the DPS modes (``dps @auto ρ400``): the key of
    its curves."""
    mode = run["mode"] + density_tag(run)
    return f"{mode} ρ{run['dps_scale']:g}" if "dps" in run["mode"] else mode


def run_labels(runs: list[dict]) -> list[str]:
    """Each run's mode as the tables show it: with its ρ only where that model ran DPS at several ρ."""
    swept = {
        model
        for model in {r["model"] for r in runs}
        if len({r["dps_scale"] for r in runs if r["model"] == model and "dps" in r["mode"]}) > 1
    }
    return [curve_label(r) if r["model"] in swept else r["mode"] + density_tag(r) for r in runs]


def summary(results: dict) -> dict:
    """Mean over targets per (model, mode[, ρ]); ``sp3_gap``/``sp_gap``: mean |sp3 − the target's sp3| (sp
    likewise); ``hybridization_l1``: mean of Σ |fraction − the target's| over sp, sp2 and sp3."""
    table: dict = {}
    targets = {str(i): target for i, target in results["targets"].items()}  # int keys in memory, str in JSON
    for run, label in zip(results["runs"], run_labels(results["runs"]), strict=False):
        row = table.setdefault(f"{run['model']} {label}", {})
        for key in (
            "forward_rel_l2",
            "rdf_l1",
            "sp_fraction",
            "sp2_fraction",
            "sp3_fraction",
            "n_atoms_mean",
            "min_distance_mean",
        ):
            row.setdefault(key, []).append(run[key])
        target = targets[str(run["target"])]
        gaps = {k: abs(run[f"{k}_fraction"] - target[f"{k}_fraction"]) for k in ("sp", "sp2", "sp3")}
        row.setdefault("sp3_gap", []).append(gaps["sp3"])
        row.setdefault("sp_gap", []).append(gaps["sp"])
        row.setdefault("hybridization_l1", []).append(sum(gaps.values()))
        if "feff_pooled_rel_l2" in run:
            row.setdefault("feff_pooled_rel_l2", []).append(run["feff_pooled_rel_l2"])
        for entry in run["feff"]:
            if "feff_rel_l2" in entry:
                row.setdefault("feff_rel_l2", []).append(entry["feff_rel_l2"])
    return {name: {k: float(np.nanmean(v)) for k, v in row.items()} for name, row in table.items()}


def plot(results: dict, curves: dict, energy: np.ndarray, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = summary(results)
    models = sorted({r["model"] for r in results["runs"]})
    labels = run_labels(results["runs"])
    columns = sorted(
        set(labels),
        key=lambda lab: (MODES.index(lab.split(" ")[0]), float(lab.split("ρ")[-1]) if "ρ" in lab else 0, lab),
    )
    fig, axes = plt.subplots(1, 4, figsize=(max(21, 12 + 1.5 * len(columns)), 4.5))
    x = np.arange(len(columns))
    for k, model in enumerate(models):
        axes[0].bar(
            x + 0.4 * k,
            [table.get(f"{model} {m}", {}).get("forward_rel_l2", np.nan) for m in columns],
            0.4,
            label=f"{model} (forward model)",
        )
        feff = [
            table.get(f"{model} {m}", {}).get(
                "feff_pooled_rel_l2", table.get(f"{model} {m}", {}).get("feff_rel_l2", np.nan)
            )
            for m in columns
        ]
        axes[0].scatter(
            x + 0.4 * k,
            feff,
            color="k",
            marker="x",
            zorder=3,
            label="FEFF (the run's sites pooled)" if k == 0 else None,
        )
    axes[0].set_xticks(x + 0.2, columns, fontsize=7)
    axes[0].set_ylabel("spectrum relative L2 vs target")
    axes[0].legend(fontsize=7)
    first = next(iter(results["targets"]))
    axes[1].plot(curves["r"], curves["target_g"][first], "k", lw=2, label=f"target {first}")
    for key, g in curves["g"].items():
        if key.endswith(f"target {first}"):
            axes[1].plot(curves["r"], g, lw=1, label=key.rsplit(" target", 1)[0])
    axes[1].set_xlabel("r (Å)")
    axes[1].set_ylabel("g(r)")
    axes[1].legend(fontsize=6)
    axes[2].plot(energy, curves["spectra"][f"target {first}"], "k", lw=2, label="target (FEFF)")
    for key, s in curves["spectra"].items():
        if key.endswith(f"target {first} forward"):
            axes[2].plot(energy, s, lw=1, label=key.replace(f" target {first} forward", ""))
    axes[2].set_xlabel("energy (eV, FEFF scale)")
    axes[2].set_ylabel("mean predicted XANES")
    axes[2].legend(fontsize=6)
    # sp3 fraction per target: does guidance move it toward the target's?
    markers = dict(zip(MODES, "osD^", strict=False))
    for k, (i, target) in enumerate(results["targets"].items()):
        axes[3].scatter(
            [k], [target["sp3_fraction"]], color="k", marker="_", s=400, zorder=3, label="target" if k == 0 else None
        )
        for j, model in enumerate(models):
            for run, label in zip(results["runs"], labels, strict=False):
                if run["model"] == model and str(run["target"]) == str(i):
                    colour = f"C{j}" if len(models) > 1 else f"C{columns.index(label)}"  # one model: by setting
                    axes[3].scatter(
                        [k + 0.15 * (2 * j - 1)],
                        [run["sp3_fraction"]],
                        color=colour,
                        marker=markers[run["mode"]],
                        label=f"{model} {label}" if k == 0 else None,
                    )
    axes[3].set_xticks(range(len(results["targets"])), [f"target {i}" for i in results["targets"]])
    axes[3].set_ylabel("sp3 fraction")
    axes[3].legend(fontsize=6)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
