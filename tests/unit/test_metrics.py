"""Structure metrics: g(r) and coordination against ASE, phase matching, counts, DDP-exact states."""

from __future__ import annotations

import functools
import itertools
import sys

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk
from ase.geometry.rdf import get_rdf
from ase.neighborlist import neighbor_list

from datamodules.builders.crystals import CrystalSpec, crystal_records, default_spec
from datamodules.h5format import AtomsH5, random_splits, write_dataset
from lightning_gcd import periodic_vesin
from lightning_gcd.metrics import (
    AtomCount,
    CoordinationHistogram,
    MinDistanceViolations,
    PhaseMatch,
    RadialDistribution,
    StructureMetrics,
    _pairs,
    coordination_numbers,
    cutoff_from_rdf_minimum,
    ideal_for_dataset,
    local_structure_types,
    phase_matches,
    rdf_l1,
    sp_fractions,
    structure_rdf,
)
from lightning_gcd.metrics.rdf import bin_edges
from lightning_gcd.periodic import perpendicular_widths
from lightning_gcd.structures import StructureBatch


def rattled(atoms: Atoms, sigma: float, seed: int, translate: bool = True, shuffle: bool = False) -> Atoms:
    rng = np.random.default_rng(seed)
    out = atoms.copy()
    out.positions = out.positions + rng.normal(0.0, sigma, out.positions.shape)
    if translate:
        out.positions = out.positions + rng.random(3) @ np.asarray(out.cell[:])
    if shuffle:
        out = out[rng.permutation(len(out))]
    out.wrap()
    out.pbc = True
    return out


def triclinic_random(seed: int, n: int = 60) -> Atoms:
    rng = np.random.default_rng(seed)
    cell = np.array([[11.0, 0.0, 0.0], [3.1, 10.5, 0.0], [-2.4, 2.2, 11.8]])
    frac = rng.random((n, 3))
    numbers = rng.choice([6, 8], size=n)
    return Atoms(numbers=numbers, scaled_positions=frac, cell=cell, pbc=True)


def cases() -> dict[str, tuple[Atoms, float]]:
    """name -> (structure, r_max) with cells at least 2 r_max wide (ASE's requirement)."""
    return {
        "fcc": (rattled(bulk("Cu", "fcc", a=3.61, cubic=True) * (3, 3, 3), 0.05, 1), 5.0),
        "bcc": (rattled(bulk("W", "bcc", a=3.165, cubic=True) * (4, 4, 4), 0.05, 2), 6.0),
        "triclinic": (triclinic_random(3), 4.5),
    }


# --------------------------------------------------------------------------------------------------
# g(r)
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["fcc", "bcc", "triclinic"])
def test_rdf_equals_ase(name):
    atoms, r_max = cases()[name]
    widths = perpendicular_widths(torch.as_tensor(atoms.cell[:])[None])[0]
    assert float(widths.min()) >= 2 * r_max
    g_ase, rr = get_rdf(atoms, r_max, 100)
    g, valid = structure_rdf(atoms, r_max, 100)
    assert valid.all()
    np.testing.assert_allclose(g[0, 0].numpy(), g_ase, atol=1e-4, rtol=0)
    metric = RadialDistribution(r_max, 100)
    metric.update(StructureBatch.from_atoms([atoms], dtype=torch.float64))
    np.testing.assert_allclose(metric.compute().numpy(), g_ase, atol=1e-4, rtol=0)
    np.testing.assert_allclose(metric.r, rr)


def test_rdf_padded_batch_mean_equals_ase_mean():
    structures = [c[0] for c in cases().values()]
    r_max = 4.5
    batch = StructureBatch.from_atoms(structures, dtype=torch.float64)  # different N and cells: padding
    g, valid = structure_rdf(batch, r_max, 90)
    for b, atoms in enumerate(structures):
        np.testing.assert_allclose(g[b, 0].numpy(), get_rdf(atoms, r_max, 90, no_dists=True), atol=1e-4, rtol=0)
    metric = RadialDistribution(r_max, 90)
    metric.update(batch)
    np.testing.assert_allclose(
        metric.compute().numpy(), get_rdf(structures, r_max, 90, no_dists=True), atol=1e-4, rtol=0
    )


