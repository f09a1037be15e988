"""Capability: the torus particle model learns a crystal.

A small torus model is trained with the real Trainer on a real HDF5 file of rattled 4-atom fcc Cu cells
(conventional cell, thermal σ 0.05 Å, random translations) and sampled from uniform positions with the
predictor–corrector; the phase-match rate (0.5 Å) must reach the floor below. The floor is the lowest rate
over five seeds minus two binomial standard errors, measured with ``python
tests/integration/test_particle_capability.py``
(it prints the five rates and the floor); the measurement is in the test's docstring.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

from conftest import quiet_trainer

TRAIN_STEPS = 2000
SAMPLES = 32
LEVELS = 200
#: lowest of the five measured seeds minus two standard errors, rounded down (see ``capability_rate``'s docstring)
FLOOR = 0.14


def fcc_cell_dataset(folder: Path) -> Path:
    from datamodules.builders import build_dataset

    return build_dataset(
        "crystals",
        folder / "fcc_1x1x1.h5",
        count=64,
        phases=["fcc"],
        repeat=[1, 1, 1],
        thermal_sigma=0.05,
        progress=False,
    )


def capability_rate(data: Path, seed: int, root: Path) -> float:
    """Phase-match rate of ``SAMPLES`` structures of a torus model trained ``TRAIN_STEPS`` steps on ``data``.

    Measured on 2026-12-06 with the module's ``__main__`` (2-core CPU shared with other jobs): seeds 0-4 gave
    0.688, 0.469, 0.312, 0.438, 0.625; lowest 0.312, one standard error 0.082, floor 0.149. The Cartesian
    particle model at the same budget gives 0 (tests/unit/test_ve_diffusion.py is its smoke test). About 6 minutes
    per seed on the loaded machine: an integration test.
    """
    import lightning as L
    import torch

    from datamodules.datamodule import AtomsDataModule
    from lightning_gcd.metrics.phase_match import ideal_for_dataset, phase_matches
    from lightning_gcd.models.particle_torus import TorusParticleDiffusion

    torch.set_num_threads(1)
    L.seed_everything(seed, verbose=False)
    model = TorusParticleDiffusion(
        hidden=64,
        layers=2,
        frequencies=8,
        lr=2e-3,
        warmup_steps=20,
        ema_decay=0.99,
        val_samples=0,
        sample_steps=LEVELS,
        sampler="pc",
    )
    dm = AtomsDataModule(str(data), view="particle", batch_size=32, num_workers=0, build={})
    trainer = quiet_trainer(
        root,
        max_steps=TRAIN_STEPS,
        limit_val_batches=0,
    )
    trainer.fit(model, dm)
    samples = model.sample(model.sample_template(SAMPLES), batch_size=SAMPLES, seed=seed + 100, progress=False)
    ideal = ideal_for_dataset(data)[0]
    return sum(bool(phase_matches(atoms, ideal, 0.5)[0]) for atoms in samples) / SAMPLES


def test_torus_particle_model_learns_fcc_cu_cell(tmp_path: Path) -> None:
    rate = capability_rate(fcc_cell_dataset(tmp_path), seed=0, root=tmp_path)
    print(f"\ntorus particle model, 4-atom fcc Cu: {rate:.0%} of {SAMPLES} samples are the crystal (floor {FLOOR:.0%})")
    assert rate >= FLOOR


if __name__ == "__main__":  # measure the floor: five seeds
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        data = fcc_cell_dataset(Path(tmp))
        rates = []
        for seed in range(5):
            rates.append(capability_rate(data, seed, Path(tmp)))
            print(f"seed {seed}: {rates[-1]:.3f}", flush=True)
    low = min(rates)
    se = math.sqrt(max(low, 1 / SAMPLES) * (1 - min(low, 1 - 1 / SAMPLES)) / SAMPLES)
    print(f"rates {rates}; lowest {low:.3f}, standard error {se:.3f}; floor {low - 2 * se:.3f}")
    sys.exit(0)
