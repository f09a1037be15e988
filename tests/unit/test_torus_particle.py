"""The torus particle model: wrapped-normal score, pair network symmetries, samplers, Lightning round trip."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from ase.build import bulk
from conftest import quiet_trainer

from lightning_gcd.diffusion.torus import TorusDiffusion, wrap_unit, wrapped_normal_score, wrapped_normal_score_norm
from lightning_gcd.errors import GcdError
from lightning_gcd.nets.fourier_pairs import FourierPairNet
from lightning_gcd.samplers import (
    KnownAtoms,
    TorusEulerMaruyama,
    TorusPredictorCorrector,
    classifier_free_prediction,
    torus_sampler,
)


def brute_force_score(delta: float, sigma: float, images: int = 60) -> float:
    """d/dd log Σ_k N(d + k; 0, σ²) by a central difference over a wide image sum (float64)."""

    def log_p(d: float) -> float:
        exponents = -((d + np.arange(-images, images + 1)) ** 2) / (2 * sigma**2)
        top = exponents.max()
        return float(top + np.log(np.sum(np.exp(exponents - top))))

    h = 1e-6
    return (log_p(delta + h) - log_p(delta - h)) / (2 * h)


@pytest.mark.parametrize("sigma", [0.005, 0.05, 0.2, 0.5, 1.5])
def test_wrapped_normal_score_matches_brute_force_image_sum(sigma: float) -> None:
    deltas = [-0.49, -0.3, -0.01, 0.0, 0.004, 0.17, 0.45, 0.93, 2.2]
    ours = wrapped_normal_score(torch.tensor(deltas, dtype=torch.float64), torch.tensor(sigma, dtype=torch.float64))
    for d, value in zip(deltas, ours.tolist(), strict=True):
        expected = brute_force_score(d, sigma)
        assert value == pytest.approx(expected, rel=1e-5, abs=1e-5 * max(1.0, 1 / sigma**2)), (d, sigma)


def test_score_norm_is_the_expected_squared_score() -> None:
    """Quadrature against Monte Carlo (DiffCSP computes it so) and the small-sigma limit 1/sigma²."""
    gen = torch.Generator().manual_seed(0)
    for sigma in (0.05, 0.2, 0.35):
        d = sigma * torch.randn(400_000, generator=gen, dtype=torch.float64)
        mc = float((wrapped_normal_score(d, torch.tensor(sigma, dtype=torch.float64)) ** 2).mean())
        assert float(wrapped_normal_score_norm(torch.tensor(sigma))) == pytest.approx(mc, rel=0.01)
    assert float(wrapped_normal_score_norm(torch.tensor(0.005))) == pytest.approx(1 / 0.005**2, rel=1e-6)


def test_batch_score_norm_gives_each_row_its_own_sigma_value() -> None:
    """``TorusDiffusion.score_norm`` computes each distinct sigma once; every row must still get its own."""
    sigma = torch.tensor([0.3, 0.005, 0.3, 0.12, 0.5, 0.005, 0.3])
    per_row = torch.stack([wrapped_normal_score_norm(s.double()) for s in sigma]).float()
    assert torch.allclose(TorusDiffusion.score_norm(sigma), per_row, rtol=1e-6)


def test_training_target_is_the_noise_at_small_sigma_and_unit_scale_everywhere() -> None:
    diffusion = TorusDiffusion()
    gen = torch.Generator().manual_seed(1)
    clean = torch.rand(4, 500, 3, generator=gen, dtype=torch.float64)
    eps = torch.randn(4, 500, 3, generator=gen, dtype=torch.float64)
    sigma = torch.tensor([0.005, 0.05, 0.3, 0.5], dtype=torch.float64)
    noisy = wrap_unit(clean + sigma[:, None, None] * eps)
    target = diffusion.target(clean, noisy, sigma)
    torch.testing.assert_close(target[0], eps[0], atol=1e-9, rtol=1e-9)
    for row in range(4):  # E[target²] = 1 at every level: the point of normalising
        assert float((target[row] ** 2).mean()) == pytest.approx(1.0, abs=0.1)


def test_schedule_is_geometric_and_atom_scaling_is_one_at_the_reference_count() -> None:
    diffusion = TorusDiffusion(0.005, 0.5)
    t = torch.tensor([0.0, 0.5, 1.0])
    torch.testing.assert_close(diffusion.sigma(t), torch.tensor([0.005, 0.05, 0.5]))
    scaled = TorusDiffusion(0.005, 0.5, atom_scaled_sigma=True, n_reference=32)
    torch.testing.assert_close(scaled.sigma(t, torch.tensor([32, 32, 32])), diffusion.sigma(t))
    torch.testing.assert_close(scaled.sigma(t, torch.tensor([256, 256, 256])), diffusion.sigma(t) / 2)
    with pytest.raises(ValueError, match="sigma_min"):
        TorusDiffusion(0.5, 0.005)


def random_batch(b: int = 3, n: int = 7, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    frac = torch.rand(b, n, 3, generator=gen, dtype=torch.float64)
    numbers = torch.randint(1, 30, (b, n), generator=gen)
    mask = torch.ones(b, n, dtype=torch.bool)
    mask[0, -2:] = False  # padding in one structure
    numbers[~mask] = 0
    cell = torch.diag_embed(4.0 + 2.0 * torch.rand(b, 3, generator=gen, dtype=torch.float64))
    cell[:, 1, 0] = 0.7  # a sheared cell
    t = torch.rand(b, generator=gen, dtype=torch.float64)
    return frac, numbers, mask, cell, t


NETS = {
    "all_pairs": lambda: FourierPairNet(hidden=32, layers=2, frequencies=8).double(),
    "radius": lambda: FourierPairNet(hidden=32, layers=2, graph="radius", cutoff=3.5, num_rbf=8).double(),
}


@pytest.mark.parametrize("graph", sorted(NETS))
def test_pair_network_is_permutation_equivariant(graph: str) -> None:
    torch.manual_seed(0)
    net = NETS[graph]()
    frac, numbers, mask, cell, t = random_batch()
    out = net(frac, numbers, mask, cell, t)
    perm = torch.tensor([3, 0, 4, 1, 2, 6, 5])
    perm_b = torch.stack([perm if bool(mask[i].all()) else torch.tensor([3, 0, 4, 1, 2, 5, 6]) for i in range(3)])
    idx = perm_b[..., None].expand(-1, -1, 3)
    out_perm = net(frac.gather(1, idx), numbers.gather(1, perm_b), mask.gather(1, perm_b), cell, t)
    torch.testing.assert_close(out_perm, out.gather(1, idx), atol=1e-10, rtol=1e-10)
    assert float(out[0, -2:].abs().max()) == 0.0  # padding gives exactly zero


@pytest.mark.parametrize("graph", sorted(NETS))
def test_pair_network_is_invariant_to_lattice_translations_of_single_atoms(graph: str) -> None:
    """Adding an integer lattice vector to any atom (the same point of the crystal) changes nothing."""
    torch.manual_seed(0)
    net = NETS[graph]()
    frac, numbers, mask, cell, t = random_batch()
    shifts = torch.randint(-2, 3, frac.shape, generator=torch.Generator().manual_seed(5)).to(frac.dtype)
    assert float(shifts.abs().sum()) > 0
    torch.testing.assert_close(
        net(frac + shifts, numbers, mask, cell, t), net(frac, numbers, mask, cell, t), atol=1e-9, rtol=1e-9
    )


@pytest.mark.parametrize("graph", sorted(NETS))
def test_pair_network_is_invariant_to_a_global_translation(graph: str) -> None:
    torch.manual_seed(0)
    net = NETS[graph]()
    frac, numbers, mask, cell, t = random_batch()
    moved = wrap_unit(frac + torch.tensor([0.31, -0.12, 0.77], dtype=frac.dtype))
    torch.testing.assert_close(
        net(moved, numbers, mask, cell, t), net(frac, numbers, mask, cell, t), atol=1e-9, rtol=1e-9
    )
    # and it does see the atoms' arrangement: moving one atom changes the output
    frac2 = frac.clone()
    frac2[1, 0] += 0.1
    assert not torch.allclose(net(frac2, numbers, mask, cell, t), net(frac, numbers, mask, cell, t))


@pytest.mark.parametrize("sampler", [TorusEulerMaruyama(300), TorusPredictorCorrector(300, step_lr=1e-5)])
def test_samplers_with_the_exact_score_reach_a_point_mass(sampler) -> None:
    """Data = one configuration c: the marginal at sigma is the wrapped normal around c and its score is
    known exactly, so a correct sampler from uniform positions ends at c (to ~sigma_min per coordinate)."""
    diffusion = TorusDiffusion(0.005, 0.5)
    gen = torch.Generator().manual_seed(0)
    center = torch.rand(8, 5, 3, generator=gen, dtype=torch.float64)
    calls = []

    def score(frac, t, sigma):
        calls.append(t)
        return frac, wrapped_normal_score(frac - center, sigma[:, None, None])

    def noise():
        return torch.randn(8, 5, 3, generator=gen, dtype=torch.float64)

    start = torch.rand(8, 5, 3, generator=gen, dtype=torch.float64)
    out = sampler.run(start, score, diffusion, torch.full((8,), 5), noise)
    error = (out - center) - torch.round(out - center)
    assert float(error.abs().max()) < 4 * 0.005
    assert len(calls) == sampler.evaluations == 300 * sampler.evaluations_per_level
    assert float(out.min()) >= 0 and float(out.max()) < 1


def test_sampler_factory_and_step_validation() -> None:
    assert torus_sampler("pc", 10).evaluations == 20
    assert torus_sampler("em", 10).evaluations == 10
    with pytest.raises(ValueError, match="unknown torus sampler"):
        torus_sampler("ddim", 10)
    with pytest.raises(ValueError, match="steps"):
        TorusEulerMaruyama(0)


def test_known_atoms_are_noised_then_exact() -> None:
    gen = torch.Generator().manual_seed(0)
    known = torch.rand(2, 4, 3, generator=gen)
    fixed = torch.tensor([[True, False, True, False], [False, False, False, True]])
    hook = KnownAtoms(known, fixed, lambda: torch.randn(2, 4, 3, generator=gen))
    frac = torch.rand(2, 4, 3, generator=gen)
    noised = hook.impose(frac, torch.tensor([0.01, 0.01]))
    assert torch.equal(noised[~fixed], frac[~fixed])
    delta = noised[fixed] - known[fixed]
    assert 0 < float((delta - torch.round(delta)).abs().max()) < 0.06
    done = hook.finish(frac)
    assert torch.equal(done[fixed], known[fixed]) and torch.equal(done[~fixed], frac[~fixed])


def test_classifier_free_prediction_scales() -> None:
    torch.manual_seed(0)
    net = FourierPairNet(hidden=16, layers=1, frequencies=4, cond_dim=2).double()
    frac, numbers, mask, cell, t = random_batch()
    cond = torch.randn(3, 2, dtype=torch.float64)
    uncond = classifier_free_prediction(net, frac, numbers, mask, cell, t, cond, 0.0)
    conditional = classifier_free_prediction(net, frac, numbers, mask, cell, t, cond, 1.0)
    torch.testing.assert_close(uncond, net(frac, numbers, mask, cell, t))
    assert not torch.allclose(uncond, conditional)
    twice = classifier_free_prediction(net, frac, numbers, mask, cell, t, cond, 2.0)
    torch.testing.assert_close(twice, uncond + 2.0 * (conditional - uncond), atol=1e-10, rtol=1e-10)


# ------------------------------------------------------------------------------------------------------
# the Lightning model
def fcc_datamodule(fcc_h5, batch_size: int = 8):
    from datamodules.datamodule import AtomsDataModule

    return AtomsDataModule(str(fcc_h5), view="particle", batch_size=batch_size, num_workers=0, build={})


def test_torus_model_fits_samples_and_reloads(fcc_h5, tmp_path) -> None:
    """Real Trainer, real HDF5 data: a few steps, validation sampling with metrics, checkpoint round trip,
    in-painting keeps the fixed atoms, CLI-style sampling of the template's cell only."""
    import lightning as L

    from lightning_gcd.models.loading import load_model
    from lightning_gcd.models.particle_torus import TorusParticleDiffusion

    L.seed_everything(0, verbose=False)
    model = TorusParticleDiffusion(
        hidden=32, layers=2, frequencies=8, val_samples=4, sample_steps=5, lr=1e-3, warmup_steps=2
    )
    trainer = quiet_trainer(
        tmp_path,
        max_steps=6,
        limit_val_batches=1,
    )
    trainer.fit(model, fcc_datamodule(fcc_h5))
    assert trainer.global_step == 6
    assert {"phase_match", "rdf_l1"} <= set(model.last_metrics)
    assert model.last_samples is not None and int(model.last_samples.n_atoms.min()) == 32
    ckpt = tmp_path / "torus.ckpt"
    trainer.save_checkpoint(ckpt)
    loaded = load_model(str(ckpt))
    assert type(loaded) is TorusParticleDiffusion
    for key, value in model.net.state_dict().items():
        torch.testing.assert_close(loaded.net.state_dict()[key], value)
    template = loaded.sample_template(3)
    assert template["numbers"].shape == (3, 32)
    first = loaded.sample(template, steps=4, seed=3, progress=False)
    again = loaded.sample(loaded.sample_template(3), steps=4, seed=3, progress=False)
    np.testing.assert_array_equal(first[0].positions, again[0].positions)  # seeded
    assert loaded.sample_evaluations(4, "pc") == 8

    # in-painting: the first 10 atoms of a real structure stay where they are
    atoms = bulk("Cu", "fcc", a=3.615, cubic=True) * (2, 2, 2)
    template = loaded.sample_template(2)
    known = torch.tensor(atoms.get_scaled_positions(), dtype=torch.float32).expand(2, -1, -1).clone()
    fixed = torch.zeros(2, 32, dtype=torch.bool)
    fixed[:, :10] = True
    template.update({"inpaint_frac": known, "inpaint_mask": fixed})
    out = loaded.generate(template, steps=4, generator=torch.Generator().manual_seed(0))
    assert not out.frac_coords.requires_grad  # generate() keeps no graph (a 1,000-level run ran out of memory)
    torch.testing.assert_close(out.frac_coords[:, :10], known[:, :10] % 1.0)
    assert not torch.allclose(out.frac_coords[:, 10:], known[:, 10:])

    with pytest.raises(GcdError, match="tied to its training cell"):
        loaded.sample_template(2, supercell=(2, 2, 2))
    with pytest.raises(GcdError, match="posterior"):
        loaded.generate(loaded.sample_template(1), steps=2, posterior=object())