def test_partial_rdf_rocksalt_equals_ase():
    atoms = rattled(bulk("NaCl", "rocksalt", a=5.64, cubic=True) * (2, 2, 2), 0.05, 4)
    pairs = [(11, 17), (17, 11), (11, 11), ("Cl", "Cl")]
    g, valid = structure_rdf(atoms, 5.5, 110, pairs=pairs)
    assert valid.all()
    for p, (z1, z2) in enumerate(pairs):
        np.testing.assert_allclose(
            g[0, p].numpy(), get_rdf(atoms, 5.5, 110, elements=(z1, z2), no_dists=True), atol=1e-4, rtol=0
        )
    metric = RadialDistribution(5.5, 110, pairs=pairs)
    metric.update(atoms)
    assert metric.compute().shape == (4, 110)
    # a structure without chlorine leaves the Na-Cl rows undefined rather than zero
    metric.update(bulk("Na", "bcc", a=4.23, cubic=True) * (3, 3, 3))
    assert metric.n_structures.tolist() == [1.0, 1.0, 2.0, 1.0]


def brute_force_rdf(atoms: Atoms, r_max: float, n_bins: int) -> np.ndarray:
    """Image sum over every shift that can reach r_max, binned and normalized as ASE."""
    cell = np.asarray(atoms.cell[:])
    widths = perpendicular_widths(torch.as_tensor(cell)[None])[0].numpy()
    reach = np.ceil(r_max / widths).astype(int) + 1
    pos = atoms.positions
    dr = r_max / n_bins
    counts = np.zeros(n_bins + 1)
    for s in itertools.product(*[range(-k, k + 1) for k in reach]):
        d = np.linalg.norm(pos[None, :, :] + np.array(s) @ cell - pos[:, None, :], axis=-1).ravel()
        idx = np.ceil(d / dr).astype(int)
        idx = idx[(idx >= 1) & (idx <= n_bins)]
        counts += np.bincount(idx, minlength=n_bins + 1)
    e = bin_edges(r_max, n_bins)
    shells = 4 * np.pi / 3 * (e[1:] ** 3 - e[:-1] ** 3)
    n = len(atoms)
    return counts[1:] / (n * n / atoms.cell.volume * shells)


@pytest.mark.parametrize("kind", ["fcc_primitive", "small_triclinic"])
def test_rdf_small_cells_match_brute_force_image_sum(kind):
    if kind == "fcc_primitive":
        atoms = rattled(bulk("Cu", "fcc", a=3.61), 0.0, 0, translate=False)  # 1 atom, widths ~2.1 Å
    else:
        rng = np.random.default_rng(5)
        cell = np.array([[3.0, 0.0, 0.0], [1.4, 2.8, 0.0], [-0.9, 0.7, 3.3]])
        atoms = Atoms("C3", scaled_positions=rng.random((3, 3)), cell=cell, pbc=True)
    g, _ = structure_rdf(atoms, 6.0, 60)
    np.testing.assert_allclose(g[0, 0].numpy(), brute_force_rdf(atoms, 6.0, 60), atol=1e-9, rtol=1e-9)


