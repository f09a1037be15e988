"""PNG figures of ``StructureMetrics.curves()``: g(r) overlay, coordination bars, atom-count histogram.

Figures are drawn on matplotlib's Agg canvas directly (no pyplot, no global backend change), so this
works on headless nodes and inside training loops. Every function takes the curves dict and a path,
writes one PNG and returns the path.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from ase.data import chemical_symbols
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from lightning_gcd.io import atomic_path

__all__ = ["plot_rdf", "plot_coordination", "plot_atom_counts", "save_all_plots"]

SAMPLES_COLOR = "tab:blue"
REFERENCE_COLOR = "0.35"


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    FigureCanvasAgg(fig)
    with atomic_path(path) as tmp:  # the temporary name keeps the suffix: the format is the path's
        fig.savefig(tmp, dpi=120)
    return path


def _symbol(z: int) -> str:
    return chemical_symbols[z] if 0 < z < len(chemical_symbols) else str(z)


def plot_rdf(curves: Mapping[str, Any], path: str | Path, title: str = "Radial distribution function") -> Path:
    """g(r) of the samples over the reference; the coordination cutoff as a dotted line."""
    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.add_subplot()
    r = np.asarray(curves["r"])
    ax.plot(r, np.asarray(curves["g_reference"]), color=REFERENCE_COLOR, lw=2.0, label="reference")
    ax.plot(r, np.asarray(curves["g"]), color=SAMPLES_COLOR, lw=1.3, label="samples")
    cutoff = curves.get("coordination_cutoff")
    if isinstance(cutoff, (int, float)):
        ax.axvline(float(cutoff), color="k", ls=":", lw=1, label=f"cutoff {float(cutoff):.2f} Å")
    ax.set_xlabel("r (Å)")
    ax.set_ylabel("g(r)")
    ax.set_xlim(0, float(r[-1] + 0.5 * curves.get("dr", 0.0)))
    ax.set_title(title)
    ax.legend(frameon=False)
    return _save(fig, path)


def plot_coordination(curves: Mapping[str, Any], path: str | Path, title: str = "Coordination numbers") -> Path:
    """One panel per species: fraction of atoms with k neighbours, samples beside reference."""
    samples: Mapping[int, np.ndarray] = curves.get("coordination", {})
    reference: Mapping[int, np.ndarray] = curves.get("coordination_reference", {})
    species = sorted(set(samples) | set(reference)) or [0]
    fig = Figure(figsize=(5.5, 2.6 * len(species)), layout="constrained")
    axes = fig.subplots(len(species), 1, squeeze=False)[:, 0]
    for ax, z in zip(axes, species, strict=False):
        s, r = samples.get(z), reference.get(z)
        n_k = len(s) if s is not None else (len(r) if r is not None else 1)
        k = np.arange(n_k)
        used = np.zeros(n_k, dtype=bool)
        for arr in (s, r):
            if arr is not None:
                used |= np.nan_to_num(np.asarray(arr)) > 0
        hi = int(np.flatnonzero(used).max()) + 2 if used.any() else n_k
        hi = min(hi, n_k)
        if r is not None:
            ax.bar(k[:hi] - 0.2, np.asarray(r)[:hi], width=0.4, color=REFERENCE_COLOR, label="reference")
        if s is not None:
            ax.bar(k[:hi] + 0.2, np.asarray(s)[:hi], width=0.4, color=SAMPLES_COLOR, label="samples")
        ax.set_ylabel(f"{_symbol(z)}: fraction")
        ax.set_xticks(k[:hi])
        ax.legend(frameon=False)
    axes[-1].set_xlabel("coordination number")
    axes[0].set_title(title)
    return _save(fig, path)


def plot_atom_counts(curves: Mapping[str, Any], path: str | Path, title: str = "Atoms per structure") -> Path:
    """Histogram of atom counts, samples and reference normalized to fractions of structures."""
    fig = Figure(figsize=(6, 3.5), layout="constrained")
    ax = fig.add_subplot()
    n = np.asarray(curves["n_atoms"])
    used = np.zeros(len(n), dtype=bool)
    for key, color, label, shift in (
        ("n_atoms_hist_reference", REFERENCE_COLOR, "reference", -0.2),
        ("n_atoms_hist", SAMPLES_COLOR, "samples", 0.2),
    ):
        h = np.asarray(curves[key], dtype=float)
        used |= h > 0
        if h.sum() > 0:
            ax.bar(n + shift, h / h.sum(), width=0.4, color=color, label=label)
    if used.any():
        idx = np.flatnonzero(used)
        ax.set_xlim(n[idx.min()] - 2, n[idx.max()] + 2)
    ax.set_xlabel("atoms per structure (last bin: at least)")
    ax.set_ylabel("fraction of structures")
    ax.set_title(title)
    ax.legend(frameon=False)
    return _save(fig, path)


def save_all_plots(curves: Mapping[str, Any], directory: str | Path) -> list[Path]:
    """``rdf.png``, ``coordination.png`` and ``n_atoms.png`` in ``directory``."""
    directory = Path(directory)
    return [
        plot_rdf(curves, directory / "rdf.png"),
        plot_coordination(curves, directory / "coordination.png"),
        plot_atom_counts(curves, directory / "n_atoms.png"),
    ]