def test_radius_torus_model_samples_a_supercell(fcc_h5, tmp_path) -> None:
    import lightning as L

    from lightning_gcd.models.particle_torus import TorusParticleDiffusion

    L.seed_everything(0, verbose=False)
    model = TorusParticleDiffusion(
        hidden=16, layers=1, graph="radius", cutoff=4.0, atom_scaled_sigma=True, val_samples=0, sample_steps=3
    )
    trainer = quiet_trainer(
        tmp_path,
        max_steps=2,
        limit_val_batches=0,
    )
    trainer.fit(model, fcc_datamodule(fcc_h5))
    template = model.sample_template(2, supercell=(2, 2, 2))
    assert template["numbers"].shape == (2, 256)
    samples = model.sample(template, steps=3, progress=False)
    assert [len(a) for a in samples] == [256, 256]
    # the supercell's fractional noise is half the training cell's (same Cartesian noise)
    n = torch.tensor([32, 256])
    sig = model.diffusion.sigma(torch.tensor([1.0, 1.0]), n)
    assert float(sig[1] / sig[0]) == pytest.approx(0.5)


def test_sampling_shows_a_bar_over_each_batchs_noise_levels(fcc_h5, tmp_path, capsys) -> None:
    """One batch of PC-1000 runs for tens of minutes on a CPU: besides the bar over structures (which moves only
    when a batch ends) ``sample`` shows the levels of the batch in flight."""
    import lightning as L

    from lightning_gcd.models.particle_torus import TorusParticleDiffusion

    L.seed_everything(0, verbose=False)
    model = TorusParticleDiffusion(hidden=16, layers=1, val_samples=0, sample_steps=3)
    quiet_trainer(tmp_path, max_steps=1, limit_val_batches=0).fit(model, fcc_datamodule(fcc_h5))
    capsys.readouterr()
    model.sample(model.sample_template(2), steps=3, progress=True)
    err = capsys.readouterr().err
    assert "sampling" in err and "torus pc" in err and "/3 [" in err
    model.sample(model.sample_template(2), steps=3, progress=False)
    assert capsys.readouterr().err == ""