@pytest.mark.skipif(not periodic_vesin.available(), reason="the vesin extra is not installed")
def test_metrics_through_the_vesin_search_equal_auto(monkeypatch):
    """g(r) and coordination with ``method="vesin"`` (half lists in vesin's pair order, small cells with many
    images, a padded batch) equal those of ``auto``'s search up to the rounding of sums in another order."""
    structures = [c[0] for c in cases().values()] + [
        rattled(bulk("Cu", "fcc", a=3.61), 0.0, 0, translate=False),  # 1 atom, widths ~2.1 Å < r_max
        Atoms("C3", scaled_positions=np.random.default_rng(5).random((3, 3)), cell=np.eye(3) * 2.7, pbc=True),
    ]
    batch = StructureBatch.from_atoms(structures, dtype=torch.float64)
    expected_g, expected_cn = structure_rdf(batch, 6.0, 60)[0], coordination_numbers(batch, 2.9)
    monkeypatch.setattr(_pairs, "neighbor_search", functools.partial(_pairs.neighbor_search, method="vesin"))
    torch.testing.assert_close(structure_rdf(batch, 6.0, 60)[0], expected_g, rtol=0, atol=1e-12)
    assert torch.equal(coordination_numbers(batch, 2.9), expected_cn)
    assert expected_cn[3, 0] == 12 and expected_g[3].abs().sum() > 0  # the 1-atom cell sees its own images


def test_float32_and_float64_searches_agree():
    atoms, r_max = cases()["triclinic"]
    atoms = atoms.copy()
    atoms.positions[0] = atoms.cell[0] * (1 - 1e-12)  # float32 rounds this coordinate to 1.0
    g32, _ = structure_rdf(atoms, r_max, 90, search_dtype=torch.float32)
    g64, _ = structure_rdf(atoms, r_max, 90, search_dtype=torch.float64)
    assert torch.equal(g32, g64)
    np.testing.assert_allclose(g64[0, 0].numpy(), get_rdf(atoms, r_max, 90, no_dists=True), atol=1e-4, rtol=0)
    c32 = coordination_numbers(atoms, 2.5, search_dtype=torch.float32)
    c64 = coordination_numbers(atoms, 2.5, search_dtype=torch.float64)
    assert torch.equal(c32, c64)


def test_rdf_l1():
    assert rdf_l1(np.ones(10), np.zeros(10), 0.1) == pytest.approx(1.0)
    t = rdf_l1(torch.ones(2, 10), torch.zeros(10), 0.5)
    assert torch.allclose(t, torch.tensor([5.0, 5.0], dtype=torch.float64))


# --------------------------------------------------------------------------------------------------
# coordination
# --------------------------------------------------------------------------------------------------
def ase_counts(atoms: Atoms, cutoff) -> np.ndarray:
    return np.bincount(neighbor_list("i", atoms, cutoff), minlength=len(atoms))


@pytest.mark.parametrize("name", ["fcc", "bcc", "triclinic"])
def test_coordination_equals_ase(name):
    atoms, _ = cases()[name]
    for cutoff in (2.2, 3.0, 3.9):
        np.testing.assert_array_equal(coordination_numbers(atoms, cutoff)[0].numpy(), ase_counts(atoms, cutoff))


def test_coordination_pair_cutoffs_equal_ase():
    atoms = rattled(bulk("NaCl", "rocksalt", a=5.64, cubic=True) * (2, 2, 2), 0.1, 6)
    for cutoffs in ({(11, 17): 3.2}, {("Na", "Cl"): 3.2, ("Na", "Na"): 4.3}, {(17, 17): 4.1, (11, 17): 2.9}):
        np.testing.assert_array_equal(coordination_numbers(atoms, cutoffs)[0].numpy(), ase_counts(atoms, cutoffs))
    # small cell: the atom's own images count, as in ASE
    prim = bulk("Cu", "fcc", a=3.61)
    np.testing.assert_array_equal(coordination_numbers(prim, 3.0)[0].numpy(), ase_counts(prim, 3.0))
    assert int(coordination_numbers(prim, 3.0)[0, 0]) == 12


def test_coordination_histogram_fractions_and_overflow():
    fcc = rattled(bulk("Cu", "fcc", a=3.61, cubic=True) * (2, 2, 2), 0.03, 7)
    bcc = rattled(bulk("W", "bcc", a=3.165, cubic=True) * (3, 3, 3), 0.03, 8)
    m = CoordinationHistogram(3.0, max_cn=10)
    m.update([fcc, bcc])
    out = m.compute()
    assert sorted(out) == [29, 74]
    assert out[29][10] == 1.0  # 12 neighbours counted in the last (">= max_cn") bin
    assert out[74][8] == 1.0
    assert torch.isnan(m.fractions(6)).all()


