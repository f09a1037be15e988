"""``WandbStructureReport``: charts, a table of rendered samples and an extxyz artifact in W&B.

After every sampled validation (global rank 0 only; nothing happens without a ``WandbLogger`` in
``trainer.loggers`` or when the model has not sampled), one ``run.log`` call adds:

``val/rdf``                    line chart: g(r) of the samples and of the reference (x = r in Å)
``val/coordination/<Z>``       bar chart per species: fraction of atoms with k neighbours, samples and
                               reference side by side (the scalars ``val/coordination/<Z>/<k>`` are
                               logged by the model itself)
``val/n_atoms_hist``           bar chart: fraction of structures per atom count, samples and reference
``val/figures/{rdf,coordination,n_atoms}``  the PNGs of ``lightning_gcd.metrics.plots`` (``log_figures``)
``val/samples``                ``wandb.Table``: index, n_atoms, formula, min_distance (Å, periodic images
                               included; empty when no pair is within the g(r) range), a picture
``trainer/global_step``        the x axis

and, with ``log_artifact``, the samples as an extxyz ``wandb.Artifact`` of type ``samples`` named
``samples-<run id>`` (one version per validation, aliases ``epoch-<E>`` and ``latest``).

Steps: Lightning's ``WandbLogger.log_metrics`` never passes ``step=`` to ``wandb.log``; it adds the key
``trainer/global_step`` and declares it the x axis of every key (``define_metric("*",
step_metric="trainer/global_step")``). W&B's own ``_step`` then just counts ``log`` calls. Passing
``step=trainer.global_step`` here would lag behind that counter and W&B would drop the data, so this
callback logs the same way: no ``step=``, ``trainer/global_step`` in the payload, with the value
Lightning gave the ``val/*`` scalars of the same validation (``fit_loop.epoch_loop._batches_that_stepped``:
during ``fit`` the validation runs before that counter is increased for the current batch, so it is
``trainer.global_step - 1`` there). The charts then sit at the same x as ``val/rdf_l1`` and the axis
never goes backwards (``trainer.global_step`` would, by one, at the next ``train/loss_epoch`` row).

Usage in a config (next to a ``WandbLogger``)::

    trainer:
      logger:
        class_path: lightning.pytorch.loggers.WandbLogger
        init_args: {project: gcd}
      callbacks:
        - class_path: lightning_gcd.callbacks.WandbStructureReport
          init_args: {log_samples: 8, log_artifact: true}
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import WandbLogger

from lightning_gcd.callbacks.metrics_history import NewSamples, write_extxyz_atomic

__all__ = ["WandbStructureReport", "render_structure", "min_distances", "find_wandb_logger", "lightning_log_step"]


def find_wandb_logger(trainer: L.Trainer) -> WandbLogger | None:
    """The first ``WandbLogger`` attached to the trainer, or None."""
    for logger in getattr(trainer, "loggers", None) or []:
        if isinstance(logger, WandbLogger):
            return logger
    return None


def lightning_log_step(trainer: L.Trainer) -> int:
    """The step Lightning's logger connector gives metrics logged now (``log_metrics`` without a step)."""
    try:
        return int(trainer.fit_loop.epoch_loop._batches_that_stepped)
    except AttributeError:  # pragma: no cover - other Lightning versions
        return int(trainer.global_step)


def min_distances(atoms: Sequence[Any], search_radius: float = 6.0) -> list[float]:
    """Per structure, the smallest interatomic distance (Å, periodic images included); inf when no
    pair is closer than ``search_radius`` (e.g. an empty structure)."""
    import torch

    from lightning_gcd.metrics._pairs import as_batch, find_pairs

    atoms = list(atoms)
    if not atoms:
        return []
    batch = as_batch(atoms)
    found = find_pairs(batch, search_radius)
    per = torch.full((len(atoms),), float("inf"), dtype=torch.float64)
    if found.distances.numel():
        per = per.scatter_reduce(0, found.batch.cpu(), found.distances.cpu(), reduce="amin")
    return [float(x) for x in per]


def render_structure(atoms: Any, size_px: int = 240) -> np.ndarray:
    """(H, W, 3) uint8 picture of a periodic structure (``ase.visualize.plot.plot_atoms`` with the unit
    cell, slightly rotated), drawn on a matplotlib Agg canvas (no pyplot, no global state)."""
    from ase.visualize.plot import plot_atoms
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    dpi = 80
    fig = Figure(figsize=(size_px / dpi, size_px / dpi), dpi=dpi)
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_axes((0.02, 0.02, 0.96, 0.96))
    ax.set_axis_off()
    if len(atoms):
        plot_atoms(atoms, ax, radii=0.45, rotation="15x,20y,0z", show_unit_cell=2)
    else:
        ax.text(0.5, 0.5, "no atoms", ha="center", va="center", transform=ax.transAxes)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def _grouped_bar_table(wandb: Any, x: np.ndarray, series: Mapping[str, np.ndarray | None], x_name: str):
    """A ``wandb.Table`` (label, value) with one row per x and series, over the x range in use."""
    used = np.zeros(len(x), dtype=bool)
    for values in series.values():
        if values is not None:
            used |= np.nan_to_num(np.asarray(values, dtype=float)) > 0
    idx = np.flatnonzero(used)
    lo, hi = (int(idx.min()), int(idx.max())) if idx.size else (0, len(x) - 1)
    rows = []
    for i in range(lo, hi + 1):
        for name, values in series.items():
            if values is not None:
                value = float(np.asarray(values, dtype=float)[i])
                rows.append([f"{x_name}={int(x[i])} {name}", value if math.isfinite(value) else 0.0])
    return wandb.Table(columns=["label", "value"], data=rows)


