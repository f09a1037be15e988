"""Reporting: MetricsHistory files, the W&B structure report (offline), and ``gcd compare``.

The two smoke configs (voxel and particle) run as ``gcd fit`` subprocesses, in parallel, each with an
offline ``WandbLogger`` and the ``WandbStructureReport`` callback added on the command line. The offline
runs are read back from their ``run-<id>.wandb`` files: a LevelDB-style log of protobuf ``Record``s
(``wandb.proto.wandb_internal_pb2``); wandb 0.31 ships no Python reader for it and writes no
``wandb-summary.json`` offline, so ``read_wandb_records`` below parses the log format directly.
Nothing touches the network (``WANDB_MODE=offline``; W&B's cache/config/data dirs go to tmp).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import struct
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import ase.io
import numpy as np
import pytest
from conftest import REPO, run_gcd

from lightning_gcd.errors import GcdError

KINDS = ("voxel", "particle")
RUN_NAMES = {"voxel": "smoke_voxel", "particle": "smoke_particle"}
LOG_SAMPLES = 3
# metrics both models must log under the same names (docs/metrics.md); val/coordination/<Z>/<k> rows depend on
# which k occur, so they are compared as a family
REQUIRED = {
    "val/loss",
    "val/rdf_l1",
    "val/coordination_l1",
    "val/n_atoms_mean",
    "val/n_atoms_error",
    "val/min_distance_violations",
    "val/min_distance",
}
COORD_ROW = re.compile(r"val/coordination/\d+/\d+")


# --------------------------------------------------------------------------------------------------
# reading an offline W&B run
def read_wandb_records(path: Path) -> Iterator[Any]:
    """Protobuf ``Record``s of a ``.wandb`` file: header ``:W&B`` + magic 0xBEE1 + version (7 bytes),
    then LevelDB log blocks of 32 KiB holding records (crc32, length u16, type u8: 1 full, 2 first,
    3 middle, 4 last)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B transaction log"
    block, pos, pending = 32768, 7, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # block trailer too short for a header: padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 1:
            raw = chunk
        elif kind == 2:
            pending = chunk
            continue
        elif kind == 3:
            pending += chunk
            continue
        elif kind == 4:
            raw, pending = pending + chunk, b""
        else:
            continue
        record = pb.Record()
        record.ParseFromString(raw)
        yield record