def test_cutoff_from_rdf_minimum():
    fcc = rattled(bulk("Cu", "fcc", a=3.61, cubic=True) * (3, 3, 3), 0.05, 9)
    g, _ = structure_rdf(fcc, 5.0, 100)
    r = RadialDistribution(5.0, 100).r
    cut = cutoff_from_rdf_minimum(r, g[0, 0].numpy())
    assert 2.9 < cut < 3.3  # between the first (2.55 Å) and second (3.61 Å) shells
    np.testing.assert_array_equal(coordination_numbers(fcc, cut)[0].numpy(), 12)
    # a liquid-like curve: peak at 1.5, minimum at 2.0
    r = np.linspace(0.05, 5.0, 100)
    g = (
        1
        + 2.0 * np.exp(-(((r - 1.5) / 0.15) ** 2))
        - 0.6 * np.exp(-(((r - 2.0) / 0.2) ** 2))
        + 0.5 * np.exp(-(((r - 2.5) / 0.2) ** 2))
    )
    g[r < 1.1] = 0
    assert cutoff_from_rdf_minimum(r, g) == pytest.approx(2.0, abs=0.1)
    with pytest.raises(ValueError):
        cutoff_from_rdf_minimum(r, np.zeros_like(r))


def test_sp_fractions():
    diamond = rattled(bulk("C", "diamond", a=3.567, cubic=True) * (2, 2, 2), 0.02, 10)
    assert sp_fractions(diamond) == {"sp": 0.0, "sp2": 0.0, "sp3": 1.0}
    graphene = Atoms(
        "C2",
        scaled_positions=[[1 / 3, 2 / 3, 0.5], [2 / 3, 1 / 3, 0.5]],
        cell=[[2.46, 0, 0], [-1.23, 2.130422, 0], [0, 0, 6.7]],
        pbc=True,
    ) * (3, 3, 1)
    assert sp_fractions(graphene)["sp2"] == 1.0
    chain = Atoms("C4", positions=[[0, 0, 1.3 * k] for k in range(4)], cell=[8, 8, 5.2], pbc=True)
    assert sp_fractions([chain, diamond]) == pytest.approx({"sp": 4 / 68, "sp2": 0.0, "sp3": 64 / 68})


# --------------------------------------------------------------------------------------------------
# phase match
# --------------------------------------------------------------------------------------------------
PHASE_SPECS = {
    "fcc": CrystalSpec("fcc", "Cu", 3.61),
    "bcc": CrystalSpec("bcc", "W", 3.165),
    "sc": CrystalSpec("sc", "Po", 3.35),
    "diamond": CrystalSpec("diamond", "Si", 5.43),
    "hcp": CrystalSpec("hcp", "Mg", 3.21, 5.21),
    "rocksalt": CrystalSpec("rocksalt", "NaCl", 5.64),
}


@pytest.mark.parametrize("phase", list(PHASE_SPECS))
def test_phase_match_rattled_translated_crystals(phase):
    ideal = PHASE_SPECS[phase].unit_cell() * (2, 2, 2)
    for seed in range(3):
        sample = rattled(ideal, 0.05, 100 + seed, translate=True, shuffle=True)
        ok, disp = phase_matches(sample, ideal, tolerance=0.5)
        assert ok, (phase, seed, disp.max())
        assert disp.shape == (len(ideal),)
        rms = float(np.sqrt((disp**2).mean()))
        assert 0.04 < rms < 0.13  # about sigma * sqrt(3) = 0.087 Å


