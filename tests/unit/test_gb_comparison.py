"""The generator-vs-search comparison of the grain-boundary study (issue #28): [n] of a generated cell, hits
against the best-known E_gb at the same [n], Wilson intervals, equal relaxations and equal wall time."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from lightning_gcd.studies.statistics import wilson_interval

SCRIPT = Path(__file__).resolve().parents[2] / "experiments" / "grain_boundaries" / "generator_vs_search.py"


@pytest.fixture(scope="module")
def gvs():
    spec = importlib.util.spec_from_file_location("generator_vs_search", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_wilson_interval_matches_published_values_and_stays_in_the_unit_interval() -> None:
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.27753), abs=1e-5)
    assert wilson_interval(5, 10) == pytest.approx((0.23659, 0.76341), abs=1e-5)
    assert wilson_interval(10, 10) == pytest.approx((0.72247, 1.0), abs=1e-5)
    low, high = wilson_interval(1, 200)
    assert 0 < low < 1 / 200 < high < 0.03
    assert all(np.isnan(wilson_interval(0, 0)))
    with pytest.raises(ValueError):
        wilson_interval(3, 2)


def test_plane_fraction_of_a_boundary_is_the_searchs_n_fraction(gvs) -> None:
    # the search removes P - k atoms next to each boundary: n = -(P - k) per boundary, [n] = k / P
    for k in range(10):
        assert gvs.plane_fraction(-((10 - k) % 10), 10) == pytest.approx(k / 10)
    assert gvs.plane_fraction(2, 10) == pytest.approx(0.2)  # two atoms added: [n] counts mod 1
    assert gvs.plane_fraction(-12, 10) == pytest.approx(0.8)  # a plane and two atoms removed


def _cand(n: float, e: float, s: float = 1.0, other: float | None = None) -> dict:
    """A candidate whose boundaries are at [n] ``n`` and ``other`` (default: both at ``n``)."""
    a, b = sorted((n, n if other is None else other))
    return {"pair": (a, b), "n": a if a == b else float("nan"), "gb_energy": e, "seconds": s}


def test_hits_count_against_the_best_known_energy_at_the_same_n(gvs) -> None:
    methods = {
        "search": [_cand(0.2, 2.30), _cand(0.2, 2.40), _cand(0.4, 2.50), _cand(0.4, float("nan"))],
        "voxel": [_cand(0.2, 2.305), _cand(0.4, 2.47), _cand(0.4, 2.52), _cand(0.6, 3.0)],
    }
    result = gvs.compare(methods, reference=[[_cand(0.2, 2.296)]])
    assert result["best_known"] == {"0.2": 2.296, "0.4": 2.47, "0.6": 3.0}
    search, voxel = result["all_candidates"]["search"], result["all_candidates"]["voxel"]
    assert search["within_0.01"]["hits"] == 1 and search["within_0.05"]["hits"] == 2  # 2.30 and 2.50
    assert search["failed"] == 1 and search["candidates"] == 4
    assert voxel["within_0.01"]["hits"] == 3 and voxel["within_0.05"]["hits"] == 4
    assert voxel["per_n"]["0.4"]["lowest_gb_energy"] == 2.47 and voxel["per_n"]["0.4"]["candidates"] == 2
    low, high = voxel["within_0.01"]["ci95"]
    assert (low, high) == pytest.approx(wilson_interval(3, 4))


def test_equal_budgets_subsample_to_the_fewest_relaxations_and_the_least_time(gvs) -> None:
    rng = np.random.default_rng(0)
    methods = {
        "search": [_cand(0.0, 2.5 + rng.random(), 10.0) for _ in range(50)],  # 500 s in all
        "voxel": [_cand(0.0, 2.5 + rng.random(), 2.0) for _ in range(30)],  # 60 s in all
    }
    result = gvs.compare(methods)
    assert result["relaxations"] == 30 and result["seconds"] == pytest.approx(60.0)
    assert result["equal_relaxations"]["search"]["candidates"] == 30
    assert result["equal_relaxations"]["voxel"]["candidates"] == 30
    assert result["equal_wall_time"]["search"]["candidates"] == 6  # 6 × 10 s fit in 60 s
    assert result["equal_wall_time"]["voxel"]["candidates"] == 30
    again = gvs.compare(methods)
    assert json.dumps(again["equal_wall_time"]) == json.dumps(result["equal_wall_time"])  # seeded
    table = gvs.markdown({**result, "system": {"element": "W", "boundary": "twist100"}})
    assert "| annealed random search | 6 |" in table and "| voxel in-painting | 30 |" in table


def test_envelope_minima_are_the_n_below_both_neighbours_periodically(gvs) -> None:
    w = {0.0: 2.6, 0.1: 2.5, 0.2: 2.30, 0.3: 2.59, 0.4: 2.47, 0.5: 2.55, 0.9: 2.7}
    assert gvs.envelope_minima(w) == [0.2, 0.4]
    assert gvs.envelope_minima({0.0: 2.0, 0.5: 2.5, 0.9: 2.4}) == [0.0]  # [n] = 0 neighbours 0.9 (mod 1)
    assert gvs.envelope_minima({0.0: 2.0, 0.5: 2.5}) == []
    result = gvs.compare({"search": [_cand(n, e) for n, e in w.items()], "voxel": [_cand(0.2, 2.31), _cand(0.3, 2.62)]})
    assert result["best_known_minima"] == ["0.2", "0.4"]
    assert result["envelope_minima"] == {"search": ["0.2", "0.4"], "voxel": []}


@pytest.fixture(scope="module")
def phases():
    path = SCRIPT.parent / "boundary_phases.py"
    spec = importlib.util.spec_from_file_location("boundary_phases", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_layer_profile_of_a_bicrystal_sees_the_atoms_removed_next_to_each_boundary(phases) -> None:
    """The phase fingerprint: a perfect W twist bicrystal is full layers everywhere; removing 2 of the 10 atoms of
    grain B's first plane at each boundary ([n] = 0.8) leaves one layer at 0.8 next to each boundary layer."""
    from datamodules.builders.gb_search import search_repeat
    from datamodules.builders.grain_boundaries import BOUNDARIES, bicrystal, change_boundary_count

    spec, a = BOUNDARIES["twist100"], 3.16485
    repeat = search_repeat(spec, "W", a)
    perfect = bicrystal(spec, "W", a, repeat)
    per_plane = perfect.atoms_per_plane
    centres, counts, thickness = phases.atomic_layers(perfect.atoms)
    assert per_plane == 10 and set(counts.tolist()) == {per_plane} and thickness.max() < 1e-6
    profile, _ = phases.occupancy_profile(perfect.atoms, perfect.boundary_z, per_plane)
    np.testing.assert_allclose(profile, 1.0)

    removed = change_boundary_count(perfect, -2, np.random.default_rng(0))
    profile, _ = phases.occupancy_profile(removed.atoms, removed.boundary_z, per_plane)
    assert sorted(np.round(profile, 6).tolist()) == [0.8] + [1.0] * 6
    assert abs(int(np.argmin(profile)) - phases.LAYERS) <= 1  # the depleted plane sits at the boundary


