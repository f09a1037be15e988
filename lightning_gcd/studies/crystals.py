"""What the crystal-phase studies share (``experiments/crystals``, ``experiments/grain_boundaries``): the phases,
the models' names and colours in plots, the schema of a profile's model sections, and the models and data
modules built from those sections.

A profile's ``voxel``, ``particle`` and ``particle_torus`` sections hold a model's constructor arguments
(``model``) and how it samples; the grain-boundary profiles take the crystal profiles' sections by
reference (``experiments/grain_boundaries/profiles/*.yaml``), and both studies build their models here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "COLORS",
    "CONVERGE_SECTION",
    "MODEL_LABELS",
    "MODELS",
    "PARTICLE_SECTION",
    "PHASES",
    "TORUS_SECTION",
    "VOXEL_SECTION",
    "model_and_data",
    "nearest_neighbour_distance",
    "particle_geometry",
]

PHASES = ("sc", "fcc", "bcc", "hcp", "diamond")
MODELS = ("voxel", "particle", "particle_torus")
MODEL_LABELS = {
    "voxel": "GCDM voxel",
    "particle": "particle (Cartesian VE + MPNN)",
    "particle_torus": "particle (torus VE + all-pairs Fourier net)",
}
COLORS = {
    "voxel": "tab:blue",
    "particle": "tab:orange",
    "particle_torus": "tab:green",
    "particle_torus@steps": "yellowgreen",
    "particle_torus@walltime": "darkolivegreen",
    "data": "0.35",
}

#: the keys of a profile's model sections (``lightning_gcd.runner.profiles`` schemas; None: any value)
VOXEL_SECTION = dict.fromkeys(("model", "spacing", "grid_shape", "grid_shapes", "sampler", "sample_steps"))
PARTICLE_SECTION = dict.fromkeys(
    ("model", "cutoff", "cutoff_factor", "sigma_max", "sigma_max_factor", "sigma_max_min", "sampler", "sample_steps")
)
#: the torus model's ``--budget converge`` settings (experiments/crystals/profiles/sections/torus_converge.yaml)
CONVERGE_SECTION = dict.fromkeys(
    ("steps", "min_steps", "batch_size", "ema_decay", "val_every", "val_samples", "window", "standard_errors")
)
TORUS_SECTION = {**dict.fromkeys(("model", "sampler", "sample_steps")), "converge": CONVERGE_SECTION}


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


def model_and_data(
    kind: str, path: Path, settings: dict[str, Any], geometry: dict[str, float], phase: str | None = None
):
    """``(model, data module)`` of ``kind`` (voxel, particle or particle_torus) on the dataset ``path``, from the
    profile's section ``settings[kind]`` and its batch size and workers; ``geometry``: the particle model's
    cutoff and sigma_max (``particle_geometry``); ``phase`` picks a per-phase voxel grid. With
    ``settings["budget"] == "converge"`` the torus model takes the convergence section's batch, EMA and
    validation sampling."""
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
        if settings.get("budget") == "converge":
            c = p["converge"]
            options["ema_decay"] = c["ema_decay"]
            batch_size = int(c["batch_size"])
            common = {"val_samples": int(c["val_samples"]), "sample_every_n_epochs": 1}
        dm = AtomsDataModule(
            str(path), view="particle", batch_size=batch_size, num_workers=int(settings["num_workers"]), build={}
        )
        model = TorusParticleDiffusion(**options, sampler=p["sampler"], sample_steps=int(p["sample_steps"]), **common)
    return model, dm