def test_phase_match_rejects_defects():
    fcc = PHASE_SPECS["fcc"].unit_cell() * (2, 2, 2)
    sample = rattled(fcc, 0.05, 1)
    vacancy = sample.copy()
    del vacancy[5]
    assert phase_matches(vacancy, fcc) == (False, pytest.approx(np.zeros(0)))
    interstitial = sample.copy()
    interstitial.append("Cu")
    interstitial.positions[-1] = interstitial.positions[0] + [1.805, 0, 0]  # octahedral site
    assert not phase_matches(interstitial, fcc)[0]
    frenkel = sample.copy()  # same count, one atom moved to an octahedral site
    frenkel.positions[3] = frenkel.positions[0] + [1.805, 0, 0]
    ok, disp = phase_matches(frenkel, fcc)
    assert not ok and disp.max() > 0.5 and disp.size == len(fcc)
    salt = PHASE_SPECS["rocksalt"].unit_cell() * (2, 2, 2)
    swapped = rattled(salt, 0.05, 2)
    na, cl = np.flatnonzero(swapped.numbers == 11)[0], np.flatnonzero(swapped.numbers == 17)[0]
    swapped.numbers[[na, cl]] = swapped.numbers[[cl, na]]
    assert not phase_matches(swapped, salt)[0]
    assert phase_matches(rattled(salt, 0.05, 2), salt)[0]
    # a different crystal with the same atom count
    bcc = PHASE_SPECS["bcc"].unit_cell() * (2, 2, 4)
    bcc.set_cell(fcc.cell, scale_atoms=True)
    bcc.numbers[:] = 29
    assert not phase_matches(rattled(bcc, 0.02, 3), fcc)[0]
    # too much noise for a tight tolerance
    assert not phase_matches(rattled(fcc, 0.3, 4), fcc, tolerance=0.2)[0]


def test_phase_match_metric_with_several_ideals():
    ideals = {0: PHASE_SPECS["fcc"].unit_cell() * (2, 2, 2), 1: PHASE_SPECS["bcc"].unit_cell() * (2, 2, 2)}
    ideals[0].info["phase_name"] = "fcc"
    samples = [rattled(ideals[0], 0.05, 1), rattled(ideals[1], 0.05, 2), rattled(ideals[1], 0.05, 3)]
    broken = samples[0].copy()
    del broken[0]
    samples.append(broken)
    m = PhaseMatch(ideals, tolerance=0.5)
    m.update(StructureBatch.from_atoms(samples))
    out = m.compute()
    assert float(out["phase_match"]) == 0.75
    assert float(out["phase_match/fcc"]) == 0.25 and float(out["phase_match/1"]) == 0.5
    assert 0.04 < float(out["displacement_rms"]) < 0.13
    m2 = PhaseMatch(ideals)
    m2.update(samples[:2], phase=torch.tensor([1, 1]))  # conditioned on bcc: the fcc sample fails
    assert float(m2.compute()["phase_match"]) == 0.5
    m3 = PhaseMatch(lambda s: ideals[0] if len(s) == 32 else None)
    m3.update(samples)
    assert float(m3.compute()["phase_match"]) == 0.25


