"""Checkpoints written before the applications became plug-ins (issue #29) still load and sample as before.

``tests/data/legacy/`` holds tiny checkpoints made with the code of that time (see its README): a voxel model
conditioned on a spectrum (``xanes``) that names its forward model with the old model option
``spectrum_forward_ckpt``, that forward model (saved as ``lightning_gcd.models.spectrum.SpectrumModel``), and
an unconditioned particle model; ``samples.pt`` records what the diffusion models sampled then, on a fixed seed
(the voxel model with classifier-free guidance and posterior guidance toward ``target.txt``).
"""

from __future__ import annotations

import json
from pathlib import Path

import ase.io
import numpy as np
import pytest
import torch

from lightning_gcd.cli import main as gcd_main
from lightning_gcd.models.loading import load_model
from lightning_gcd.spectra.forward_model import SpectrumModel
from lightning_gcd.spectra.guidance import SpectrumGuidance

LEGACY = Path(__file__).resolve().parents[1] / "data" / "legacy"
SEED = 5


@pytest.fixture(autouse=True)
def one_thread():
    """Convolutions may sum in another order with more threads; the reference was written on one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def reference(name: str) -> list[dict[str, torch.Tensor]]:
    return torch.load(LEGACY / "samples.pt", weights_only=True)[name]


def target_spectrum() -> torch.Tensor:
    return torch.as_tensor(np.loadtxt(LEGACY / "target.txt")[:, 1], dtype=torch.float32)


def assert_same_structures(structures: list, expected: list[dict[str, torch.Tensor]]) -> None:
    assert [len(a) for a in structures] == [len(e["numbers"]) for e in expected]
    for atoms, e in zip(structures, expected, strict=True):
        np.testing.assert_array_equal(atoms.numbers, e["numbers"].numpy())
        np.testing.assert_allclose(atoms.cell[:], e["cell"].numpy(), atol=1e-6)
        np.testing.assert_allclose(atoms.positions, e["positions"].numpy(), atol=1e-4)


def test_voxel_checkpoint_samples_as_before_with_guidance_and_posterior() -> None:
    """The old option ``spectrum_forward_ckpt`` is dropped with a warning that says what replaced it."""
    with pytest.warns(UserWarning, match="spectrum_forward_ckpt.*moved.*lightning_gcd.spectra.SpectrumL2"):
        model = load_model(LEGACY / "voxel_xanes.ckpt")
    assert "spectrum_forward_ckpt" not in model.hparams
    forward = load_model(LEGACY / "forward.ckpt", base=SpectrumModel).float()  # saved as models.spectrum
    assert type(forward).__module__ == "lightning_gcd.spectra.forward_model"
    target = target_spectrum()
    template = model.sample_template(2, cond=target, target=target)
    structures = model.sample(
        template, steps=3, guidance_scale=2.0, seed=SEED, progress=False, posterior=SpectrumGuidance(forward, 10.0)
    )
    assert_same_structures(structures, reference("voxel_xanes"))


def test_particle_checkpoint_samples_as_before() -> None:
    model = load_model(LEGACY / "particle.ckpt")
    structures = model.sample(model.sample_template(2), steps=3, seed=SEED, progress=False)
    assert_same_structures(structures, reference("particle"))


def test_gcd_sample_guides_a_legacy_voxel_model_with_a_legacy_forward_model(tmp_path: Path, capsys) -> None:
    out = tmp_path / "guided.extxyz"
    argv = ["sample", "--ckpt", str(LEGACY / "voxel_xanes.ckpt"), "--forward-ckpt", str(LEGACY / "forward.ckpt")]
    argv += ["--spectrum", str(LEGACY / "target.txt"), "--dps-scale", "10", "--guidance", "2", "--steps", "3"]
    argv += ["--n", "2", "--seed", str(SEED), "--out", str(out), "--no-progress", "--device", "cpu"]
    assert gcd_main(argv) == 0, capsys.readouterr().err
    assert_same_structures(ase.io.read(out, ":"), reference("voxel_xanes"))


def test_density_scan_reads_a_legacy_checkpoints_training_densities(tmp_path: Path, capsys) -> None:
    """The scan's default range comes from what the checkpoint stored of its training cells (2.0–3.0 g/cm³)."""
    out = tmp_path / "auto.extxyz"
    argv = ["sample", "--ckpt", str(LEGACY / "particle.ckpt"), "--forward-ckpt", str(LEGACY / "forward.ckpt")]
    argv += ["--spectrum", str(LEGACY / "target.txt"), "--n-atoms", "16", "--density", "auto"]
    argv += ["--density-scan-points", "3", "--density-scan-samples", "1", "--steps", "2", "--n", "1"]
    argv += ["--out", str(out), "--no-progress", "--device", "cpu"]
    assert gcd_main(argv) == 0, capsys.readouterr().err
    scan = json.loads((tmp_path / "auto_density_scan.json").read_text())
    assert scan["densities"] == pytest.approx([2.0, 2.5, 3.0])
    assert [len(a) for a in ase.io.read(out, ":")] == [16]


def test_a_checkpoint_naming_a_class_this_version_lacks_is_one_line(tmp_path: Path) -> None:
    from lightning_gcd.errors import GcdError

    path = tmp_path / "gone.ckpt"
    torch.save({"state_dict": {}, "gcd_model_class": "lightning_gcd.models.gone.Model"}, path)
    with pytest.raises(GcdError, match="holds a lightning_gcd.models.gone.Model, which this version"):
        load_model(path)
