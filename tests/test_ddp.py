"""Real DDP on the CPU: two processes (gloo), launched as a separate command as a user would.

The DDP launcher re-executes the command line, so DDP runs only as subprocesses here: two DDP runs inside
one pytest process would collide on the rendezvous port.
"""

from __future__ import annotations

import csv
from pathlib import Path

from conftest import REPO, run_gcd

VOXEL = str(REPO / "experiments/smoke/voxel.yaml")
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


def _last_val(run_dir: Path) -> dict[str, float]:
    rows = []
    for path in sorted(run_dir.glob("csv/version_*/metrics.csv")):
        with open(path) as handle:
            rows.extend(r for r in csv.DictReader(handle) if r.get("val/loss"))
    assert rows, f"no validation metrics under {run_dir}"
    return {k: float(v) for k, v in rows[-1].items() if v not in ("", None) and k.startswith("val/")}


def _csv(run_dir: Path) -> list[str]:
    return ["--trainer.logger", "lightning.pytorch.loggers.CSVLogger", "--trainer.logger.save_dir", str(run_dir),
            "--trainer.logger.name", "csv"]


def test_two_process_ddp_fit_and_validate_match_one_process(tmp_path: Path) -> None:
    fit_dir = tmp_path / "runs/ddp_fit"
    fit = run_gcd("fit", "--config", VOXEL, *QUIET, "--run_name", "ddp_fit", "--trainer.devices", "2",
                  "--trainer.strategy", "ddp", "--trainer.max_epochs", "2", "--data.batch_size", "8",
                  "--model.init_args.val_samples", "4", *_csv(fit_dir), cwd=tmp_path, timeout=900)
    assert fit.returncode == 0, fit.stderr[-4000:]
    checkpoint = fit_dir / "checkpoints/last.ckpt"
    assert checkpoint.exists()
    fitted = _last_val(fit_dir)
    assert {"val/loss", "val/n_atoms_mean", "val/rdf_l1"} <= set(fitted)

    results = {}
    for devices in ("1", "2"):
        run_dir = tmp_path / f"runs/validate{devices}"
        strategy = ["--trainer.strategy", "ddp"] if devices == "2" else []
        run = run_gcd("validate", "--config", VOXEL, *QUIET, "--run_name", f"validate{devices}", "--trainer.devices", devices,
                      *strategy, "--data.batch_size", "2", "--model.init_args.val_samples", "4", "--ckpt_path", str(checkpoint),
                      *_csv(run_dir), cwd=tmp_path, timeout=900)
        assert run.returncode == 0, run.stderr[-4000:]
        results[devices] = _last_val(run_dir)
    # the validation loss draws each structure's noise from its index: equal however the data is split
    assert abs(results["1"]["val/loss"] - results["2"]["val/loss"]) < 1e-5, results
    # sample metrics are gathered over both ranks: 4 samples in both cases
    for result in results.values():
        assert result["val/n_atoms_mean"] >= 0 and "val/min_distance_violations" in result