def test_local_structure_types_optional(monkeypatch):
    """OVITO is optional: None when ``ovito`` is not installed and when importing it fails (a broken install,
    e.g. missing GL libraries), both checked with stand-ins whether or not OVITO is here; with a real OVITO,
    fcc atoms are FCC."""
    import importlib.util
    import types

    fcc = PHASE_SPECS["fcc"].unit_cell() * (3, 3, 3)
    if importlib.util.find_spec("ovito") is not None:  # pragma: no cover - OVITO is not a dependency
        assert set(local_structure_types(fcc)) == {"FCC"}
    for name in [m for m in sys.modules if m == "ovito" or m.startswith("ovito.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "ovito", None)  # not installed: importing it raises ImportError
    assert local_structure_types(fcc) is None

    class Broken(types.ModuleType):
        def __getattr__(self, name):
            raise OSError("libGL.so.1: cannot open shared object file")

    for name in ("ovito", "ovito.io", "ovito.io.ase"):
        monkeypatch.setitem(sys.modules, name, Broken(name))
    assert local_structure_types(fcc) is None


@pytest.fixture(scope="module")
def crystals_file(tmp_path_factory):
    specs = [default_spec(p) for p in ("fcc", "bcc", "hcp", "rocksalt")]
    records = crystal_records(specs, repeat=(2, 2, 2), thermal_sigma=0.05, count=3, seed=0, progress=False)
    path = tmp_path_factory.mktemp("data") / "crystals.h5"
    write_dataset(path, records, splits=random_splits(len(records.atoms), (0.5, 0.5, 0.0), 0))
    return path


def test_ideal_for_dataset_rebuilds_unrattled_crystals(crystals_file):
    ideals = ideal_for_dataset(crystals_file)
    assert sorted(ideals) == [0, 1, 2, 3]
    assert [a.info["phase"] for a in ideals.values()] == ["fcc", "bcc", "hcp", "rocksalt"]
    with AtomsH5(crystals_file) as data:
        phase_index = data.structure_property("phase_index")
        for i in range(len(data)):
            sample, ideal = data.atoms(i), ideals[int(phase_index[i])]
            np.testing.assert_allclose(sample.cell[:], ideal.cell[:], atol=1e-9)
            assert phase_matches(sample, ideal)[0]


def test_ideal_for_dataset_needs_a_crystals_file(tmp_path):
    from datamodules.h5format import DatasetRecords
    from lightning_gcd.errors import GcdError

    path = tmp_path / "plain.h5"
    write_dataset(path, DatasetRecords(atoms=[bulk("Cu", cubic=True)], labels=["x"]))
    with pytest.raises(GcdError, match="not a crystals dataset"):
        ideal_for_dataset(path)
    assert ideal_for_dataset(path, strict=False) == {}


# --------------------------------------------------------------------------------------------------
# counts
# --------------------------------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore:The ``compute`` method")
def test_atom_count_and_error():
    a = bulk("Cu", "fcc", a=3.61, cubic=True)
    structures = [a * (2, 2, 2), a * (2, 2, 1), a]  # 32, 16, 4 atoms
    m = AtomCount(max_atoms=20, target=16)
    m.update(structures)
    out = m.compute()
    assert float(out["n_atoms_mean"]) == pytest.approx(52 / 3)
    assert float(out["n_atoms_error"]) == pytest.approx((16 + 0 + 12) / 3)
    assert m.hist[20] == 1 and m.hist[16] == 1 and m.hist[4] == 1  # 32 clipped into the last bin
    m2 = AtomCount(max_atoms=64)
    m2.update(structures, target=[30, 16, float("nan")])
    assert float(m2.compute()["n_atoms_error"]) == pytest.approx(1.0)
    assert torch.isnan(AtomCount().compute()["n_atoms_error"])


def test_min_distance_violations():
    good = rattled(bulk("Cu", "fcc", a=3.61, cubic=True) * (2, 2, 2), 0.02, 1)
    bad = good.copy()
    bad.positions[1] = bad.positions[0] + [0.4, 0.3, 0.0]
    m = MinDistanceViolations(threshold=1.0)
    m.update([good, bad])
    out = m.compute()
    assert float(out["min_distance_violations"]) == 0.5
    assert float(out["min_distance"]) == pytest.approx(0.5, abs=1e-9)
    lonely = Atoms("Cu", positions=[[0, 0, 0]], cell=[10, 10, 10], pbc=True)
    m2 = MinDistanceViolations(threshold=1.0)
    m2.update(lonely)
    assert float(m2.compute()["min_distance_violations"]) == 0.0 and float(m2.compute()["min_distance"]) == float("inf")


def test_empty_structure_in_batch():
    empty = Atoms(cell=[8, 8, 8], pbc=True)
    full = rattled(bulk("Cu", "fcc", a=3.61, cubic=True) * (2, 2, 2), 0.02, 1)
    batch = StructureBatch.from_atoms([empty, full], dtype=torch.float64)
    rdf = RadialDistribution(3.5, 35)
    rdf.update(batch)
    assert float(rdf.n_structures[0]) == 1.0
    np.testing.assert_allclose(rdf.compute().numpy(), get_rdf(full, 3.5, 35, no_dists=True), atol=1e-4)
    count = AtomCount(max_atoms=40, target=32)
    count.update(batch)
    assert float(count.compute()["n_atoms_error"]) == 16.0
    pm = PhaseMatch(PHASE_SPECS["fcc"].unit_cell() * (2, 2, 2))
    pm.update(batch)
    assert float(pm.compute()["phase_match"]) == 0.5
    only_empty = StructureBatch.from_atoms([empty], dtype=torch.float64)
    for metric in (RadialDistribution(), CoordinationHistogram(3.0), MinDistanceViolations()):
        metric.update(only_empty)
        metric.compute()


# --------------------------------------------------------------------------------------------------
# DDP: states of two processes reduce to the states of one process that saw everything
# --------------------------------------------------------------------------------------------------
def ddp_structures() -> list[Atoms]:
    out = []
    for k, phase in enumerate(["fcc", "bcc", "rocksalt", "fcc", "hcp", "rocksalt"]):
        ideal = PHASE_SPECS[phase].unit_cell() * (2, 2, 2)
        s = rattled(ideal, 0.05 if k != 3 else 0.4, 20 + k)
        out.append(s)
    return out


METRIC_FACTORIES = {
    "rdf_total": lambda: RadialDistribution(5.0, 50),
    "rdf_pairs": lambda: RadialDistribution(5.0, 50, pairs=[(11, 17), (29, 29)]),
    "coordination": lambda: CoordinationHistogram(3.1, max_cn=14),
    "atom_count": lambda: AtomCount(max_atoms=40, target=32),
    "min_distance": lambda: MinDistanceViolations(threshold=2.3),
    "phase": lambda: PhaseMatch([PHASE_SPECS[p].unit_cell() * (2, 2, 2) for p in ("fcc", "bcc", "rocksalt", "hcp")]),
}


def _assert_same_output(a, b):
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _assert_same_output(a[k], b[k])
    else:
        torch.testing.assert_close(a, b, equal_nan=True, rtol=1e-12, atol=1e-12)


@pytest.mark.filterwarnings("ignore:The ``compute`` method")
@pytest.mark.parametrize("name", list(METRIC_FACTORIES))
def test_states_merge_like_ddp(name):
    structures = ddp_structures()
    whole = METRIC_FACTORIES[name]()
    whole.update(structures)
    expected = whole.compute()

    rank0, rank1 = METRIC_FACTORIES[name](), METRIC_FACTORIES[name]()
    rank0.update(structures[:2])
    rank1.update(structures[2:])
    merged = METRIC_FACTORIES[name]()
    merged.merge_state(rank0)
    merged.merge_state(rank1)
    _assert_same_output(merged.compute(), expected)

    # the real sync path: each state gathered from both "processes", then reduced by dist_reduce_fx
    other = [getattr(rank1, attr) for attr in rank1._reductions]
    queue = list(other)

    def fake_all_gather(tensor, group=None):
        return [tensor, queue.pop(0)]

    rank0.sync(dist_sync_fn=fake_all_gather, distributed_available=lambda: True)
    assert not queue
    _assert_same_output(type(rank0).compute(rank0), expected)  # the unwrapped compute: no second sync


@pytest.mark.filterwarnings("ignore:The ``compute`` method")
def test_structure_metrics_of_two_ranks_equal_one_rank_that_saw_all():
    """StructureMetrics as DDP validation uses it: two "ranks" with part of the samples each, through the
    real torchmetrics sync of every sub-metric (only the gather is faked: it returns both ranks' states).
    Every reported figure and curve equals one process's that saw all samples, the coordination and sp
    fractions and the atom-count histogram included (they are read from states, which compute() alone
    synchronises)."""
    structures = ddp_structures() + [rattled(CrystalSpec("diamond", "C", 3.567).unit_cell() * (2, 2, 2), 0.1, 7)]
    reference = structures[::2]
    whole = StructureMetrics(reference)
    whole.update(structures)
    expected, expected_curves = whole.compute(), whole.curves()
    rank0, rank1 = StructureMetrics(reference), StructureMetrics(reference)
    rank0.update(structures[:3])
    rank1.update(structures[3:])
    for name, metric in rank0.metrics.items():
        theirs = itertools.cycle([getattr(rank1.metrics[name], attr) for attr in rank1.metrics[name]._reductions])
        metric.dist_sync_fn = lambda tensor, group=None, theirs=theirs: [tensor, next(theirs)]
        metric.distributed_available_fn = lambda: True
    got, curves = rank0.compute(), rank0.curves()
    assert got.keys() == expected.keys() and got["n_structures"] == len(structures) == 7
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-9, abs=1e-12, nan_ok=True), key
    np.testing.assert_array_equal(curves["n_atoms_hist"], expected_curves["n_atoms_hist"])
    assert curves["coordination"].keys() == expected_curves["coordination"].keys()
    for z, fractions in expected_curves["coordination"].items():
        np.testing.assert_allclose(curves["coordination"][z], fractions, rtol=1e-12)
    np.testing.assert_allclose(curves["g"], expected_curves["g"], rtol=1e-9, atol=1e-12)


# --------------------------------------------------------------------------------------------------
# the suite
# --------------------------------------------------------------------------------------------------
def test_structure_metrics_suite(crystals_file):
    with AtomsH5(crystals_file) as data:
        val = [data.atoms(int(i)) for i in data.split("val")]
        train = [data.atoms(int(i)) for i in data.split("train")]
    ideals = ideal_for_dataset(crystals_file)
    suite = StructureMetrics(val, ideal=ideals, r_max=5.0, n_bins=100)
    suite.update(StructureBatch.from_atoms(val))  # float32, as a model would produce
    out = suite.compute()
    assert out["rdf_l1"] == pytest.approx(0.0, abs=1e-3)
    assert out["phase_match"] == 1.0
    assert out["n_atoms_error"] == 0.0
    assert out["coordination_l1"] == pytest.approx(0.0, abs=1e-12)
    assert 0.03 < out["displacement_rms"] < 0.12
    for key in ("n_atoms_mean", "min_distance_violations", "phase_match/fcc", "phase_match/rocksalt"):
        assert key in out
    assert any(k.startswith("coordination/29/") for k in out)
    assert all(isinstance(v, float) for v in out.values())
    assert "sp3_fraction" not in out

    suite.reset()
    suite.update(train[:3])
    broken = train[3].copy()
    del broken[0]
    suite.update([broken])
    out = suite.compute()
    assert out["phase_match"] == 0.75
    assert out["n_atoms_error"] == 0.25  # the target comes from the reference with the same cell
    curves = suite.curves()
    assert curves["g"].shape == curves["g_reference"].shape == curves["r"].shape == (100,)
    assert set(curves["coordination_reference"]) <= {11, 12, 17, 29, 74}
    assert curves["n_atoms_hist"].sum() == 4
    ref = suite.reference_metrics()
    assert ref["rdf_l1"] == 0.0 and ref["phase_match"] == 1.0


def test_structure_metrics_carbon_and_no_samples():
    ref = [rattled(bulk("C", "diamond", a=3.567, cubic=True) * (2, 2, 2), 0.03, k) for k in range(2)]
    suite = StructureMetrics(ref, r_max=4.0, n_bins=80)
    empty = suite.compute()
    assert np.isnan(empty["rdf_l1"]) and np.isnan(empty["sp3_fraction"])
    suite.update(ref)
    out = suite.compute()
    assert out["sp3_fraction"] == 1.0 and out["sp2_fraction"] == 0.0 and out["sp_fraction"] == 0.0
    assert out["coordination/6/4"] == 1.0
    assert "phase_match" not in out
    assert 1.6 < suite.coordination_cutoff < 2.4