def test_a_mixed_cell_is_scored_against_the_mean_of_its_boundaries_single_phase_values(gvs) -> None:
    """A voxel cell whose boundaries hold [n] = 0.1 and 0.2 is a hit only within the margin of the mean of the
    best-known single-phase values at 0.1 and 0.2, not of its own energy; a mixed cell below that mean sets the
    pair's best-known value; mixed cells enter no single-phase envelope."""
    methods = {
        "search": [_cand(0.1, 2.65), _cand(0.2, 2.30), _cand(0.3, 2.59)],
        "voxel": [_cand(0.1, 2.55, other=0.2), _cand(0.3, 2.40, other=0.2)],
    }
    result = gvs.compare(methods)
    assert result["best_known_mixed"]["0.1|0.2"] == pytest.approx(2.475)  # (2.65 + 2.30) / 2 < 2.55
    assert result["best_known_mixed"]["0.2|0.3"] == pytest.approx(2.40)  # below (2.30 + 2.59) / 2
    voxel = result["all_candidates"]["voxel"]
    assert voxel["within_0.05"]["hits"] == 1 and voxel["mixed"]["candidates"] == 2 and voxel["per_n"] == {}
    assert result["envelope_minima"]["voxel"] == []


def test_boundary_excess_counts_the_atoms_of_each_boundary_of_a_generated_cell() -> None:
    """A cell from a template: atoms removed at both boundaries count at both; atoms removed at one boundary
    count there only; the two add up to the cell's change."""
    from datamodules.builders.gb_search import search_repeat
    from datamodules.builders.grain_boundaries import BOUNDARIES, bicrystal, change_boundary_count
    from lightning_gcd.grain_boundaries.layers import boundary_excess

    spec, a = BOUNDARIES["twist100"], 3.16485
    perfect = bicrystal(spec, "W", a, search_repeat(spec, "W", a))
    both = change_boundary_count(perfect, -2, np.random.default_rng(0))
    assert boundary_excess(both.atoms, perfect.atoms, perfect.boundary_z, (0, 0)) == (-2, -2)
    assert boundary_excess(both.atoms, both.atoms, both.boundary_z, (-2, -2)) == (-2, -2)
    low = min(perfect.boundary_z)
    one = perfect.atoms.copy()
    del one[[int(i) for i in np.argsort(np.abs(one.positions[:, 2] - low))[:3]]]
    assert boundary_excess(one, perfect.atoms, perfect.boundary_z, (0, 0)) == (-3, 0)
    stretched = one.copy()  # a relaxed cell: 1% longer along z, atoms with it
    stretched.set_cell(one.cell[:] * np.array([1.0, 1.0, 1.01])[:, None], scale_atoms=True)
    assert boundary_excess(stretched, perfect.atoms, perfect.boundary_z, (0, 0)) == (-3, 0)
