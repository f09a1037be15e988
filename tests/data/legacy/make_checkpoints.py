"""Writes the legacy checkpoints of ``tests/unit/test_legacy_checkpoints.py`` with the code of its commit.

Run from the repository root: ``python tests/data/legacy/make_checkpoints.py``. It trains, for a few steps
on the synthetic a-C file of ``tests/integration/test_spectrum.py``:

* ``forward.ckpt``: a ``SpectrumModel`` (hidden 8, one layer) saved as ``lightning_gcd.models.spectrum``;
* ``voxel_xanes.ckpt``: a ``GrandCanonicalDiffusion`` conditioned on ``xanes`` with
  ``spectrum_forward_ckpt: tests/data/legacy/forward.ckpt`` (8³ grid, EMA on);
* ``particle.ckpt``: an unconditioned ``ParticleDiffusion``;

and records what each diffusion checkpoint samples on a fixed seed (``samples.pt``) and the target spectrum
(``target.txt``, energy in eV / intensity) that the voxel sample is guided toward.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import lightning as L
import numpy as np
import torch

REPO = Path(__file__).resolve().parents[3]
OUT = REPO / "tests" / "data" / "legacy"
FORWARD = "tests/data/legacy/forward.ckpt"  # relative: the voxel checkpoint stores this path


def trainer(steps: int) -> L.Trainer:
    return L.Trainer(
        max_steps=steps,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )


def main() -> None:
    from datamodules.datamodule import AtomsDataModule
    from datamodules.h5format import AtomsH5
    from lightning_gcd.diffusion.guidance import SpectrumGuidance
    from lightning_gcd.models.loading import load_model
    from lightning_gcd.models.particle import ParticleDiffusion
    from lightning_gcd.models.spectrum import SpectrumModel
    from lightning_gcd.models.voxel import GrandCanonicalDiffusion

    spec = importlib.util.spec_from_file_location("spectrum_tests", REPO / "tests/integration/test_spectrum.py")
    helpers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(helpers)
    h5 = helpers.make_spectrum_file(OUT / "synthetic_ac.h5", n_structures=6, n_atoms=16)
    torch.set_num_threads(1)

    L.seed_everything(0, verbose=False)
    dm = AtomsDataModule(str(h5), view="particle", batch_size=4, atom_properties=["xanes", "xanes_mask"])
    forward = SpectrumModel(hidden=8, layers=1, num_rbf=8)
    fit = trainer(3)
    fit.fit(forward, dm)
    fit.save_checkpoint(REPO / FORWARD)

    L.seed_everything(0, verbose=False)
    dm = AtomsDataModule(str(h5), view="voxel", batch_size=4, grid_shape=[8, 8, 8], conditions=["xanes"])
    voxel = GrandCanonicalDiffusion(
        base_channels=4,
        channel_mults=(1, 2),
        attention=False,
        val_samples=0,
        sample_steps=3,
        spectrum_forward_ckpt=FORWARD,
    )
    fit = trainer(3)
    fit.fit(voxel, dm)
    fit.save_checkpoint(OUT / "voxel_xanes.ckpt")

    L.seed_everything(0, verbose=False)
    dm = AtomsDataModule(str(h5), view="particle", batch_size=4)
    particle = ParticleDiffusion(hidden=8, layers=1, num_rbf=8, val_samples=0, sample_steps=3)
    fit = trainer(3)
    fit.fit(particle, dm)
    fit.save_checkpoint(OUT / "particle.ckpt")

    with AtomsH5(h5) as data:
        target = torch.as_tensor(np.asarray(data.structure_property("xanes", 0), dtype=np.float32))
        energy = np.asarray(data.attrs["meta_xanes_energy"], dtype=np.float64)
    np.savetxt(OUT / "target.txt", np.column_stack([energy, target.numpy()]), header="energy (eV)  intensity")

    voxel = load_model(OUT / "voxel_xanes.ckpt")
    forward = load_model(REPO / FORWARD, base=SpectrumModel).float()
    template = voxel.sample_template(2, cond=target, target=target)
    voxel_samples = voxel.sample(
        template, steps=3, guidance_scale=2.0, seed=5, progress=False, posterior=SpectrumGuidance(forward, 10.0)
    )
    particle = load_model(OUT / "particle.ckpt")
    particle_samples = particle.sample(particle.sample_template(2), steps=3, seed=5, progress=False)

    def record(structures: list) -> list[dict[str, torch.Tensor]]:
        return [
            {
                "positions": torch.as_tensor(a.positions),
                "numbers": torch.as_tensor(a.numbers),
                "cell": torch.as_tensor(a.cell[:]),
            }
            for a in structures
        ]

    torch.save({"voxel_xanes": record(voxel_samples), "particle": record(particle_samples)}, OUT / "samples.pt")
    (OUT / "synthetic_ac.h5").unlink()


if __name__ == "__main__":
    sys.exit(main())
