"""What the amorphous-carbon study's scripts share (``experiments/amorphous_carbon``: ``guided.py``,
``scale.py``, ``density_scan.py``): the spectrum-conditioned priors' training (resumable), relaxation of
samples with the builder's Tersoff potential, minimum distances, and the pool of unconditional samples that
the density scan reads a target's density from."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lightning_gcd.runner.trainer import build_trainer, checkpointing

__all__ = ["data_density_range", "density_scan_pool", "min_distances", "relax_samples", "train_prior"]


def train_prior(
    kind: str,
    path: str,
    steps: int,
    out: Path,
    voxel_geometry: bool = False,
    standardize_condition: bool = True,
    checkpoint_every: int = 500,
    voxel_input_perturbation: float = 0.0,
):
    """Train the particle or voxel prior (spectrum-conditioned, CFG dropout 0.2) for ``steps`` on ``path``;
    ``voxel_geometry``: the voxel U-Net is told each grid's voxel spacing (``geometry_condition``);
    ``standardize_condition``: the spectrum is standardised with the training cells' statistics;
    ``voxel_input_perturbation``: γ of the voxel model's DDPM-IP input perturbation (0: off).
    Writes ``out/{kind}.ckpt``. While it trains, ``out/{kind}_partial/last.ckpt`` is kept current every
    ``checkpoint_every`` steps; a killed run rerun with the same command resumes from it."""
    import lightning as L

    from datamodules.datamodule import AtomsDataModule
    from lightning_gcd.models.particle import ParticleDiffusion
    from lightning_gcd.models.voxel import GrandCanonicalDiffusion

    L.seed_everything(0, verbose=False)
    common = dict(
        cond_drop_prob=0.2, val_samples=0, warmup_steps=50, ema_decay=0.995, standardize_condition=standardize_condition
    )
    if kind == "particle":
        dm = AtomsDataModule(path, view="particle", batch_size=4, conditions=["xanes"])
        model = ParticleDiffusion(hidden=64, layers=3, cutoff=3.0, sigma_max=0.8, sigma_min=0.01, lr=2e-3, **common)
    else:
        dm = AtomsDataModule(path, view="voxel", batch_size=4, conditions=["xanes"])
        model = GrandCanonicalDiffusion(
            base_channels=16,
            channel_mults=(1, 2),
            attention=False,
            lr=5e-4,
            geometry_condition=voxel_geometry,
            input_perturbation=voxel_input_perturbation,
            **common,
        )
    partial_dir = out / f"{kind}_partial"
    resume = partial_dir / "last.ckpt"
    resume_from = resume if resume.exists() else None
    if resume_from:
        print(f"resuming the {kind} prior from {resume}", flush=True)
    trainer = build_trainer(max_steps=steps, **checkpointing(partial_dir, every_n_train_steps=checkpoint_every))
    trainer.fit(model, dm, ckpt_path=resume_from)
    trainer.save_checkpoint(out / f"{kind}.ckpt")
    resume.unlink(missing_ok=True)
    if partial_dir.is_dir() and not any(partial_dir.iterdir()):
        partial_dir.rmdir()
    return out / f"{kind}.ckpt"


def relax_samples(structures, max_steps: int) -> tuple[list, list[float]]:
    """Each structure relaxed at fixed cell with the builder's Tersoff potential (``Relaxer("C", "lammps")``,
    at most ``max_steps`` conjugate-gradient steps), and its energy per atom (eV; NaN where it failed)."""
    from lightning_gcd.relax import Relaxer, energies_per_atom, relax_structures

    relaxed = relax_structures(structures, Relaxer("C", "lammps", max_steps=max_steps))
    return relaxed, energies_per_atom(relaxed).tolist()


def min_distances(structures) -> list[float]:
    """Each structure's smallest interatomic distance (Å, minimum image); NaN with fewer than two atoms."""
    return [
        float(np.min(a.get_all_distances(mic=True)[np.triu_indices(len(a), 1)])) if len(a) > 1 else np.nan
        for a in structures
    ]


def data_density_range(path: str) -> tuple[float, float]:
    """(lightest, densest) g/cm³ of the file's training cells: the default scan range of ``--density auto``."""
    from datamodules.h5format import AtomsH5
    from lightning_gcd.structures import mass_density

    with AtomsH5(path) as data:
        densities = [mass_density(data.atoms(int(i))) for i in data.split("train")]
    return min(densities), max(densities)


def density_scan_pool(model, forward, args, default_range: tuple[float, float], steps: int, sampler: str):
    """(densities (D,), predicted spectra (D, S, K)) of ``--density-scan-samples`` unconditional samples of
    the training size at each candidate density, relaxed with ``--relax`` when given: what
    ``choose_density`` needs to read any target's density (``gcd sample --density auto``)."""
    from lightning_gcd.relax import Relaxer
    from lightning_gcd.spectra.density_scan import candidate_densities, predicted_spectra, scan_samples

    low, high = args.density_range or default_range
    densities = candidate_densities(low, high, args.density_scan_points)
    relaxer = Relaxer("C", "lammps", max_steps=args.relax) if args.relax else None
    pools = scan_samples(
        model,
        densities,
        round(float(model.info["n_atoms_mean"])),
        args.density_scan_samples,
        relaxer=relaxer,
        steps=steps,
        sampler=sampler,
        seed=args.seed,
    )
    return densities, np.stack([predicted_spectra(forward, pool) for pool in pools])
