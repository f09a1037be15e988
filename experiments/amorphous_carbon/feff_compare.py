"""Compare two settings of ``guided.py`` runs by their FEFF spectra, with a bootstrap interval.

FEFF runs on a few random sites of each sample, so a run's FEFF error carries the noise of which sites and
which samples were drawn. This script pools every FEFF site that ``guided.py`` ran on the *same* structures
(runs of one setting and target in several ``--out`` folders: the same seed gives the same relaxed samples,
checked by their energy per atom) and compares two settings, A and B, target by target:

* per target and setting, the relative L2 error of the pooled FEFF spectrum (all sites of all samples)
  against the target's spectrum;
* the mean over targets of B − A, and a bootstrap 95% interval of it: the samples of each run (each with
  its FEFF sites' mean and count) are drawn with replacement, per target and setting, ``--resamples`` times.

    python experiments/amorphous_carbon/feff_compare.py \
        --a runs/ga_noinfo:unguided@2.5 runs/gb_noinfo:unguided@2.5 \
        --b runs/ga_auto:dps@auto runs/gb_dps_auto:dps@auto --out results/feff_compare.json

A setting is ``DIR:MODE@DENSITY`` (``DENSITY``: ``auto``, a number as ``guided.py`` labels it, or
``target``); one setting may list several folders. It prints and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from lightning_gcd.io import write_text_atomic


def parse_setting(text: str) -> tuple[Path, str, str]:
    """``DIR:MODE@DENSITY`` -> (folder, mode, density setting)."""
    folder, sep, label = text.rpartition(":")
    mode, at, density = label.partition("@")
    if not sep or not at or not mode or not density:
        raise SystemExit(f"{text!r}: expected DIR:MODE@DENSITY, e.g. runs/gb_auto:dps@auto")
    return Path(folder), mode, density


def sample_entries(settings: list[str]) -> tuple[dict, dict]:
    """Per target: the FEFF entries (mean spectrum of a sample's sites, site count, sample index) of every
    folder of one setting, and the targets' spectra. Raises SystemExit where the folders' runs of a target
    do not hold the same structures (different relaxed energy per atom)."""
    entries: dict[str, list[tuple[np.ndarray, int, int]]] = {}
    energies: dict[str, float] = {}
    targets: dict[str, np.ndarray] = {}
    for text in settings:
        folder, mode, density = parse_setting(text)
        results = json.loads((folder / "results.json").read_text())
        curves = json.loads((folder / "curves.json").read_text())
        runs = [r for r in results["runs"] if r["mode"] == mode and r.get("density_setting", "target") == density]
        if not runs:
            raise SystemExit(f"{folder}: no {mode} run at density setting {density}")
        for run in runs:
            key = str(run["target"])
            targets[key] = np.asarray(curves["spectra"][f"target {key}"], dtype=np.float64)
            energy = run.get("relaxed_energy_per_atom")
            if key in energies and energy is not None and abs(energies[key] - energy) > 1e-6:
                raise SystemExit(
                    f"{folder}: target {key}'s {mode} samples are not those of the other folders "
                    f"(energy {energy:.5f} against {energies[key]:.5f} eV/atom)"
                )
            if energy is not None:
                energies[key] = energy
            entries.setdefault(key, []).extend(
                (np.asarray(e["feff_mean_spectrum"]), e["feff_sites_used"], e["sample"])
                for e in run["feff"]
                if "feff_mean_spectrum" in e
            )
    return entries, targets


def pooled_error(entries: list[tuple[np.ndarray, int, int]], target: np.ndarray) -> float:
    """Relative L2 of the site-weighted mean of ``entries`` against ``target``."""
    spectra = np.stack([s for s, _, _ in entries])
    weights = np.array([n for _, n, _ in entries], dtype=np.float64)
    mean = (spectra * weights[:, None]).sum(0) / weights.sum()
    return float(np.linalg.norm(mean - target) / np.linalg.norm(target))


def resample_by_sample(entries: list, rng: np.random.Generator) -> list:
    """The entries of samples drawn with replacement (a sample keeps all its FEFF sites, from every folder)."""
    samples = sorted({k for _, _, k in entries})
    drawn = rng.choice(samples, len(samples), replace=True)
    return [e for k in drawn for e in entries if e[2] == k]


def compare(a: list[str], b: list[str], resamples: int = 2000, seed: int = 0) -> dict:
    """Per-target pooled FEFF errors of settings A and B, the mean of B − A over the targets both hold and
    its bootstrap 95% interval."""
    entries_a, targets = sample_entries(a)
    entries_b, targets_b = sample_entries(b)
    keys = sorted(set(entries_a) & set(entries_b), key=int)
    if not keys:
        raise SystemExit("--a and --b share no target")
    targets.update(targets_b)
    per_target = {
        k: {
            "a": pooled_error(entries_a[k], targets[k]),
            "b": pooled_error(entries_b[k], targets[k]),
            "sites_a": int(sum(n for _, n, _ in entries_a[k])),
            "sites_b": int(sum(n for _, n, _ in entries_b[k])),
        }
        for k in keys
    }
    rng = np.random.default_rng(seed)
    diffs = [
        np.mean(
            [
                pooled_error(resample_by_sample(entries_b[k], rng), targets[k])
                - pooled_error(resample_by_sample(entries_a[k], rng), targets[k])
                for k in keys
            ]
        )
        for _ in range(resamples)
    ]
    mean_a = float(np.mean([v["a"] for v in per_target.values()]))
    mean_b = float(np.mean([v["b"] for v in per_target.values()]))
    return {
        "a": a,
        "b": b,
        "targets": per_target,
        "mean_a": mean_a,
        "mean_b": mean_b,
        "mean_b_minus_a": mean_b - mean_a,
        "b_lower_on": int(sum(v["b"] < v["a"] for v in per_target.values())),
        "bootstrap_95": [float(np.quantile(diffs, 0.025)), float(np.quantile(diffs, 0.975))],
        "resamples": resamples,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--a", nargs="+", required=True, metavar="DIR:MODE@DENSITY", help="the reference setting")
    parser.add_argument(
        "--b", nargs="+", required=True, metavar="DIR:MODE@DENSITY", help="the setting compared with it"
    )
    parser.add_argument("--resamples", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="also write the JSON here")
    args = parser.parse_args(argv)
    result = compare(args.a, args.b, args.resamples, args.seed)
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        write_text_atomic(args.out, text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
