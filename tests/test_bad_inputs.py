"""Bad inputs end in one line that says what is wrong and what to do, never in a traceback (#29 items 5, 6):
a config naming a removed option, a sampling grid or batch larger than the free memory, a finished run
re-run with a smaller step budget. A checkpoint saved while a removed option existed still loads."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import pytest
import torch

from conftest import REPO, run_gcd
from lightning_gcd.cli import main as gcd_main
from lightning_gcd.models.loading import load_model

SMOKE_VOXEL = REPO / "experiments/smoke/voxel.yaml"
FAST = ["--trainer.max_epochs", "-1", "--model.init_args.val_samples", "0", "--trainer.limit_val_batches", "0",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("gcd: error:")]


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished two-step ``gcd fit`` of the smoke voxel config; returns its working folder."""
    work = tmp_path_factory.mktemp("fit")
    fit = run_gcd("fit", "--config", str(SMOKE_VOXEL), "--trainer.max_steps", "2", *FAST, cwd=work)
    assert fit.returncode == 0, fit.stderr[-3000:]
    assert (work / "runs/smoke_voxel/checkpoints/last.ckpt").is_file()
    return work


@pytest.fixture(scope="module")
def old_checkpoint(smoke_run: Path) -> Path:
    """The smoke run's checkpoint as one saved while ``x0_projection`` existed (its default among the hparams)."""
    ckpt = torch.load(smoke_run / "runs/smoke_voxel/checkpoints/last.ckpt", weights_only=True, map_location="cpu")
    assert "x0_projection" not in ckpt["hyper_parameters"]
    ckpt["hyper_parameters"]["x0_projection"] = False
    path = smoke_run / "old.ckpt"
    torch.save(ckpt, path)
    return path


# ------------------------------------------------------------------------------------------------
# item 5: a removed option


@pytest.mark.parametrize("how", ["argument", "config file"])
def test_a_config_naming_a_removed_option_fails_in_one_line(tmp_path: Path, capsys, monkeypatch, how: str) -> None:
    monkeypatch.setattr(sys, "argv", ["gcd"])  # as from the command line (LightningCLI warns about pytest's own)
    if how == "argument":
        extra = ["--model.init_args.x0_projection=false"]
    else:
        (tmp_path / "old.yaml").write_text("model:\n  init_args:\n    x0_projection: true\n")
        extra = ["--config", str(tmp_path / "old.yaml")]
    code = gcd_main(["fit", "--config", str(SMOKE_VOXEL), *extra, "--print_config"])
    err = capsys.readouterr().err
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("gcd: error: model option 'x0_projection' was removed: ")
    assert "emptied few-step samples" in lines[0] and "delete it from the config" in lines[0]


def test_an_unknown_option_still_gets_jsonargparse_s_own_message(capsys, monkeypatch) -> None:
    monkeypatch.setattr(sys, "argv", ["gcd"])
    with pytest.raises(SystemExit):
        gcd_main(["fit", "--config", str(SMOKE_VOXEL), "--model.init_args.no_such_option=1", "--print_config"])
    err = capsys.readouterr().err
    assert "no_such_option" in err and "was removed" not in err


def test_a_checkpoint_holding_a_removed_option_loads_with_a_warning(old_checkpoint: Path) -> None:
    with pytest.warns(UserWarning, match=r"'x0_projection' was removed .*holds the default \(False\), so nothing changes"):
        model = load_model(old_checkpoint)
    assert not hasattr(model, "x0_projection") and "x0_projection" not in model.hparams
    assert len(model.sample(model.sample_template(1), batch_size=1, steps=2, progress=False)) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a checkpoint saved now has no retired option: no warning
        load_model(old_checkpoint.parent / "runs/smoke_voxel/checkpoints/last.ckpt")
