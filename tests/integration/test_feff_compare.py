"""experiments/amorphous_carbon/feff_compare.py: pooled FEFF errors of two guided.py settings and a
bootstrap interval of their difference, on results folders written the way guided.py writes them."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest


def _feff_compare():
    path = Path(__file__).resolve().parents[2] / "experiments" / "amorphous_carbon" / "feff_compare.py"
    spec = importlib.util.spec_from_file_location("ac_feff_compare", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TARGET = np.linspace(1.0, 2.0, 10)


def _write_run(
    folder: Path, mode: str, density: str, scales: list[float], energy: float = -6.1, sites: int = 3
) -> None:
    """A guided.py results folder: target 7, one run whose sample k's FEFF mean is TARGET × scales[k]."""
    folder.mkdir(parents=True)
    feff = [
        {
            "sample": k,
            "sites": list(range(sites)),
            "errors": [],
            "feff_mean_spectrum": (TARGET * s).tolist(),
            "feff_sites_used": sites,
        }
        for k, s in enumerate(scales)
    ]
    run = {
        "model": "particle",
        "target": 7,
        "mode": mode,
        "density_setting": density,
        "relaxed_energy_per_atom": energy,
        "feff": feff,
    }
    (folder / "results.json").write_text(json.dumps({"targets": {"7": {}}, "runs": [run]}))
    (folder / "curves.json").write_text(json.dumps({"spectra": {"target 7": TARGET.tolist()}}))


def test_pooled_errors_and_bootstrap_of_the_difference(tmp_path: Path) -> None:
    compare = _feff_compare()
    # A: every sample 20% above the target; B: 5% above, spread over two folders of the same structures
    _write_run(tmp_path / "a", "unguided", "2.5", [1.2, 1.2, 1.2])
    _write_run(tmp_path / "b1", "dps", "auto", [1.05, 1.05, 1.05])
    _write_run(tmp_path / "b2", "dps", "auto", [1.05, 1.05, 1.05], sites=6)
    out = tmp_path / "cmp.json"
    assert (
        compare.main(
            [
                "--a",
                f"{tmp_path / 'a'}:unguided@2.5",
                "--b",
                f"{tmp_path / 'b1'}:dps@auto",
                f"{tmp_path / 'b2'}:dps@auto",
                "--resamples",
                "50",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    result = json.loads(out.read_text())
    assert result["targets"]["7"]["a"] == pytest.approx(0.2) and result["targets"]["7"]["b"] == pytest.approx(0.05)
    assert result["targets"]["7"]["sites_b"] == 27 and result["b_lower_on"] == 1
    assert result["mean_b_minus_a"] == pytest.approx(-0.15)
    assert result["bootstrap_95"] == pytest.approx([-0.15, -0.15])  # identical samples: no spread
    # samples that differ give an interval around the difference, wider than zero
    _write_run(tmp_path / "c", "dps", "auto", [1.0, 1.1, 1.2])
    spread = compare.compare([f"{tmp_path / 'a'}:unguided@2.5"], [f"{tmp_path / 'c'}:dps@auto"], resamples=400)
    low, high = spread["bootstrap_95"]
    assert low < spread["mean_b_minus_a"] < high and high - low > 0.02


def test_bad_settings_are_refused(tmp_path: Path) -> None:
    compare = _feff_compare()
    _write_run(tmp_path / "a", "unguided", "2.5", [1.2])
    _write_run(tmp_path / "other", "unguided", "2.5", [1.2], energy=-5.0)  # not the same structures
    with pytest.raises(SystemExit, match="not those of the other folders"):
        compare.compare(
            [f"{tmp_path / 'a'}:unguided@2.5", f"{tmp_path / 'other'}:unguided@2.5"], [f"{tmp_path / 'a'}:unguided@2.5"]
        )
    with pytest.raises(SystemExit, match="DIR:MODE@DENSITY"):
        compare.parse_setting("runs/a:dps")
    with pytest.raises(SystemExit, match="no dps run"):
        compare.compare([f"{tmp_path / 'a'}:unguided@2.5"], [f"{tmp_path / 'a'}:dps@auto"])
