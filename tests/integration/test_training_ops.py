"""Training operations: config handling, checkpoints, kill -9 and resume, exact resume, SIGTERM, W&B ids."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from conftest import REPO, run_gcd
from test_reporting import read_wandb_records

VOXEL = str(REPO / "experiments/smoke/voxel.yaml")
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


def _csv_rows(run_dir: Path) -> list[dict[str, str]]:
    rows = []
    for path in sorted(run_dir.glob("csv/version_*/metrics.csv")):
        with open(path) as handle:
            rows.extend(dict(r, version=path.parent.name) for r in csv.DictReader(handle))
    return rows


def _csv_logger(run_dir: Path) -> list[str]:
    return [
        "--trainer.logger",
        "lightning.pytorch.loggers.CSVLogger",
        "--trainer.logger.save_dir",
        str(run_dir),
        "--trainer.logger.name",
        "csv",
    ]


def test_unknown_key_is_rejected_with_its_name(tmp_path: Path) -> None:
    run = run_gcd("fit", "--config", VOXEL, "--model.init_args.base_chanels", "4", cwd=tmp_path)
    assert run.returncode != 0
    assert "base_chanels" in run.stderr
    printed = run_gcd("fit", "--config", VOXEL, "--print_config", cwd=tmp_path)
    assert (
        printed.returncode == 0
        and "GrandCanonicalDiffusion" in printed.stdout
        and "run_name: smoke_voxel" in printed.stdout
    )


def test_run_directory_config_and_checkpoint_contents(tmp_path: Path) -> None:
    run_dir = tmp_path / "runs/smoke_voxel"
    run = run_gcd(
        "fit",
        "--config",
        VOXEL,
        *QUIET,
        "--trainer.max_epochs",
        "1",
        "--model.init_args.val_samples",
        "0",
        *_csv_logger(run_dir),
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert (run_dir / "csv/version_0/config.yaml").exists()  # LightningCLI's copy, in the logger's folder
    assert (run_dir / "config.yaml").exists()
    checkpoint = torch.load(run_dir / "checkpoints/last.ckpt", weights_only=True)
    assert "GrandCanonicalDiffusion" in checkpoint["gcd_config"]
    assert {"gcd_rng", "optimizer_states", "lr_schedulers", "loops"} <= set(checkpoint)
    assert any(k.startswith("ema.") for k in checkpoint["state_dict"])
    assert not list(run_dir.rglob(".*tmp*")), "temporary checkpoint files left behind"


def test_kill9_then_resume_continues_from_last_checkpoint(tmp_path: Path) -> None:
    """kill -9 mid-run; the rerun resumes from last.ckpt (saved every 2 steps) and its loss curve joins."""
    run_dir = tmp_path / "runs/killed"
    args = [
        "fit",
        "--config",
        VOXEL,
        *QUIET,
        "--run_name",
        "killed",
        "--trainer.max_epochs",
        "40",
        "--checkpoint.every_n_train_steps",
        "2",
        "--trainer.log_every_n_steps",
        "1",
        "--model.init_args.val_samples",
        "0",
        *_csv_logger(run_dir),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "lightning_gcd.cli", *args],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    last = run_dir / "checkpoints/last.ckpt"
    deadline = time.time() + 300
    step_at_kill = 0
    while time.time() < deadline:
        time.sleep(0.5)
        if last.exists():
            try:
                step_at_kill = torch.load(last, weights_only=True)["global_step"]
            except Exception:  # being replaced right now: atomic rename means the next read works
                continue
            if step_at_kill >= 8:
                break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert step_at_kill >= 8, "training did not reach 8 steps before the deadline"
    assert proc.returncode == -signal.SIGKILL, f"the run was not killed (it ended with {proc.returncode})"
    saved_step = torch.load(last, weights_only=True)["global_step"]  # the file is complete after a kill -9
    assert saved_step >= step_at_kill

    resumed = run_gcd(*[a if a != "40" else str(saved_step // 2 + 2) for a in args], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stderr
    rows = [r for r in _csv_rows(run_dir) if r.get("train/loss_step")]
    first_run = [r for r in rows if r["version"] == "version_0"]
    second_run = [r for r in rows if r["version"] == "version_1"]
    assert second_run, "the resumed run logged nothing"
    first_step_after = min(int(r["step"]) for r in second_run)
    assert first_step_after == saved_step, (first_step_after, saved_step)  # continues at the checkpoint's step
    # the curve joins: the resumed loss is near where training stood, not back at the untrained value
    initial = float(first_run[0]["train/loss_step"])
    before = [float(r["train/loss_step"]) for r in first_run if int(r["step"]) < saved_step][-3:]
    after = [float(r["train/loss_step"]) for r in second_run][:3]
    assert abs(sum(after) / 3 - sum(before) / 3) < abs(initial - sum(before) / 3)
    assert torch.load(last, weights_only=True)["global_step"] > saved_step


def test_resumed_run_equals_uninterrupted(tmp_path: Path) -> None:
    common = [
        "fit",
        "--config",
        VOXEL,
        *QUIET,
        "--model.init_args.val_samples",
        "0",
        "--checkpoint.every_n_train_steps",
        "1000",
        "--model.init_args.lr_total_steps",
        "8",
    ]  # one LR schedule for both, whatever max_epochs says
    whole = run_gcd(*common, "--run_name", "whole", "--trainer.max_epochs", "4", cwd=tmp_path)
    assert whole.returncode == 0, whole.stderr[-2000:]
    half = run_gcd(*common, "--run_name", "parts", "--trainer.max_epochs", "2", cwd=tmp_path)
    assert half.returncode == 0, half.stderr[-2000:]
    rest = run_gcd(*common, "--run_name", "parts", "--trainer.max_epochs", "4", cwd=tmp_path)
    assert rest.returncode == 0 and "resuming from" in rest.stderr, rest.stderr[-2000:]
    a = torch.load(tmp_path / "runs/whole/checkpoints/last.ckpt", weights_only=True)
    b = torch.load(tmp_path / "runs/parts/checkpoints/last.ckpt", weights_only=True)
    assert a["global_step"] == b["global_step"] == 8
    for key, value in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][key], value, atol=1e-6, rtol=0, msg=key)


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(tmp_path: Path) -> None:
    run_dir = tmp_path / "runs/preempted"
    args = [
        "fit",
        "--config",
        VOXEL,
        *QUIET,
        "--run_name",
        "preempted",
        "--trainer.max_epochs",
        "200",
        "--checkpoint.every_n_train_steps",
        "1000",
        "--model.init_args.val_samples",
        "0",
        *_csv_logger(run_dir),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "lightning_gcd.cli", *args],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 300
    while time.time() < deadline and not [r for r in _csv_rows(run_dir) if r.get("train/loss_step")]:
        time.sleep(0.5)
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr[-3000:]
    assert "checkpoint saved" in stderr
    checkpoint = torch.load(run_dir / "checkpoints/last.ckpt", weights_only=True)
    assert checkpoint["global_step"] > 0


def test_wandb_offline_run_id_is_reused_on_resume(tmp_path: Path) -> None:
    wandb_args = [
        "--trainer.logger",
        "lightning.pytorch.loggers.WandbLogger",
        "--trainer.logger.offline",
        "true",
        "--trainer.logger.project",
        "gcd-tests",
    ]
    common = ["fit", "--config", VOXEL, *QUIET, "--run_name", "wb", "--model.init_args.val_samples", "0", *wandb_args]
    env = {"WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    first = run_gcd(*common, "--trainer.max_epochs", "1", cwd=tmp_path, env=env)
    assert first.returncode == 0, first.stderr[-3000:]
    run_id = (tmp_path / "runs/wb/wandb_id").read_text().strip()
    second = run_gcd(*common, "--trainer.max_epochs", "2", cwd=tmp_path, env=env)
    assert second.returncode == 0 and "resuming from" in second.stderr, second.stderr[-3000:]
    runs = sorted((tmp_path / "runs/wb/wandb").glob("offline-run-*"))
    assert len(runs) == 2
    assert all(r.name.endswith(run_id) for r in runs), [r.name for r in runs]
    # the two runs' records: one W&B run id, and the resumed run's history continues the first one's (its
    # steps and epoch follow on; a restarted run would log from step 0 again)
    history = []
    for run in runs:
        records = list(read_wandb_records(run / f"run-{run_id}.wandb"))
        assert [r.run.run_id for r in records if r.WhichOneof("record_type") == "run"] == [run_id]
        rows = [
            {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in r.history.item}
            for r in records
            if r.WhichOneof("record_type") == "history"
        ]
        history.append([(row["trainer/global_step"], row["epoch"]) for row in rows if "train/loss_step" in row])
    assert history == [[(0, 0), (1, 0)], [(2, 1), (3, 1)]], history  # 2 steps per epoch (16 structures, batch 8)


def test_speed_switches_bf16_compile_clip_accumulate(tmp_path: Path) -> None:
    run = run_gcd(
        "fit",
        "--config",
        VOXEL,
        *QUIET,
        "--run_name",
        "fast",
        "--trainer.max_epochs",
        "1",
        "--trainer.precision",
        "bf16-mixed",
        "--trainer.gradient_clip_val",
        "1.0",
        "--trainer.accumulate_grad_batches",
        "2",
        "--model.init_args.compile",
        "true",
        "--model.init_args.compile_backend",
        "eager",
        "--model.init_args.matmul_precision",
        "high",
        "--model.init_args.val_samples",
        "2",
        "--trainer.callbacks+=probes.SpeedProbe",
        "--trainer.callbacks.out",
        str(tmp_path / "probe.json"),
        cwd=tmp_path,
        env={"PYTHONPATH": str(REPO / "tests")},
    )
    assert run.returncode == 0, run.stderr[-3000:]
    # in effect, not only accepted: the network was compiled (dynamo traced its forward), and its training
    # forward ran under bf16 autocast (the U-Net's output in bfloat16)
    probe = json.loads((tmp_path / "probe.json").read_text())
    assert probe["compiled_net"] == "OptimizedModule" and probe["dynamo_frames"].get("ok", 0) > 0, probe
    assert {"compiling": True, "autocast": True, "dtype": "torch.bfloat16"} in probe["forwards"], probe["forwards"]
    checkpoint = torch.load(tmp_path / "runs/fast/checkpoints/last.ckpt", weights_only=True)
    assert not any("_orig_mod" in k or "_compiled" in k for k in checkpoint["state_dict"])
    assert checkpoint["global_step"] == 1  # 2 train batches (16 train structures, batch 8) accumulated into 1 step
