"""How well does ``--density auto`` read a structure's density from its spectrum?

For every structure of a split (default: test) of an a-C file, the target is its mean FEFF spectrum and
the truth its mass density. Per model, one pool of unconditional samples of the training size at each
candidate density (relaxed with ``--relax``) is scored by the forward model against each target
(``lightning_gcd.spectra.density_scan``, as ``gcd sample --density auto`` does), and the chosen density is compared
with the true one. Two references bracket it:

* ``no information``: every target gets the training cells' mean density (what a user without a density
  samples by default);
* ``data nearest mean``: the density whose training cells' mean FEFF spectrum lies closest to the target
  (needs the training data at sampling time, which ``--density auto`` does not: what the spectra allow).

Writes ``results.json`` (every choice and scan) and ``density_scan.png`` (chosen against true density, and
the scan curves of a few targets) to ``--out``.

    python experiments/amorphous_carbon/density_scan.py --data experiments/amorphous_carbon/data/a_c_300.h5 \\
        --particle-ckpt runs/g300_p/checkpoints/particle.ckpt --forward-ckpt runs/g300_p/checkpoints/forward.ckpt \\
        --relax 500 --out experiments/amorphous_carbon/results/density_scan
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from lightning_gcd.io import write_json_atomic
from lightning_gcd.runner.results import save_figure
from lightning_gcd.studies.amorphous_carbon import data_density_range, density_scan_pool


def nearest_mean_density(train_spectra: np.ndarray, train_densities: np.ndarray, target: np.ndarray) -> float:
    """The density (of the training cells' distinct densities) whose mean spectrum is closest to ``target``."""
    from lightning_gcd.spectra.density_scan import relative_l2

    levels = np.unique(np.round(train_densities, 2))
    means = np.stack([train_spectra[np.isclose(train_densities, rho, atol=0.01)].mean(0) for rho in levels])
    return float(levels[np.argmin(relative_l2(means, target))])


def figures(chosen: np.ndarray, truth: np.ndarray) -> dict:
    """Mean absolute and signed error (g/cm³) and the share of choices within 0.25 g/cm³ of the truth."""
    error = chosen - truth
    return {
        "mae": float(np.abs(error).mean()),
        "bias": float(error.mean()),
        "within_0.25": float(np.mean(np.abs(error) <= 0.25 + 1e-9)),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--split", default="test")
    parser.add_argument("--particle-ckpt")
    parser.add_argument("--voxel-ckpt")
    parser.add_argument("--forward-ckpt", required=True)
    parser.add_argument(
        "--relax",
        type=int,
        default=0,
        metavar="STEPS",
        help="relax the scan's samples (Tersoff, fixed cell, at most STEPS steps) before scoring",
    )
    parser.add_argument("--density-range", type=float, nargs=2, default=None, metavar=("LOW", "HIGH"))
    parser.add_argument("--density-scan-points", type=int, default=9)
    parser.add_argument("--density-scan-samples", type=int, default=4)
    parser.add_argument("--particle-steps", type=int, default=64)
    parser.add_argument("--voxel-steps", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    if not (args.particle_ckpt or args.voxel_ckpt):
        raise SystemExit("give --particle-ckpt and/or --voxel-ckpt")

    from datamodules.h5format import AtomsH5
    from lightning_gcd.models.base import DiffusionModule
    from lightning_gcd.models.loading import load_model
    from lightning_gcd.spectra.density_scan import choose_density
    from lightning_gcd.spectra.forward_model import SpectrumModel
    from lightning_gcd.structures import mass_density

    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with AtomsH5(args.data) as data:

        def spectra_and_densities(split: str) -> tuple[list[int], np.ndarray, np.ndarray]:
            ids = [int(i) for i in data.split(split)]
            return (
                ids,
                np.array([data.structure_property("xanes", i) for i in ids], dtype=np.float64),
                np.array([mass_density(data.atoms(i)) for i in ids]),
            )

        target_ids, targets, truth = spectra_and_densities(args.split)
        _, train_spectra, train_densities = spectra_and_densities("train")
    forward = load_model(args.forward_ckpt, base=SpectrumModel).float()
    results: dict = {"settings": vars(args), "targets": target_ids, "true_density": truth.tolist(), "methods": {}}
    nearest = np.array([nearest_mean_density(train_spectra, train_densities, t) for t in targets])
    no_info = np.full_like(truth, float(train_densities.mean()))
    results["methods"]["no information (training mean)"] = {"chosen": no_info.tolist(), **figures(no_info, truth)}
    results["methods"]["data nearest mean"] = {"chosen": nearest.tolist(), **figures(nearest, truth)}
    for kind in ("particle", "voxel"):
        path = getattr(args, f"{kind}_ckpt")
        if not path:
            continue
        model = load_model(path, base=DiffusionModule)
        steps, sampler = (args.particle_steps, "em") if kind == "particle" else (args.voxel_steps, "ddim")
        started = time.time()
        densities, spectra = density_scan_pool(model, forward, args, data_density_range(args.data), steps, sampler)
        scans = [choose_density(densities, spectra, t) for t in targets]
        chosen = np.array([s.best for s in scans])
        results["methods"][f"{kind} scan"] = {
            "chosen": chosen.tolist(),
            **figures(chosen, truth),
            "scan_seconds": time.time() - started,
            "scans": [s.as_dict() for s in scans],
        }
        print(json.dumps({kind: figures(chosen, truth), "seconds": time.time() - started}), file=sys.stderr, flush=True)
    write_json_atomic(out / "results.json", results, keep_nan=True, indent=1)
    plot(results, out / "density_scan.png")
    print(
        json.dumps(
            {
                name: {k: v for k, v in m.items() if k in ("mae", "bias", "within_0.25")}
                for name, m in results["methods"].items()
            },
            indent=1,
        )
    )
    return 0


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    truth = np.asarray(results["true_density"])
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    rng = np.random.default_rng(0)
    jitter = rng.uniform(-0.06, 0.06, len(truth))
    lo, hi = truth.min() - 0.2, truth.max() + 0.2
    axes[0].plot([lo, hi], [lo, hi], "k:", lw=1)
    for k, (name, method) in enumerate(results["methods"].items()):
        axes[0].scatter(truth + jitter + 0.03 * k, method["chosen"], s=14, label=f"{name} (MAE {method['mae']:.2f})")
    axes[0].set_xlabel("true density (g/cm³)")
    axes[0].set_ylabel("chosen density (g/cm³)")
    axes[0].legend(fontsize=7)
    scans = next((m["scans"] for m in results["methods"].values() if "scans" in m), [])
    shown = {}
    for rho, scan in zip(truth, scans, strict=False):  # one target per true density
        shown.setdefault(round(float(rho), 2), scan)
    for rho, scan in sorted(shown.items()):
        axes[1].plot(scan["densities"], scan["mean_errors"], marker="o", ms=3, label=f"target at {rho:g} g/cm³")
        axes[1].axvline(scan["best"], color=axes[1].lines[-1].get_color(), lw=0.8, ls="--")
    axes[1].set_xlabel("candidate density (g/cm³)")
    axes[1].set_ylabel("forward-model spectrum rel. L2 vs target")
    axes[1].set_title("scan curves (dashed: chosen)", fontsize=9)
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
