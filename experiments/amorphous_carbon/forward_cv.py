"""K-fold cross-validation of the spectrum forward model over *structures* (a test split of 2 cells is too
small to say anything). Each fold trains ``SpectrumModel`` from scratch on the other folds' structures and
evaluates on its own; folds interleave structures sorted by density, so every fold sees every density.

    python experiments/amorphous_carbon/forward_cv.py --data data/a_c_small.h5 --folds 5 --epochs 200 \
        --out experiments/amorphous_carbon/results/forward_cv.json

``--evaluate CKPT`` instead scores a trained forward model on one split of the file (``--split``, default
test), e.g. the model ``guided.py`` trained:

    python experiments/amorphous_carbon/forward_cv.py --data runs/ac_now.h5 \
        --evaluate runs/g512_p/checkpoints/forward.ckpt

Prints and writes JSON: per fold and pooled over folds (site-weighted) the per-atom relative L2
(‖pred − FEFF‖/‖FEFF‖), the MAE, the per-structure mean-spectrum relative L2 and the same per-atom error of
the trivial baseline that predicts the training mean spectrum for every atom. ``--evaluate`` also reports
``hybridization_contrast``: whether the model reproduces FEFF's difference between the mean spectra of sp3
and sp2 (and sp2 and sp) sites.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from lightning_gcd.io import write_text_atomic
from lightning_gcd.runner.trainer import build_trainer


def fold_indices(densities: np.ndarray, folds: int) -> list[np.ndarray]:
    order = np.argsort(densities, kind="stable")
    return [np.sort(order[k::folds]) for k in range(folds)]


def spectrum_datamodule(path: str):
    """The forward model's view of an a-C file (per-atom spectra and their mask), set up: one definition
    for training and scoring, so that a score is always on the data the model was trained to read."""
    from datamodules.datamodule import AtomsDataModule

    dm = AtomsDataModule(path, view="particle", batch_size=4, atom_properties=["xanes", "xanes_mask"])
    dm.setup()
    return dm


def run_fold(path: str, train: np.ndarray, test: np.ndarray, epochs: int, seed: int, model_args: dict) -> dict:
    import lightning as L

    from lightning_gcd.spectra.forward_model import SpectrumModel

    L.seed_everything(seed, verbose=False)
    dm = spectrum_datamodule(path)
    dm.splits = {"train": train, "val": test, "test": test}
    model = SpectrumModel(**model_args)
    # validation never runs (check_val_every_n_epoch beyond any budget); its batches at Lightning's default
    trainer = build_trainer(max_epochs=epochs, check_val_every_n_epoch=10**6, limit_val_batches=1.0)
    trainer.fit(model, dm)
    trainer.test(model, dm, verbose=False)
    return dict(model.last_metrics)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="data/a_c_small.h5")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--out", default=None)
    parser.add_argument("--evaluate", metavar="CKPT", help="score this trained forward model on --split instead")
    parser.add_argument("--split", default="test", help="the split --evaluate scores")
    args = parser.parse_args(argv)
    if args.evaluate:
        return report(evaluate(args.evaluate, args.data, args.split), args.out)

    from datamodules.h5format import AtomsH5

    with AtomsH5(args.data) as data:
        densities = np.asarray(data.structure_property("density"), dtype=np.float64)
    everything = np.arange(len(densities))
    model_args = {"hidden": args.hidden, "layers": args.layers, "lr": args.lr, "weight_decay": 1e-4}
    results, start = [], time.time()
    for k, test in enumerate(fold_indices(densities, args.folds)):
        train = np.setdiff1d(everything, test)
        metrics = run_fold(args.data, train, test, args.epochs, args.seed + k, model_args)
        metrics.update(fold=k, test_structures=test.tolist())
        results.append(metrics)
        print(json.dumps(metrics), file=sys.stderr, flush=True)
    sites = np.asarray([r["n_sites"] for r in results])
    pooled = {
        name: float(np.sum([r[name] * r["n_sites"] for r in results]) / sites.sum())
        for name in ("spectrum_rel_l2", "spectrum_mae", "baseline_rel_l2")
    }
    for name in ("mean_spectrum_rel_l2", "baseline_mean_rel_l2"):  # per structure (equal folds)
        pooled[name] = float(np.mean([r[name] for r in results]))
    summary = {
        "data": args.data,
        "folds": args.folds,
        "epochs": args.epochs,
        "model": model_args,
        "n_structures": int(len(densities)),
        "pooled": pooled,
        "per_fold": results,
        "wall_seconds": round(time.time() - start, 1),
    }
    return report(summary, args.out)


def evaluate(ckpt: str, path: str, split: str) -> dict:
    """The same metrics for a trained forward model on one split of ``path``."""

    from lightning_gcd.models.loading import load_model
    from lightning_gcd.spectra.forward_model import SpectrumModel

    model = load_model(ckpt, base=SpectrumModel).float()
    dm = spectrum_datamodule(path)
    if split not in dm.splits or len(dm.splits[split]) == 0:
        raise SystemExit(f"--split {split}: {path} has no structures in that split")
    dm.splits = {**dm.splits, "test": dm.splits[split]}
    trainer = build_trainer()
    trainer.test(model, dm, verbose=False)
    return {
        "data": path,
        "checkpoint": ckpt,
        "split": split,
        "structures": [int(i) for i in dm.splits[split]],
        "metrics": dict(model.last_metrics),
        "hybridization_contrast": hybridization_contrast(model, path, dm.splits[split]),
    }


def hybridization_contrast(model, path: str, structures) -> dict:
    """Does the forward model see what FEFF sees between hybridizations? Over the labelled sites of
    ``structures``, the difference of the mean spectra of (n+1)- and n-coordinated carbon atoms (C-C bonds
    < 1.85 Å: sp3 − sp2 and sp2 − sp) by FEFF and by the model, compared: cosine, norm ratio (model / FEFF) and
    relative L2 of the model's difference; ``contrast_over_site_error``: the FEFF difference's norm over the
    model's mean per-site error norm. Spectrum guidance can only move hybridization if the model gets these
    right."""
    import torch

    from datamodules.h5format import AtomsH5
    from lightning_gcd.metrics.coordination import CARBON_CUTOFF, coordination_numbers
    from lightning_gcd.structures import StructureBatch

    feff, pred, coordination = [], [], []
    with AtomsH5(path) as data:
        for i in structures:
            atoms, i = data.atoms(int(i)), int(i)
            mask = np.asarray(data.atom_property("xanes_mask", i), bool)
            batch = StructureBatch.from_atoms([atoms])
            with torch.no_grad():
                per_atom = model(batch.frac_coords.float(), batch.numbers, batch.mask, batch.cell.float())[0].numpy()
            feff.append(np.asarray(data.atom_property("xanes", i))[mask])
            pred.append(per_atom[mask])
            coordination.append(coordination_numbers(batch, CARBON_CUTOFF)[0].numpy()[mask])  # as sp_fractions counts
    feff, pred, coordination = np.concatenate(feff), np.concatenate(pred), np.concatenate(coordination)
    site_error = float(np.mean(np.linalg.norm(pred - feff, axis=1)))
    out = {}
    for name, low, high in (("sp3-sp2", 3, 4), ("sp2-sp", 2, 3)):
        if not ((coordination == low).any() and (coordination == high).any()):
            continue
        d_feff = feff[coordination == high].mean(0) - feff[coordination == low].mean(0)
        d_pred = pred[coordination == high].mean(0) - pred[coordination == low].mean(0)
        norms = float(np.linalg.norm(d_pred) * np.linalg.norm(d_feff))
        out[name] = {
            "sites": [int((coordination == low).sum()), int((coordination == high).sum())],
            "cosine": float(d_pred @ d_feff / norms) if norms > 0 else float("nan"),  # a flat model: none
            "norm_ratio": float(np.linalg.norm(d_pred) / np.linalg.norm(d_feff)),
            "rel_l2": float(np.linalg.norm(d_pred - d_feff) / np.linalg.norm(d_feff)),
            "contrast_over_site_error": float(np.linalg.norm(d_feff) / site_error),
        }
    return out


def report(result: dict, out: str | None) -> int:
    text = json.dumps(result, indent=1)
    print(text)
    if out:
        write_text_atomic(out, text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