def offline_run(wandb_dir: Path, run_id: str) -> dict[str, Any]:
    """History rows and artifacts of the offline run ``run_id`` under ``wandb_dir``."""
    found = sorted((wandb_dir / "wandb").glob(f"offline-run-*-{run_id}"))
    assert len(found) == 1, f"expected one offline run {run_id}, found {found}"
    run_dir = found[0]
    rows, artifacts = [], []
    for record in read_wandb_records(run_dir / f"run-{run_id}.wandb"):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            rows.append(
                {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            )
        elif kind == "artifact":
            artifacts.append(
                {
                    "name": record.artifact.name,
                    "type": record.artifact.type,
                    "files": [entry.path for entry in record.artifact.manifest.contents],
                    "aliases": list(record.artifact.aliases),
                }
            )
    media_roots = {k[: -len("/_type")] for row in rows for k in row if k.endswith("/_type")}
    scalars = {
        k
        for row in rows
        for k, v in row.items()
        if isinstance(v, (int, float))
        and not k.startswith("_")
        and not any(k.startswith(root + "/") for root in media_roots)
    }
    return {"dir": run_dir, "rows": rows, "artifacts": artifacts, "media": media_roots, "scalars": scalars}


# --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    base = tmp_path_factory.mktemp("reporting")
    wandb_dir = base / "wandb_logs"
    env = {
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "WANDB_CONSOLE": "off",
        **{
            name: str(base / "wandb_home" / name.lower())
            for name in ("WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR")
        },
    }

    def fit(kind: str):
        cwd = base / kind  # separate folders: each run builds its own smoke dataset, no race
        cwd.mkdir()
        return run_gcd(
            "fit",
            "--config",
            str(REPO / f"experiments/smoke/{kind}.yaml"),
            "--trainer.enable_progress_bar",
            "false",
            "--trainer.max_epochs",
            "2",
            "--trainer.logger",
            "lightning.pytorch.loggers.WandbLogger",
            "--trainer.logger.offline",
            "true",
            "--trainer.logger.project",
            "smoke",
            "--trainer.logger.save_dir",
            str(wandb_dir),
            # an explicit id names the offline run folder (offline-run-<time>-smoke-<kind>)
            "--trainer.logger.id",
            f"smoke-{kind}",
            "--trainer.callbacks+=lightning_gcd.callbacks.WandbStructureReport",
            "--trainer.callbacks.log_samples",
            str(LOG_SAMPLES),
            cwd=cwd,
            env=env,
            timeout=300,
        )

    with ThreadPoolExecutor(len(KINDS)) as pool:
        results = dict(zip(KINDS, pool.map(fit, KINDS), strict=True))
    for kind, result in results.items():
        assert result.returncode == 0, f"{kind}: {result.stderr[-3000:]}"
    return {
        "base": base,
        "run_dirs": {kind: base / kind / "runs" / RUN_NAMES[kind] for kind in KINDS},
        "wandb": {kind: offline_run(wandb_dir, f"smoke-{kind}") for kind in KINDS},
    }


def _records(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_metrics_history_files(smoke: dict[str, Any]) -> None:
    for kind, run_dir in smoke["run_dirs"].items():
        records = _records(run_dir)
        assert [r["epoch"] for r in records] == [0, 1], kind
        assert all(r["sampled"] for r in records)
        assert records[0]["model"] == {"voxel": "GrandCanonicalDiffusion", "particle": "ParticleDiffusion"}[kind]
        assert REQUIRED <= set(records[-1]), (kind, sorted(records[-1]))
        assert records[-1]["global_step"] > records[0]["global_step"] > 0
        curves = json.loads((run_dir / "curves.json").read_text())
        assert curves["epoch"] == 1 and len(curves["r"]) == len(curves["g"]) == len(curves["g_reference"])
        assert "29" in curves["coordination_reference"]
        for epoch in (0, 1):
            frames = ase.io.read(run_dir / "samples" / f"epoch_{epoch}.extxyz", ":")
            assert len(frames) == 4  # val_samples of the smoke configs


def test_wandb_offline_runs_hold_the_same_metrics(smoke: dict[str, Any]) -> None:
    runs = smoke["wandb"]
    names = {}
    for kind, run in runs.items():
        scalars = {k for k in run["scalars"] if k.startswith("val/")}
        assert REQUIRED <= scalars, (kind, sorted(scalars))
        assert any(COORD_ROW.fullmatch(k) for k in scalars), kind
        names[kind] = {k for k in scalars if not COORD_ROW.fullmatch(k)}
        # the local history holds the same names and values as W&B (W&B got float32 from self.log)
        last = _records(smoke["run_dirs"][kind])[-1]
        assert names[kind] == {k for k in last if k.startswith("val/") and not COORD_ROW.fullmatch(k)}, kind
        logged = [row for row in run["rows"] if "val/rdf_l1" in row][-1]
        assert math.isclose(logged["val/rdf_l1"], last["val/rdf_l1"], rel_tol=1e-6)
        # the x axis Lightning uses never goes backwards, our rows included
        steps = [row["trainer/global_step"] for row in run["rows"] if "trainer/global_step" in row]
        assert steps == sorted(steps), (kind, steps)
    assert names["voxel"] == names["particle"]  # one name per quantity across both models


def test_wandb_report_charts_table_and_artifact(smoke: dict[str, Any]) -> None:
    for kind, run in smoke["wandb"].items():
        media = run["media"]
        for key in (
            "val/rdf_table",
            "val/coordination/29_table",
            "val/n_atoms_hist_table",
            "val/samples",
            "val/figures/rdf",
            "val/figures/coordination",
            "val/figures/n_atoms",
        ):
            assert key in media, (kind, sorted(media))
        report_rows = [row for row in run["rows"] if "val/samples/_type" in row]
        assert len(report_rows) == 2, kind  # one per sampled validation
        val_rows = [row for row in run["rows"] if "val/rdf_l1" in row]
        # the charts sit at the same x as the val/* scalars of the same validation
        assert [r["trainer/global_step"] for r in report_rows] == [r["trainer/global_step"] for r in val_rows]
        row = report_rows[-1]
        assert row["val/samples/_type"] == "table-file" and row["val/samples/nrows"] == LOG_SAMPLES
        table = json.loads((run["dir"] / "files" / row["val/samples/path"]).read_text())
        assert table["columns"] == ["index", "n_atoms", "formula", "min_distance", "image"]
        assert len(table["data"]) == LOG_SAMPLES
        # the table with its pictures goes to W&B as a run_table artifact: the json and one PNG per row
        tables = [a for a in run["artifacts"] if "val/samples.table.json" in a["files"]]
        assert len(tables) == 2 and sum(f.endswith(".png") for f in tables[-1]["files"]) == LOG_SAMPLES, tables
        # each row's formula is its atom count of Cu ("" for a sample that decoded no atom); the particle
        # model's samples always have atoms, so the rows are checked on real structures
        assert all(r[2] == ("" if r[1] == 0 else "Cu" if r[1] == 1 else f"Cu{r[1]}") for r in table["data"]), table[
            "data"
        ]
        if kind == "particle":
            assert all(r[1] == 32 and r[3] is not None and r[3] > 0 for r in table["data"]), table["data"]
        samples = [a for a in run["artifacts"] if a["type"] == "samples"]
        assert [sorted(a["aliases"]) for a in samples] == [["epoch-0", "latest"], ["epoch-1", "latest"]], samples
        assert samples[0]["files"] == ["samples.extxyz"] and samples[0]["name"] == f"samples-smoke-{kind}"


def _compare_args(*argv: str) -> argparse.Namespace:
    from lightning_gcd.cli_compare import add_compare_parser

    parser = argparse.ArgumentParser(prog="gcd")
    add_compare_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["compare", *argv])


def test_gcd_compare_report(smoke: dict[str, Any], tmp_path: Path) -> None:
    from lightning_gcd.cli_compare import run_compare

    out = tmp_path / "cmp"
    dirs = [str(smoke["run_dirs"][k]) for k in KINDS]
    assert run_compare(_compare_args(*dirs, "--out", str(out), "--labels", "GCDM voxel", "particle")) == 0
    md = (out / "report.md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("| metric"))
    assert header == "| metric | GCDM voxel | particle |"
    for name in (
        "val/loss (final)",
        "val/rdf_l1",
        "val/n_atoms_error",
        "val/coordination_l1",
        "val/coordination/29/12",
    ):
        row = next((line for line in md.splitlines() if line.startswith(f"| {name} |")), None)
        assert row is not None and row.count("|") == 4 and "–" not in row, (name, row)
    voxel_last = _records(smoke["run_dirs"]["voxel"])[-1]
    assert f"| val/n_atoms_mean | {voxel_last['val/n_atoms_mean']:.4g} |" in md
    page = (out / "report.html").read_text()
    assert "<th>GCDM voxel</th>" in page and "<th>particle</th>" in page
    for png in ("rdf.png", "coordination.png", "n_atoms.png", "metrics_vs_epoch.png"):
        assert (out / png).stat().st_size > 5000, png
        assert f'src="{png}"' in page and f"]({png})" in md
    assert len(list((out / "runs").rglob("*.png"))) == 6


def test_compare_errors_name_the_directory(smoke: dict[str, Any], tmp_path: Path) -> None:
    from lightning_gcd.cli_compare import run_compare

    empty = tmp_path / "not_a_run"
    empty.mkdir()
    good = str(smoke["run_dirs"]["voxel"])
    with pytest.raises(GcdError, match=r"not_a_run: no metrics\.jsonl.*MetricsHistory"):
        run_compare(_compare_args(good, str(empty), "--out", str(tmp_path / "o")))
    (empty / "metrics.jsonl").write_text((smoke["run_dirs"]["voxel"] / "metrics.jsonl").read_text())
    with pytest.raises(GcdError, match=r"not_a_run: no curves\.json"):
        run_compare(_compare_args(good, str(empty), "--out", str(tmp_path / "o")))
    with pytest.raises(GcdError, match="missing_dir: no such run directory"):
        run_compare(_compare_args(str(tmp_path / "missing_dir"), "--out", str(tmp_path / "o")))
    with pytest.raises(GcdError, match="1 labels for 2 run directories"):
        run_compare(_compare_args(good, good, "--out", str(tmp_path / "o"), "--labels", "a"))


def test_callbacks_skip_without_wandb_or_samples(tmp_path: Path) -> None:
    from lightning_gcd.callbacks import MetricsHistory, WandbStructureReport
    from lightning_gcd.callbacks.metrics_history import to_jsonable

    trainer = SimpleNamespace(
        sanity_checking=False,
        is_global_zero=True,
        loggers=[],
        default_root_dir=str(tmp_path),
        current_epoch=0,
        global_step=5,
        callback_metrics={},
    )
    module = SimpleNamespace(last_curves={"r": np.zeros(2)}, last_metrics={"rdf_l1": 1.0}, last_samples=None)
    WandbStructureReport().on_validation_end(trainer, module)  # no WandbLogger: nothing to do, no error
    history = MetricsHistory()
    history.on_validation_end(trainer, module)
    history.on_validation_end(trainer, module)  # same curves object: a validation without new samples
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [x["sampled"] for x in lines] == [True, False] and lines[0]["val/rdf_l1"] == 1.0
    assert "val/rdf_l1" not in lines[1] and lines[0]["val/loss"] is None
    trainer.sanity_checking = True
    history.on_validation_end(trainer, SimpleNamespace(last_curves={"r": [1]}, last_metrics={}, last_samples=None))
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 2
    assert to_jsonable({(29, 29): np.array([1.0, np.nan, np.inf]), 6: np.float32(2)}) == {
        "29-29": [1.0, None, None],
        "6": 2.0,
    }
