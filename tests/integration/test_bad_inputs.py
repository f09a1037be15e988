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
FAST = [
    "--trainer.max_epochs",
    "-1",
    "--model.init_args.val_samples",
    "0",
    "--trainer.limit_val_batches",
    "0",
    "--trainer.enable_progress_bar",
    "false",
    "--trainer.enable_model_summary",
    "false",
]


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
    with pytest.warns(
        UserWarning, match=r"'x0_projection' was removed .*holds the default \(False\), so nothing changes"
    ):
        model = load_model(old_checkpoint)
    assert not hasattr(model, "x0_projection") and "x0_projection" not in model.hparams
    assert len(model.sample(model.sample_template(1), batch_size=1, steps=2, progress=False)) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a checkpoint saved now has no retired option: no warning
        load_model(old_checkpoint.parent / "runs/smoke_voxel/checkpoints/last.ckpt")


# ------------------------------------------------------------------------------------------------
# item 6: a grid or batch larger than the free memory; a finished run re-run with a smaller budget


def test_a_grid_larger_than_the_memory_is_refused_before_allocating(smoke_run: Path) -> None:
    ckpt = smoke_run / "runs/smoke_voxel/checkpoints/last.ckpt"
    run = run_gcd(
        "sample",
        "--ckpt",
        str(ckpt),
        "--grid",
        "2000",
        "2000",
        "2000",
        "--n",
        "1",
        "--out",
        "x.extxyz",
        "--no-progress",
        cwd=smoke_run,
    )
    assert run.returncode == 2, run.stderr[-3000:]
    assert "Traceback" not in run.stderr and "RuntimeError" not in run.stderr
    (line,) = error_lines(run.stderr)
    assert line == run.stderr.strip().splitlines()[-1]
    assert (
        "on a 2000×2000×2000 grid needs about" in line and " TiB of memory, and cpu has " in line and " free: " in line
    )
    assert "--grid, --supercell or --n-atoms" in line
    assert not (smoke_run / "x.extxyz").exists()


def test_a_batch_larger_than_the_memory_names_the_batch_size_that_fits(smoke_run: Path, monkeypatch, capsys) -> None:
    import lightning_gcd.sampling as sampling

    model = load_model(smoke_run / "runs/smoke_voxel/checkpoints/last.ckpt")
    one = model.sampling_bytes(model.sample_template(1, supercell=(2, 2, 2)), 1)
    assert model.sampling_bytes(model.sample_template(1, supercell=(2, 2, 2)), 4) == 4 * one  # linear in the batch
    monkeypatch.setattr(sampling, "available_bytes", lambda device: 5 * one)  # room for 3 at 70%
    out = smoke_run / "batch.extxyz"
    args = [
        "sample",
        "--ckpt",
        str(smoke_run / "runs/smoke_voxel/checkpoints/last.ckpt"),
        "--supercell",
        "2",
        "2",
        "2",
        "--steps",
        "1",
        "--out",
        str(out),
        "--no-progress",
    ]
    assert gcd_main([*args, "--n", "8", "--batch-size", "8"]) == 2
    (line,) = error_lines(capsys.readouterr().err)
    assert "sampling 8 structures at a time on a 16×16×16 grid" in line and "lower --batch-size to 3" in line
    assert not out.exists()
    assert gcd_main([*args, "--n", "3", "--batch-size", "3"]) == 0  # what it advised runs
    assert out.is_file()


def test_a_particle_cell_larger_than_the_memory_is_refused_before_its_template(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    import lightning_gcd.sampling as sampling

    fit = run_gcd(
        "fit",
        "--config",
        str(REPO / "experiments/smoke/particle.yaml"),
        "--trainer.max_steps",
        "1",
        *FAST,
        cwd=tmp_path,
    )
    assert fit.returncode == 0, fit.stderr[-3000:]
    ckpt = tmp_path / "runs/smoke_particle/checkpoints/last.ckpt"
    model = load_model(ckpt)
    small, big = (model.sampling_bytes(model.sample_template(1, supercell=(s, s, s)), 1) for s in (2, 4))
    assert 7.5 * small < big < 8.5 * small  # 8× the atoms, the same neighbours each
    built = []
    real_template = type(model).sample_template
    monkeypatch.setattr(
        type(model), "sample_template", lambda self, n, *a, **k: built.append(n) or real_template(self, n, *a, **k)
    )
    monkeypatch.setattr(sampling, "available_bytes", lambda device: int(1.5 * small))
    out = tmp_path / "p.extxyz"
    assert (
        gcd_main(
            [
                "sample",
                "--ckpt",
                str(ckpt),
                "--supercell",
                "4",
                "4",
                "4",
                "--n",
                "64",
                "--steps",
                "1",
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        == 2
    )
    (line,) = error_lines(capsys.readouterr().err)
    assert "sampling 16 structures at a time on 2048 atoms each needs about" in line
    assert "--grid, --supercell or --n-atoms" in line and not out.exists()
    assert built == [1]  # only the one-row template was built: the 64 rows never were


def test_free_memory_is_known_on_linux_cpus() -> None:
    from lightning_gcd.memory import available_bytes, format_bytes

    free = available_bytes("cpu")
    assert free is not None and 0 < free < 1 << 50
    assert format_bytes(3 * 2**40) == "3.0 TiB" and format_bytes(512) == "512 B" and available_bytes("meta") is None


def test_rerunning_a_finished_fit_with_a_smaller_max_steps_says_so_in_one_line(
    smoke_run: Path, old_checkpoint: Path
) -> None:
    rerun = run_gcd("fit", "--config", str(SMOKE_VOXEL), "--trainer.max_steps", "1", *FAST, cwd=smoke_run)
    assert rerun.returncode == 2, rerun.stderr[-3000:]
    assert "Traceback" not in rerun.stderr and "Exception" not in rerun.stderr
    (line,) = error_lines(rerun.stderr)
    assert line == rerun.stderr.strip().splitlines()[-1]
    assert "last.ckpt is at step 2, past --trainer.max_steps 1: raise --trainer.max_steps above 2" in line
    assert "new --run_name" in line
    # an explicit --ckpt_path is checked too; this one holds a removed option: dropped with a warning, then refused
    other = run_gcd(
        "fit",
        "--config",
        str(SMOKE_VOXEL),
        "--trainer.max_steps",
        "1",
        *FAST,
        "--run_name",
        "other",
        "--ckpt_path",
        str(old_checkpoint),
        cwd=smoke_run,
    )
    assert other.returncode == 2, other.stderr[-3000:]
    assert "'x0_projection' was removed" in other.stderr and "Parsing of ckpt_path" not in other.stderr
    (line,) = error_lines(other.stderr)
    assert "old.ckpt is at step 2, past --trainer.max_steps 1" in line


def test_a_finished_fit_rerun_as_it_was_still_passes(smoke_run: Path) -> None:
    rerun = run_gcd("fit", "--config", str(SMOKE_VOXEL), "--trainer.max_steps", "2", *FAST, cwd=smoke_run)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "resuming from" in rerun.stderr and not error_lines(rerun.stderr)