class WandbStructureReport(Callback):
    """Log g(r), coordination and atom-count charts, a table of rendered samples and an extxyz
    artifact to W&B after each sampled validation (see the module docstring for the keys).

    Args:
        log_samples: rows (structures) of the ``val/samples`` table; 0 disables the table.
        log_artifact: also log all samples of the validation as an extxyz artifact (type "samples").
        log_figures: also log the PNG figures of ``lightning_gcd.metrics.plots`` as images.
    """

    def __init__(self, log_samples: int = 8, log_artifact: bool = True, log_figures: bool = True) -> None:
        if int(log_samples) < 0:
            raise ValueError(f"log_samples must be >= 0, got {log_samples}")
        self.log_samples = int(log_samples)
        self.log_artifact = bool(log_artifact)
        self.log_figures = bool(log_figures)
        self._new_samples = NewSamples()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        logger = find_wandb_logger(trainer)
        if logger is None or not self._new_samples(pl_module):
            return
        import wandb

        run = logger.experiment
        step = lightning_log_step(trainer)
        epoch = int(trainer.current_epoch)
        curves = pl_module.last_curves
        payload: dict[str, Any] = {"trainer/global_step": step}
        payload.update(self.curve_charts(wandb, curves))
        with tempfile.TemporaryDirectory(prefix="gcd_wandb_") as tmp:
            if self.log_figures:
                from lightning_gcd.metrics.plots import save_all_plots

                for path in save_all_plots(curves, tmp):
                    payload[f"val/figures/{path.stem}"] = wandb.Image(str(path))
            samples = getattr(pl_module, "last_samples", None)
            atoms = samples.to_atoms() if samples is not None else []
            if atoms and self.log_samples > 0:
                search = (
                    float(np.asarray(curves["r"])[-1] + 0.5 * float(curves.get("dr", 0.0))) if "r" in curves else 6.0
                )
                payload["val/samples"] = self.samples_table(wandb, atoms[: self.log_samples], search)
            run.log(payload)
            if atoms and self.log_artifact:
                global_step = int(trainer.global_step)
                path = write_extxyz_atomic(Path(tmp) / f"samples_epoch{epoch}.extxyz", atoms)
                artifact = wandb.Artifact(
                    f"samples-{run.id}",
                    type="samples",
                    description=f"{len(atoms)} structures generated by {type(pl_module).__name__} "
                    f"at epoch {epoch}, global step {global_step}",
                    metadata={
                        "epoch": epoch,
                        "global_step": global_step,
                        "model": type(pl_module).__name__,
                        "n_structures": len(atoms),
                    },
                )
                artifact.add_file(str(path), name="samples.extxyz")  # copied to W&B's staging area now
                run.log_artifact(artifact, aliases=[f"epoch-{epoch}", "latest"])

    # ------------------------------------------------------------------------------------------------
    @staticmethod
    def curve_charts(wandb: Any, curves: Mapping[str, Any]) -> dict[str, Any]:
        """``val/rdf``, ``val/coordination/<Z>`` and ``val/n_atoms_hist`` charts of a curves dict."""
        from lightning_gcd.metrics.plots import _symbol

        out: dict[str, Any] = {}
        r = np.asarray(curves["r"], dtype=float)
        g = np.nan_to_num(np.asarray(curves["g"], dtype=float))
        g_ref = np.nan_to_num(np.asarray(curves["g_reference"], dtype=float))
        out["val/rdf"] = wandb.plot.line_series(
            xs=r.tolist(), ys=[g.tolist(), g_ref.tolist()], keys=["samples", "reference"], title="g(r)", xname="r (Å)"
        )
        samples = curves.get("coordination") or {}
        reference = curves.get("coordination_reference") or {}
        for z in sorted(set(samples) | set(reference)):
            s, ref = samples.get(z), reference.get(z)
            n_k = len(s) if s is not None else len(ref)
            table = _grouped_bar_table(wandb, np.arange(n_k), {"samples": s, "reference": ref}, "k")
            out[f"val/coordination/{int(z)}"] = wandb.plot.bar(
                table, "label", "value", title=f"{_symbol(int(z))} coordination (fraction of atoms)"
            )
        n = np.asarray(curves["n_atoms"])
        series = {}
        for name, key in (("samples", "n_atoms_hist"), ("reference", "n_atoms_hist_reference")):
            h = np.asarray(curves[key], dtype=float)
            series[name] = h / h.sum() if h.sum() > 0 else None
        if any(v is not None for v in series.values()):
            table = _grouped_bar_table(wandb, n, series, "n")
            out["val/n_atoms_hist"] = wandb.plot.bar(table, "label", "value", title="atoms per structure (fraction)")
        return out

    @staticmethod
    def samples_table(wandb: Any, atoms: Sequence[Any], search_radius: float = 6.0):
        """``wandb.Table`` (index, n_atoms, formula, min_distance, image) of the given structures."""
        dmin = min_distances(atoms, search_radius)
        table = wandb.Table(columns=["index", "n_atoms", "formula", "min_distance", "image"])
        for i, (a, d) in enumerate(zip(atoms, dmin, strict=False)):
            formula = a.get_chemical_formula() if len(a) else ""
            table.add_data(
                i,
                len(a),
                formula,
                d if math.isfinite(d) else None,
                wandb.Image(render_structure(a), caption=f"{i}: {formula or 'empty'}"),
            )
        return table