def test_torus_model_rejects_the_voxel_view(fcc_h5) -> None:
    from datamodules.datamodule import AtomsDataModule
    from lightning_gcd.models.particle_torus import TorusParticleDiffusion

    model = TorusParticleDiffusion(hidden=16, layers=1)
    dm = AtomsDataModule(str(fcc_h5), view="voxel", batch_size=4, num_workers=0, build={})
    with pytest.raises(GcdError, match="needs data.view: particle"):
        model.data_info_from(dm)
    assert math.isfinite(model.hparams.step_lr)


def test_sampler_started_from_a_noised_point_mass_returns_to_it() -> None:
    """``start_time`` < 1 runs only the schedule's levels at or below it, from a structure noised to that level."""
    diffusion = TorusDiffusion(0.005, 0.5)
    sampler = TorusPredictorCorrector(100)
    assert len(sampler.times(0.3)) == 30 and max(sampler.times(0.3)) <= 0.3
    gen = torch.Generator().manual_seed(2)
    center = torch.rand(4, 6, 3, generator=gen, dtype=torch.float64)
    sigma = diffusion.sigma(torch.tensor([0.3], dtype=torch.float64))
    start = center + sigma * torch.randn(4, 6, 3, generator=gen, dtype=torch.float64)
    calls = []

    def score(frac, t, s):
        calls.append(t)
        return frac, wrapped_normal_score(frac - center, s[:, None, None])

    out = sampler.run(
        start,
        score,
        diffusion,
        torch.full((4,), 6),
        lambda: torch.randn(4, 6, 3, generator=gen, dtype=torch.float64),
        start_time=0.3,
    )
    error = (out - center) - torch.round(out - center)
    assert float(error.abs().max()) < 4 * 0.005 and len(calls) == 2 * 30
    with pytest.raises(ValueError, match="below the schedule"):
        TorusEulerMaruyama(3).run(start, score, diffusion, torch.full((4,), 6), lambda: start, start_time=-0.1)


