"""The spectrum forward model, spectrum-conditioned sampling (CFG, DPS) and ``gcd sample --spectrum``.

The data are synthetic (FEFF costs ~8 s per site): small carbon cells whose per-atom "spectrum" is a smooth
function of the neighbour distances, with an a-C-like file layout (``xanes``, ``xanes_mask``, mean
``xanes`` per structure, ``meta_xanes_energy``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from ase import Atoms
from conftest import quiet_trainer

from datamodules.h5format import AtomsH5, DatasetRecords, write_dataset
from lightning_gcd.cli import main as gcd_main
from lightning_gcd.errors import GcdError
from lightning_gcd.structures import mass_density

K = 20
ENERGY = np.linspace(280.0, 300.0, K)


def synthetic_spectra(atoms: Atoms) -> np.ndarray:
    """(n, K): two Gaussian peaks whose heights follow the counts of first and second neighbours."""
    from ase.neighborlist import neighbor_list

    i, d = neighbor_list("id", atoms, 4.0)
    first = np.bincount(i, weights=np.exp(-((d - 1.5) ** 2) / 0.1), minlength=len(atoms))
    second = np.bincount(i, weights=np.exp(-((d - 2.5) ** 2) / 0.2), minlength=len(atoms))
    e = (ENERGY - ENERGY[0]) / (ENERGY[-1] - ENERGY[0])
    return (
        0.3
        + first[:, None] * 0.5 * np.exp(-((e - 0.3) ** 2) / 0.01)
        + second[:, None] * 0.2 * np.exp(-((e - 0.7) ** 2) / 0.02)
    ).astype(np.float32)


def make_spectrum_file(path: Path, n_structures: int = 12, n_atoms: int = 16, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    structures, labels, spectra, masks, means, densities = [], [], [], [], [], []
    for k in range(n_structures):
        density = (2.0, 2.5, 3.0)[k % 3]
        length = (n_atoms * 12.011 / (density * 0.602214076)) ** (1 / 3)
        positions = []
        while len(positions) < n_atoms:  # random positions at least 1.2 Å apart (periodic)
            p = rng.uniform(0, length, 3)
            if all(np.linalg.norm((p - q + length / 2) % length - length / 2) > 1.2 for q in positions):
                positions.append(p)
        atoms = Atoms("C" * n_atoms, positions=positions, cell=[length] * 3, pbc=True)
        s = synthetic_spectra(atoms)
        mask = np.zeros(n_atoms, bool)
        mask[rng.choice(n_atoms, n_atoms // 2, replace=False)] = True
        structures.append(atoms)
        labels.append(f"synthetic C {density}")
        spectra.append(np.where(mask[:, None], s, 0.0))
        masks.append(mask)
        means.append(s[mask].mean(0))
        densities.append(density)
    records = DatasetRecords(
        structures,
        labels,
        properties={"xanes": np.stack(means).astype(np.float32), "density": np.asarray(densities)},
        atom_properties={"xanes": np.concatenate(spectra).astype(np.float32), "xanes_mask": np.concatenate(masks)},
        metadata={"xanes_energy": ENERGY},
    )
    idx = np.arange(n_structures)
    return write_dataset(path, records, splits={"train": idx[:-2], "val": idx[-2:], "test": idx[-2:]})


@pytest.fixture(scope="module")
def spectrum_h5(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_spectrum_file(tmp_path_factory.mktemp("spectra") / "synthetic_ac.h5")


def _trainer(epochs: int):
    """A quiet CPU Trainer for `epochs` epochs that never validates while fitting."""
    return quiet_trainer(
        max_epochs=epochs,
        devices=1,
        check_val_every_n_epoch=10**6,
    )


@pytest.fixture(scope="module")
def forward_model(spectrum_h5: Path):
    """A SpectrumModel trained briefly on the synthetic file, with its test metrics before and after."""
    import lightning as L

    from datamodules.datamodule import AtomsDataModule
    from lightning_gcd.spectra.forward_model import SpectrumModel

    L.seed_everything(0, verbose=False)
    dm = AtomsDataModule(str(spectrum_h5), view="particle", batch_size=5, atom_properties=["xanes", "xanes_mask"])
    model = SpectrumModel(hidden=32, layers=2, cutoff=4.0, lr=3e-3, warmup_steps=5)
    trainer = _trainer(150)
    trainer.test(model, dm, verbose=False)
    before = dict(model.last_metrics)
    trainer.fit(model, dm)
    trainer.test(model, dm, verbose=False)
    return model.eval(), before, dict(model.last_metrics)


def test_forward_model_learns(forward_model) -> None:
    model, before, after = forward_model
    assert after["loss"] < 0.5 * before["loss"], (before, after)
    assert after["spectrum_rel_l2"] < after["baseline_rel_l2"], after  # beats predicting the mean spectrum
    assert model.info["energy"] == pytest.approx(ENERGY.tolist())
    assert after["n_sites"] == 16  # 2 test structures x 8 labelled sites: the loss sees labelled atoms only


def test_forward_cv_evaluates_a_trained_checkpoint(forward_model, spectrum_h5: Path, tmp_path: Path) -> None:
    """forward_cv.py --evaluate CKPT scores a saved forward model on a split: the same numbers as the
    trainer's own test run on that split; an empty split is one clear line."""
    import importlib.util

    import lightning as L

    model, _, after = forward_model
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.strategy.connect(model)
    trainer.save_checkpoint(tmp_path / "forward.ckpt")
    path = Path(__file__).resolve().parents[2] / "experiments" / "amorphous_carbon" / "forward_cv.py"
    spec = importlib.util.spec_from_file_location("forward_cv", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path / "heldout.json"
    assert (
        script.main(["--data", str(spectrum_h5), "--evaluate", str(tmp_path / "forward.ckpt"), "--out", str(out)]) == 0
    )
    scored = json.loads(out.read_text())
    assert scored["split"] == "test" and len(scored["structures"]) == 2
    for name in ("spectrum_rel_l2", "baseline_rel_l2", "n_sites"):
        assert scored["metrics"][name] == pytest.approx(after[name], rel=1e-5)
    with pytest.raises(SystemExit, match="no structures"):
        script.main(["--data", str(spectrum_h5), "--evaluate", str(tmp_path / "forward.ckpt"), "--split", "nope"])
    # the hybridization contrast: reported for the trained model; a model that returns the labels exactly
    # reproduces FEFF's difference between sp3 and sp2 (and sp2 and sp) sites exactly, one that returns a
    # constant spectrum has none of it
    assert set(scored["hybridization_contrast"]) <= {"sp3-sp2", "sp2-sp"} and scored["hybridization_contrast"]

    def exact(frac, numbers, mask, cell):
        atoms = Atoms(
            numbers=numbers[0].numpy(),
            scaled_positions=frac[0].double().numpy(),
            cell=cell[0].double().numpy(),
            pbc=True,
        )
        return torch.as_tensor(synthetic_spectra(atoms))[None]

    structures = AtomsH5(spectrum_h5).split("train")
    contrast = script.hybridization_contrast(exact, str(spectrum_h5), structures)
    assert contrast, "the synthetic cells hold several coordinations"
    for entry in contrast.values():
        assert entry["cosine"] == pytest.approx(1.0, abs=1e-5) and entry["rel_l2"] == pytest.approx(0.0, abs=1e-5)
        assert entry["norm_ratio"] == pytest.approx(1.0, abs=1e-5) and min(entry["sites"]) > 0
    flat = script.hybridization_contrast(
        lambda frac, *rest: torch.ones(1, frac.shape[1], K), str(spectrum_h5), structures
    )
    assert all(entry["norm_ratio"] == 0.0 and entry["rel_l2"] == pytest.approx(1.0) for entry in flat.values())


def _random_structure(n: int = 12, length: float = 6.0, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    frac = torch.rand(1, n, 3, generator=g, dtype=torch.float64)
    cell = (torch.eye(3, dtype=torch.float64) * length + 0.3 * torch.rand(3, 3, generator=g, dtype=torch.float64))[None]
    return frac, torch.full((1, n), 6), torch.ones(1, n, dtype=torch.bool), cell


def test_per_atom_predictions_are_invariant() -> None:
    from scipy.spatial.transform import Rotation

    from lightning_gcd.spectra.net import SpectrumNet

    torch.manual_seed(0)
    net = SpectrumNet(K, hidden=32, layers=2, cutoff=4.0).double()
    frac, numbers, mask, cell = _random_structure()
    weights = torch.rand(1, frac.shape[1], dtype=torch.float64)
    ref = net(frac, numbers, mask, cell, weights)
    assert ref.abs().sum() > 0
    rot = torch.as_tensor(Rotation.random(random_state=1).as_matrix())
    rot = rot @ torch.diag(torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64))  # a reflection too
    # rotating the cell rows rotates every Cartesian position (frac fixed)
    torch.testing.assert_close(net(frac, numbers, mask, cell @ rot.T, weights), ref, atol=1e-10, rtol=1e-10)
    shifted = frac + torch.tensor([0.37, -0.81, 1.52], dtype=torch.float64)  # translation, wrapping included
    torch.testing.assert_close(net(shifted, numbers, mask, cell, weights), ref, atol=1e-10, rtol=1e-10)
    perm = torch.randperm(frac.shape[1])
    out = net(frac[:, perm], numbers[:, perm], mask[:, perm], cell, weights[:, perm])
    torch.testing.assert_close(out, ref[:, perm], atol=1e-10, rtol=1e-10)
    # weight 0 = the atom is absent for its neighbours
    drop = weights.clone()
    drop[0, -1] = 0.0
    keep = torch.arange(frac.shape[1] - 1)
    torch.testing.assert_close(
        net(frac, numbers, mask, cell, drop)[:, keep],
        net(frac[:, keep], numbers[:, keep], mask[:, keep], cell, weights[:, keep]),
        atol=1e-10,
        rtol=1e-10,
    )


def _forward_error(forward, structures, target: torch.Tensor) -> torch.Tensor:
    """(B,) relative L2 of the forward model's mean spectrum of hard structures against ``target``."""
    with torch.no_grad():
        pred = forward.mean_spectrum(
            structures.frac_coords.float(), structures.numbers, structures.mask, structures.cell.float()
        )
    return (pred - target).norm(dim=-1) / target.norm()


def _particle_model(spectrum_h5: Path):
    from lightning_gcd.models.particle import ParticleDiffusion

    torch.manual_seed(0)
    info = {
        "species": [6],
        "conditions": [],
        "cond_dim": 0,
        "reference_cell": (np.eye(3) * 5.0).tolist(),
        "n_atoms_max": 16,
        "number_density": 16 / 125.0,
        "composition": {"6": 1.0},
        "spectrum_energy": ENERGY.tolist(),
    }
    return ParticleDiffusion(hidden=16, layers=2, sigma_max=0.8, ema_decay=0.0, data_info=info).eval()


@pytest.fixture(scope="module")
def voxel_prior(spectrum_h5: Path):
    """A tiny voxel model trained 600 steps on the synthetic cells (an untrained one decodes no atom)."""
    import lightning as L

    from datamodules.datamodule import AtomsDataModule
    from lightning_gcd.models.voxel import GrandCanonicalDiffusion

    L.seed_everything(0, verbose=False)
    dm = AtomsDataModule(str(spectrum_h5), view="voxel", batch_size=5, grid_shape=[8, 8, 8])
    model = GrandCanonicalDiffusion(
        base_channels=8, channel_mults=(1, 2), attention=False, ema_decay=0.0, val_samples=0, lr=1e-3, warmup_steps=10
    )  # 2e-3 can collapse (test_voxel_model)
    quiet_trainer(
        max_steps=600,
        limit_val_batches=0,
    ).fit(model, dm)
    return model.eval()


@pytest.mark.parametrize("kind", ["particle", "voxel"])
def test_posterior_sampling_reduces_spectrum_error(kind: str, spectrum_h5: Path, forward_model, request) -> None:
    """Same seed, same prior (untrained particle model, briefly trained voxel model): DPS toward a target
    spectrum must end clearly closer to it (by the forward model, on the decoded structures) than the
    unguided run."""
    from datamodules.h5format import AtomsH5
    from lightning_gcd.spectra.guidance import SpectrumGuidance

    forward = forward_model[0]
    with AtomsH5(spectrum_h5) as data:
        target = torch.as_tensor(data.structure_property("xanes", 0))
    model = _particle_model(spectrum_h5) if kind == "particle" else request.getfixturevalue("voxel_prior")
    template = model.sample_template(16, target=target)
    options = {"steps": 30, "sampler": "em"} if kind == "particle" else {"steps": 20, "sampler": "ddim"}
    scale = 200.0 if kind == "particle" else 10.0
    errors = {}
    for name, posterior in (("unguided", None), ("guided", SpectrumGuidance(forward, scale))):
        generator = torch.Generator().manual_seed(3)
        structures = model.generate(template, generator=generator, posterior=posterior, **options)
        assert structures.mask.sum(1).min() > 0
        errors[name] = _forward_error(forward, structures, target)
    # measured with the 600-step lr 1e-3 voxel prior, 16 samples: 0.78; the 300-step
    # lr 2e-3 prior had met 0.7, but it decodes no atom on some CPUs (see test_voxel_model), so it was replaced
    limit = 0.7 if kind == "particle" else 0.85
    assert errors["guided"].mean() < limit * errors["unguided"].mean(), errors


@pytest.mark.parametrize(
    "content, message",
    [
        ("", "not a spectrum file"),
        ("280 1.0\n290 oops\n", "not a spectrum file"),
        ("280 1.0 3\n290 2.0\n", "not a spectrum file"),
        ("281 1.0\n285 2.0\n", "covers 281–285 eV"),
        ("280 1.0\n290 nan\n300 1.0\n", "non-finite"),
        ("280 1.0\n295 2.0\n290 1.0\n300 1.0\n", "strictly monotonic"),
        ("1.0\n2.0\n3.0\n", "3 values without energies"),
    ],
)
def test_bad_spectrum_file_is_one_line(content: str, message: str, tmp_path: Path, capsys) -> None:
    from lightning_gcd.errors import GcdError
    from lightning_gcd.spectra.target import read_spectrum

    path = tmp_path / "target.txt"
    path.write_text(content)
    with pytest.raises(GcdError, match=message) as info:
        read_spectrum(path, ENERGY.tolist())
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_spectrum_file_is_interpolated(tmp_path: Path) -> None:
    from lightning_gcd.spectra.target import read_spectrum

    e = np.linspace(300, 270, 61)  # descending and finer: accepted, interpolated
    path = tmp_path / "target.csv"
    path.write_text("# energy, mu\n" + "\n".join(f"{a},{math.sin(a / 5)}" for a in e))
    out = read_spectrum(path, ENERGY.tolist())
    np.testing.assert_allclose(out.numpy(), np.interp(ENERGY, e[::-1], np.sin(e[::-1] / 5)), atol=1e-6)
    np.save(tmp_path / "t.npy", out.numpy())
    np.testing.assert_allclose(read_spectrum(tmp_path / "t.npy", ENERGY.tolist()).numpy(), out.numpy())


def test_cli_end_to_end(spectrum_h5: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    """gcd fit (a spectrum-conditioned particle model and a forward model), then gcd sample with CFG + DPS."""
    import ase.io

    monkeypatch.chdir(tmp_path)
    common = [
        "--trainer.accelerator",
        "cpu",
        "--trainer.logger",
        "false",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.enable_model_summary",
        "false",
        "--run_root",
        str(tmp_path / "runs"),
        "--data.path",
        str(spectrum_h5),
        "--data.batch_size",
        "5",
        "--seed_everything",
        "0",
    ]
    assert (
        gcd_main(
            [
                "fit",
                "--model",
                "lightning_gcd.spectra.SpectrumModel",
                "--model.hidden",
                "16",
                "--model.layers",
                "1",
                "--data.view",
                "particle",
                "--data.atom_properties",
                "[xanes, xanes_mask]",
                "--trainer.max_epochs",
                "2",
                "--run_name",
                "forward",
                *common,
            ]
        )
        == 0
    )
    assert (
        gcd_main(
            [
                "fit",
                "--model",
                "lightning_gcd.models.particle.ParticleDiffusion",
                "--model.hidden",
                "16",
                "--model.layers",
                "1",
                "--model.sigma_max",
                "0.8",
                "--model.val_samples",
                "0",
                "--data.view",
                "particle",
                "--data.conditions",
                "[xanes]",
                "--trainer.max_epochs",
                "1",
                "--run_name",
                "prior",
                *common,
            ]
        )
        == 0
    )
    target = tmp_path / "target.txt"
    spectrum = synthetic_spectra(_one_structure(spectrum_h5)).mean(0)
    target.write_text("\n".join(f"{e} {v}" for e, v in zip(ENERGY, spectrum, strict=True)))
    out = tmp_path / "guided.extxyz"
    capsys.readouterr()
    rc = gcd_main(
        [
            "sample",
            "--ckpt",
            str(tmp_path / "runs/prior/checkpoints/last.ckpt"),
            "--n",
            "3",
            "--steps",
            "5",
            "--spectrum",
            str(target),
            "--guidance",
            "2",
            "--forward-ckpt",
            str(tmp_path / "runs/forward/checkpoints/last.ckpt"),
            "--dps-scale",
            "100",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert rc == 0, capsys.readouterr().err
    frames = ase.io.read(out, ":")
    assert len(frames) == 3 and all(len(a) == len(frames[0]) > 0 for a in frames)  # density x volume atoms
    assert frames[0].info["dps_scale"] == 100
    # --density auto: the forward model scores unconditional samples at each candidate density (no DPS needed)
    auto = tmp_path / "auto.extxyz"
    capsys.readouterr()
    rc = gcd_main(
        [
            "sample",
            "--ckpt",
            str(tmp_path / "runs/prior/checkpoints/last.ckpt"),
            "--n",
            "2",
            "--steps",
            "5",
            "--spectrum",
            str(target),
            "--forward-ckpt",
            str(tmp_path / "runs/forward/checkpoints/last.ckpt"),
            "--n-atoms",
            "24",
            "--density",
            "auto",
            "--density-scan-points",
            "3",
            "--density-scan-samples",
            "2",
            "--out",
            str(auto),
            "--no-progress",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 0, err
    scan = json.loads((tmp_path / "auto_density_scan.json").read_text())
    assert scan["densities"] == pytest.approx([2.0, 2.5, 3.0])  # default: the training cells' range
    assert np.asarray(scan["errors"]).shape == (3, 2) and scan["n_atoms"] == 16 and "chosen:" in err
    frames = ase.io.read(auto, ":")
    assert [len(a) for a in frames] == [24, 24]
    assert frames[0].info["density_scan_best"] == pytest.approx(scan["best"])
    assert mass_density(frames[0]) == pytest.approx(scan["best"], rel=1e-4)  # sampled at the chosen density

    # one-line errors: DPS without a scale, a spectrum of the wrong length, a diffusion checkpoint as forward model,
    # --density auto without a size or a forward model
    bad = tmp_path / "bad.txt"
    bad.write_text("1\n2\n")
    for extra, message in (
        (["--forward-ckpt", str(tmp_path / "runs/forward/checkpoints/last.ckpt")], "needs --dps-scale"),
        (["--spectrum", str(bad)], "2 values without energies"),
        (
            [
                "--forward-ckpt",
                str(tmp_path / "runs/prior/checkpoints/last.ckpt"),
                "--dps-scale",
                "1",
                "--spectrum",
                str(target),
            ],
            "not a SpectrumModel",
        ),
        (["--relax", "emt"], "EMT has no parameters for C"),  # refused before sampling
        (
            ["--density", "auto", "--forward-ckpt", str(tmp_path / "runs/forward/checkpoints/last.ckpt")],
            "--density auto needs --n-atoms",
        ),
        (["--density", "auto", "--n-atoms", "16"], "--density auto needs --forward-ckpt"),
    ):
        capsys.readouterr()
        args = [
            "sample",
            "--ckpt",
            str(tmp_path / "runs/prior/checkpoints/last.ckpt"),
            "--n",
            "1",
            "--out",
            str(out),
            *extra,
        ]
        if "--spectrum" not in extra:
            args += ["--spectrum", str(target)]
        assert gcd_main(args) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err

    # val/spectrum_l2: a conditioned prior validated with the forward model (the SpectrumL2 callback) logs its
    # samples' spectrum error
    import lightning as L

    from datamodules.datamodule import AtomsDataModule
    from lightning_gcd.models.particle import ParticleDiffusion
    from lightning_gcd.spectra import SpectrumL2

    forward_ckpt = str(tmp_path / "runs/forward/checkpoints/last.ckpt")
    L.seed_everything(0, verbose=False)
    dm = AtomsDataModule(str(spectrum_h5), view="particle", batch_size=5, conditions=["xanes"])
    prior = ParticleDiffusion(hidden=16, layers=1, sigma_max=0.8, val_samples=2, sample_steps=3)
    trainer = quiet_trainer(
        max_epochs=1,
        callbacks=[SpectrumL2(forward_ckpt)],
    )
    trainer.fit(prior, dm)
    value = prior.last_metrics["spectrum_l2"]
    assert np.isfinite(value) and value > 0
    assert float(trainer.callback_metrics["val/spectrum_l2"]) == pytest.approx(value)
    unconditioned = ParticleDiffusion(hidden=16, layers=1, val_samples=2)
    with pytest.raises(GcdError, match="conditioned on the mean spectrum"):
        L.Trainer(
            max_steps=1,
            accelerator="cpu",
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            callbacks=[SpectrumL2(forward_ckpt)],
        ).fit(unconditioned, AtomsDataModule(str(spectrum_h5), view="particle", batch_size=5))
    # the old model option, in a config: one line saying what to write instead
    capsys.readouterr()
    argv = ["fit", "--model", "lightning_gcd.models.particle.ParticleDiffusion", "--data.view", "particle"]
    argv += ["--model.spectrum_forward_ckpt", forward_ckpt, "--trainer.max_steps", "1", "--run_name", "old", *common]
    assert gcd_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "spectrum_forward_ckpt" in err and "lightning_gcd.spectra.SpectrumL2" in err and len(err.splitlines()) == 1


def _one_structure(path: Path) -> Atoms:
    from datamodules.h5format import AtomsH5

    with AtomsH5(path) as data:
        return data.atoms(0)


def test_a_checkpoint_holding_spectrum_forward_ckpt_resumes_with_gcd_fit(
    spectrum_h5: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    """A ``gcd fit`` checkpoint saved while the model option ``spectrum_forward_ckpt`` existed (set, as a
    spectrum-conditioned a-C run had it) resumes under ``gcd fit --ckpt_path``: the option is dropped with a
    warning naming the callback that replaced it, and training goes on from the checkpoint's epoch."""
    monkeypatch.chdir(tmp_path)
    argv = ["fit", "--model", "lightning_gcd.models.particle.ParticleDiffusion", "--model.hidden", "8"]
    argv += ["--model.layers", "1", "--model.val_samples", "0", "--data.path", str(spectrum_h5)]
    argv += ["--data.view", "particle", "--data.conditions", "[xanes]", "--data.batch_size", "5"]
    argv += ["--trainer.accelerator", "cpu", "--trainer.logger", "false", "--trainer.enable_progress_bar", "false"]
    argv += ["--run_root", str(tmp_path / "runs")]
    assert gcd_main([*argv, "--trainer.max_epochs", "1", "--run_name", "before"]) == 0, capsys.readouterr().err
    old = tmp_path / "old.ckpt"
    checkpoint = torch.load(tmp_path / "runs/before/checkpoints/last.ckpt", weights_only=True)
    checkpoint["hyper_parameters"]["spectrum_forward_ckpt"] = "runs/forward/checkpoints/last.ckpt"
    torch.save(checkpoint, old)
    with pytest.warns(UserWarning, match="spectrum_forward_ckpt=.*moved.*lightning_gcd.spectra.SpectrumL2"):
        rc = gcd_main([*argv, "--trainer.max_epochs", "2", "--run_name", "after", "--ckpt_path", str(old)])
    assert rc == 0, capsys.readouterr().err
    resumed = torch.load(tmp_path / "runs/after/checkpoints/last.ckpt", weights_only=True)
    assert resumed["epoch"] == 2 and resumed["global_step"] == 2 * checkpoint["global_step"]
    assert "spectrum_forward_ckpt" not in resumed["hyper_parameters"]


def test_condition_is_standardised_and_older_checkpoints_resume(spectrum_h5: Path, tmp_path: Path) -> None:
    """A conditioned prior standardises its condition with the training structures' statistics (saved with
    the checkpoint); a checkpoint without them (standardize_condition=False, or from before) still loads
    and resumes with the network it was trained with."""
    import lightning as L

    from datamodules.datamodule import AtomsDataModule
    from datamodules.h5format import AtomsH5
    from lightning_gcd.models.base import condition_statistics
    from lightning_gcd.models.loading import load_model
    from lightning_gcd.models.particle import ParticleDiffusion

    def fit(model, steps: int, ckpt_path: str | None = None):
        L.seed_everything(0, verbose=False)
        trainer = quiet_trainer(
            max_steps=steps,
            limit_val_batches=0,
        )
        trainer.fit(
            model,
            AtomsDataModule(str(spectrum_h5), view="particle", batch_size=5, conditions=["xanes"]),
            ckpt_path=ckpt_path,
        )
        return trainer

    with AtomsH5(spectrum_h5) as data:
        train = np.stack([data.structure_property("xanes", int(i)) for i in data.split("train")]).astype(np.float64)
    model = ParticleDiffusion(hidden=16, layers=1, val_samples=0)
    fit(model, 2).save_checkpoint(tmp_path / "standardised.ckpt")
    info = model.hparams["data_info"]
    np.testing.assert_allclose(info["cond_mean"], train.mean(0), rtol=1e-6)
    assert min(info["cond_std"]) >= 0.1 * np.mean(train.std(0)) - 1e-12
    cond = torch.as_tensor(train[:3], dtype=torch.float32)
    embed = model.net.cond
    expected = embed.mlp(
        (cond - torch.as_tensor(info["cond_mean"]).float()) / torch.as_tensor(info["cond_std"]).float()
    )
    torch.testing.assert_close(embed(cond, None, 3), expected)
    reloaded = load_model(tmp_path / "standardised.ckpt")
    torch.testing.assert_close(reloaded.net.cond.cond_std, embed.cond_std)

    plain = ParticleDiffusion(hidden=16, layers=1, val_samples=0, standardize_condition=False)
    fit(plain, 2).save_checkpoint(tmp_path / "plain.ckpt")
    assert "cond_mean" not in plain.hparams["data_info"] and not plain.net.cond.standardised
    assert not load_model(tmp_path / "plain.ckpt").net.cond.standardised
    resumed = ParticleDiffusion(hidden=16, layers=1, val_samples=0)  # standardises by default
    trainer = fit(resumed, 4, ckpt_path=str(tmp_path / "plain.ckpt"))
    assert trainer.global_step == 4 and not resumed.net.cond.standardised
    assert "cond_mean" not in resumed.hparams["data_info"]

    # statistics: a component that does not vary gets a floor, not a zero spread
    values = np.stack([np.arange(4.0), np.full(4, 2.0)], axis=1)
    mean, std = condition_statistics(values)
    np.testing.assert_allclose(mean, [1.5, 2.0])
    np.testing.assert_allclose(std, [np.std(np.arange(4.0)), 0.1 * np.std(np.arange(4.0)) / 2])
    np.testing.assert_allclose(condition_statistics(np.ones((3, 2)))[1], [1.0, 1.0])
    with pytest.raises(GcdError, match="condition statistics"):
        condition_statistics(np.ones(3))


def test_density_scan_reads_the_density_of_a_spectrum(forward_model, tmp_path: Path) -> None:
    """choose_density with the trained forward model (trained on 16-atom cells): three fresh 48-atom cells at
    each of the file's densities stand in for the prior's samples, and each of three other cells' labelled
    mean spectrum must be placed near its own density; the trivial choice (the middle density) is off by
    0.33 g/cm³ on average (measured: 0.07 with the scan)."""
    from datamodules.h5format import AtomsH5
    from lightning_gcd.spectra.density_scan import choose_density, predicted_spectra

    densities = np.array([2.0, 2.5, 3.0])
    with AtomsH5(make_spectrum_file(tmp_path / "pool.h5", n_structures=9, n_atoms=48, seed=3)) as data:
        cells = [data.atoms(i) for i in range(9)]
    pools = [[a for a in cells if abs(mass_density(a) - rho) < 0.01] for rho in densities]
    spectra = np.stack([predicted_spectra(forward_model[0], pool) for pool in pools])  # (3, 3, K)
    misses = []
    with AtomsH5(make_spectrum_file(tmp_path / "targets.h5", n_structures=3, n_atoms=48, seed=7)) as data:
        for i in range(3):
            scan = choose_density(densities, spectra, np.asarray(data.structure_property("xanes", i)))
            misses.append(abs(scan.best - mass_density(data.atoms(i))))
            assert misses[-1] < 0.3, scan.table()
            assert scan.errors.shape == (3, 3) and f"{scan.best:.3f}" in scan.table()
    assert np.mean(misses) < 0.15, misses


def test_density_scan_refinement_and_errors() -> None:
    """The parabola through the best candidate and its neighbours finds a minimum between grid points; at the
    end of the range the best candidate stands; bad input is a GcdError."""
    from lightning_gcd.cli_sample import density_value
    from lightning_gcd.spectra.density_scan import candidate_densities, choose_density, refine

    grid = candidate_densities(1.5, 3.5, 9)
    assert refine(grid, (grid - 2.6) ** 2) == pytest.approx(2.6)
    assert refine(grid, (grid - 4.0) ** 2) == pytest.approx(3.5)
    assert refine(grid, np.array([3, 2, 1, 1, 1, 1, 1, 2, 3.0])) == pytest.approx(
        2.125
    )  # between the first minimum and its level neighbour
    target = np.ones(4)
    spectra = np.stack([np.full((2, 4), 1 + abs(rho - 2.25)) for rho in grid])
    assert choose_density(grid, spectra, target).best == pytest.approx(2.25)
    spectra[3] = np.nan  # no sample with atoms at one density
    with pytest.raises(GcdError, match="no sample with atoms at 2.25"):
        choose_density(grid, spectra, target)
    with pytest.raises(GcdError, match="at least 3 points"):
        candidate_densities(3.0, 2.0, 9)
    assert density_value("Auto") == "auto" and density_value("2.5") == 2.5
    with pytest.raises(Exception, match="'auto'"):
        density_value("dense")