def test_trapping_script_scores_sampling_from_noised_crystals(fcc_h5, tmp_path) -> None:
    import importlib.util
    import json

    import lightning as L
    from conftest import REPO

    from lightning_gcd.models.particle_torus import TorusParticleDiffusion

    L.seed_everything(0, verbose=False)
    model = TorusParticleDiffusion(hidden=16, layers=1, frequencies=4, val_samples=0)
    trainer = quiet_trainer(
        tmp_path,
        max_steps=2,
        limit_val_batches=0,
    )
    trainer.fit(model, fcc_datamodule(fcc_h5))
    ckpt = tmp_path / "torus.ckpt"
    trainer.save_checkpoint(ckpt)
    spec = importlib.util.spec_from_file_location("trapping", REPO / "experiments" / "crystals" / "trapping.py")
    trapping = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(trapping)
    result = trapping.main(
        [
            "--ckpt",
            str(ckpt),
            "--dataset",
            str(fcc_h5),
            "--start-times",
            "0.01",
            "1.0",
            "--samplers",
            "pc-50",
            "em-4",
            "--samples",
            "3",
            "--out",
            str(tmp_path / "trap"),
        ]
    )
    rows = {(r["sampler"], r["start_time"]): r for r in result["rows"]}
    assert set(rows) == {("pc", 0.01), ("pc", 1.0), ("em", 0.01), ("em", 1.0)}
    # from the lowest level (σ 0.018 Å) even an untrained network leaves the crystal a crystal
    assert rows[("pc", 0.01)]["phase_match"] == 1.0 and rows[("pc", 0.01)]["overlap_fraction"] == 0.0
    assert rows[("pc", 1.0)]["sigma_angstrom"] == pytest.approx(0.5 * 7.23, rel=0.01)
    assert json.loads((tmp_path / "trap" / "trapping.json").read_text())["samples"] == 3
    assert (tmp_path / "trap" / "trapping.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(SystemExit, match="pc-LEVELS"):
        trapping.parse_sampler("ddpm-10")


def test_all_pairs_blocks_give_the_whole_batch_result(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a CPU the no-grad all-pairs rounds run on blocks of structures: the outputs equal those of the whole
    batch at once; with gradients the network takes the whole batch it is given."""
    from lightning_gcd.nets import fourier_pairs

    torch.manual_seed(0)
    net = FourierPairNet(hidden=16, layers=2, frequencies=4).double()
    b, n = 7, 6
    frac = torch.rand(b, n, 3, dtype=torch.float64)
    numbers = torch.full((b, n), 29)
    mask = torch.ones(b, n, dtype=torch.bool)
    mask[2, 4:] = False  # a structure with padding inside a block
    lengths = torch.tensor([[3.6, 3.6 + 0.2 * i, 3.6] for i in range(b)], dtype=torch.float64)
    cell = torch.diag_embed(lengths)  # a different cell shape per structure
    t = torch.rand(b, dtype=torch.float64)

    monkeypatch.setattr(fourier_pairs, "PAIR_BLOCK_ELEMENTS", 1 << 40)  # one block: the whole batch
    with torch.no_grad():
        whole = net(frac, numbers, mask, cell, t)
    monkeypatch.setattr(fourier_pairs, "PAIR_BLOCK_ELEMENTS", 3 * n * n * 16)  # blocks of 3, 3 and 1
    rounds = []
    monkeypatch.setattr(
        net, "_all_pairs", lambda h, *rest: rounds.append(len(h)) or FourierPairNet._all_pairs(net, h, *rest)
    )
    with torch.no_grad():
        blocked = net(frac, numbers, mask, cell, t)
    assert rounds == [3, 3, 1]
    assert torch.allclose(blocked, whole, atol=1e-12)
    net(frac, numbers, mask, cell, t)
    assert rounds[3:] == [7]


def fixed_noise_loss(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Make the torus model's training loss deterministic (each structure's noise seeded by its index, as in
    validation), so that a batch in chunks and the whole batch see the same noise; returns the chunk sizes seen."""
    from lightning_gcd.models.particle_torus import TorusParticleDiffusion

    seen: list[int] = []
    loss = TorusParticleDiffusion.diffusion_loss

    def fixed(self, batch, fixed_noise: bool = False):
        seen.append(len(batch["index"]))
        return loss(self, batch, fixed_noise=True)

    monkeypatch.setattr(TorusParticleDiffusion, "diffusion_loss", fixed)
    return seen


def test_training_in_chunks_gives_the_whole_batch_loss_and_gradients(fcc_h5, monkeypatch) -> None:
    """A CPU batch above ``PAIR_BLOCK_ELEMENTS`` is trained in chunks (forward and backward per chunk): the
    loss and the parameters' gradients equal the whole batch's, with chunks of unequal atom counts."""
    from lightning_gcd.models.particle_torus import TorusParticleDiffusion
    from lightning_gcd.nets import fourier_pairs

    torch.manual_seed(0)
    datamodule = fcc_datamodule(fcc_h5)
    model = TorusParticleDiffusion(hidden=16, layers=2, frequencies=4, val_samples=0)
    datamodule.setup("fit")
    model.hparams["data_info"] = info = model.data_info_from(datamodule)
    model._build(info)  # what setup() does with a Trainer's datamodule
    batch = next(iter(datamodule.train_dataloader()))
    batch["mask"][1, 20:] = False  # chunks with different atom counts: each weighs its share of the atoms
    batch["numbers"][1, 20:] = 0
    b, n = batch["frac_coords"].shape[:2]
    seen = fixed_noise_loss(monkeypatch)

    def loss_and_gradients() -> tuple[float, list[torch.Tensor]]:
        model.net.zero_grad()
        loss = model.training_loss(batch)
        loss.backward()
        return float(loss.detach()), [p.grad.clone() for p in model.net.parameters()]

    monkeypatch.setattr(fourier_pairs, "PAIR_BLOCK_ELEMENTS", 1 << 40)
    whole, whole_grads = loss_and_gradients()
    monkeypatch.setattr(fourier_pairs, "PAIR_BLOCK_ELEMENTS", 3 * n * n * 16)  # chunks of 3, 3, 2
    chunked, chunked_grads = loss_and_gradients()
    assert seen == [b, 3, 3, 2]
    assert chunked == pytest.approx(whole, rel=1e-6)
    for g, w in zip(chunked_grads, whole_grads, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-7)


def test_a_fit_in_chunks_ends_at_the_whole_batch_weights(fcc_h5, tmp_path, monkeypatch) -> None:
    """The real Trainer (gradient clipping, AdamW, EMA) over three steps: training every batch in chunks gives
    the weights of training it whole."""
    import lightning as L

    from lightning_gcd.models.particle_torus import TorusParticleDiffusion
    from lightning_gcd.nets import fourier_pairs

    seen = fixed_noise_loss(monkeypatch)

    def fit(chunk_elements: int) -> dict[str, torch.Tensor]:
        monkeypatch.setattr(fourier_pairs, "PAIR_BLOCK_ELEMENTS", chunk_elements)
        L.seed_everything(0, verbose=False)
        model = TorusParticleDiffusion(hidden=16, layers=2, frequencies=4, val_samples=0, lr=1e-3, ema_decay=0.9)
        trainer = quiet_trainer(
            tmp_path,
            max_steps=3,
            gradient_clip_val=0.5,
            limit_val_batches=0,
        )
        trainer.fit(model, fcc_datamodule(fcc_h5))
        return {**model.net.state_dict(), **{f"ema.{k}": v for k, v in model.ema.state_dict().items()}}

    whole = fit(1 << 40)
    chunked = fit(3 * 32 * 32 * 16)  # batches of 32-atom cells in chunks of 3
    batches = seen[:3]
    assert seen[3:] == [size for b in batches for size in [3] * (b // 3) + [b % 3] * (b % 3 > 0)] and max(batches) > 3
    for key, value in whole.items():
        torch.testing.assert_close(chunked[key], value, rtol=1e-5, atol=1e-6)


def _fit_stopped_at(fcc_h5, tmp_path, stop_at: int, val_every: int) -> tuple[int, list[int], list[int]]:
    """Fit a tiny torus model whose callback stops training after ``stop_at`` steps, validating every
    ``val_every`` steps; returns the last step, the steps validated at and the steps sampled at."""
    import lightning as L

    from lightning_gcd.models.particle_torus import TorusParticleDiffusion

    class StopAt(L.Callback):
        def __init__(self) -> None:
            self.validated_at: list[int] = []

        def on_train_batch_end(self, trainer, *args) -> None:
            trainer.should_stop = trainer.should_stop or trainer.global_step == stop_at

        def on_validation_end(self, trainer, pl_module) -> None:
            self.validated_at.append(trainer.global_step)

    L.seed_everything(0, verbose=False)
    model = TorusParticleDiffusion(hidden=16, layers=2, frequencies=4, val_samples=2, sample_steps=2, warmup_steps=1)
    sampled_steps: list[int] = []
    sample = model._sample_and_evaluate

    def counted_sample() -> None:
        sampled_steps.append(model.global_step)
        sample()

    model._sample_and_evaluate = counted_sample
    stop = StopAt()
    trainer = quiet_trainer(
        tmp_path,
        max_steps=20,
        limit_val_batches=1,
        val_check_interval=val_every,
        check_val_every_n_epoch=None,
        callbacks=[stop],
    )
    trainer.fit(model, fcc_datamodule(fcc_h5, batch_size=4))
    return trainer.global_step, stop.validated_at, sampled_steps


@pytest.mark.parametrize(("stop_at", "sampled_at"), [(3, [2]), (4, [2, 4])])
def test_a_stop_between_validations_validates_without_sampling(fcc_h5, tmp_path, stop_at, sampled_at) -> None:
    """A callback that stops training between two scheduled validations (a time-limited chunk's end) makes
    Lightning validate once more; the model logs val/loss there but samples only at the scheduled steps."""
    step, validated_at, sampled_steps = _fit_stopped_at(fcc_h5, tmp_path, stop_at, val_every=2)
    assert step == stop_at
    assert validated_at == [2, stop_at]
    assert sampled_steps == sampled_at


def test_a_stop_at_an_epoch_end_off_the_step_schedule_validates_without_sampling(fcc_h5, tmp_path) -> None:
    """Validating every N steps (``check_val_every_n_epoch=None``), an epoch's end is not on the schedule: a
    chunk that ends on an epoch's last batch validates (Lightning's rule) but must not sample there."""
    dm = fcc_datamodule(fcc_h5, batch_size=4)
    dm.setup("fit")
    epoch = len(dm.train_dataloader())  # batches per epoch
    step, validated_at, sampled_steps = _fit_stopped_at(fcc_h5, tmp_path, epoch, val_every=epoch + 1)
    assert step == epoch
    assert validated_at == [epoch]
    assert sampled_steps == []
