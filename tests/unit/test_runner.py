"""lightning_gcd.runner: the Trainer builder, the worker pool, the results folder and the YAML profiles that
the studies under experiments/ share; and the pin that the YAML profiles give the numbers the Python profile
dicts gave before they moved (tests/data/profiles_before_yaml.json, written before the move)."""

from __future__ import annotations

import importlib.util
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lightning_gcd.runner.jobs import Job, run_jobs
from lightning_gcd.runner.profiles import apply_overrides, load_profile, profile_names, profile_path
from lightning_gcd.runner.results import curves_from_json, new_figure, read_json, results_lock, save_figure
from lightning_gcd.runner.trainer import STUDY_DEFAULTS, build_trainer, checkpointing, trainer_options
from lightning_gcd.studies.crystals import CONVERGE_SECTION

REPO = Path(__file__).resolve().parents[2]
SNAPSHOT = REPO / "tests" / "data" / "profiles_before_yaml.json"


def _script(relative: str):
    path = REPO / "experiments" / relative
    spec = importlib.util.spec_from_file_location(f"runner_test_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ----------------------------------------------------------------------------------------------------
# profiles: the numbers must not move
@pytest.mark.parametrize(
    ("study", "script"), [("crystals", "crystals/compare.py"), ("grain_boundaries", "grain_boundaries/run.py")]
)
@pytest.mark.parametrize("name", ["quick", "paper"])
def test_yaml_profiles_give_the_python_profiles_exactly(study: str, script: str, name: str) -> None:
    """Same keys in the same order, same values of the same types (an int stays an int, 5e-4 a float): the
    JSON texts are compared, so 0.0005 vs 5e-4 as strings or 2 vs 2.0 would fail."""
    module = _script(script)
    loaded = load_profile(module.PROFILES / f"{name}.yaml", module.PROFILE_SCHEMA)
    assert json.dumps(loaded) == json.dumps(json.loads(SNAPSHOT.read_text())[study][name])


def test_the_torus_convergence_budget_is_the_old_constant() -> None:
    loaded = load_profile(REPO / "experiments/crystals/profiles/sections/torus_converge.yaml", CONVERGE_SECTION)
    assert json.dumps(loaded) == json.dumps(json.loads(SNAPSHOT.read_text())["crystals_torus_converge"])


def test_the_command_line_profile_is_the_yaml_with_its_overrides() -> None:
    snapshot = json.loads(SNAPSHOT.read_text())
    compare = _script("crystals/compare.py")
    settings = compare.resolve_settings(compare.build_parser().parse_args([]))
    assert {k: settings[k] for k in snapshot["crystals"]["quick"]} == snapshot["crystals"]["quick"]
    assert settings["profile"] == "quick"
    gb = _script("grain_boundaries/run.py")
    args = gb.build_parser().parse_args(["--profile", "paper", "--set", "system.element=Mo"])
    gb_settings = gb.resolve_settings(args)
    # the grain-boundary profile's models are the crystal profile's sections, by reference
    assert gb_settings["system"]["element"] == "Mo"
    assert gb_settings["voxel"] == snapshot["crystals"]["paper"]["voxel"]


def test_the_opening_line_names_each_phases_own_steps() -> None:
    """The quick profile trains diamond for 6,000 steps, the other phases for 1,200: a diamond run must not
    announce 1,200."""
    compare = _script("crystals/compare.py")

    def words(*phases: str) -> str:
        return compare._steps_words(compare.resolve_settings(compare.build_parser().parse_args(["--phases", *phases])))

    assert words("diamond") == "diamond 6000 steps"
    assert words("sc", "diamond") == "1200 steps (diamond 6000)"
    assert words("sc", "fcc") == "1200 steps"


# ----------------------------------------------------------------------------------------------------
# profiles: composition, checks, overrides
def test_a_section_given_by_path_is_read_relative_to_the_file_that_names_it(tmp_path: Path) -> None:
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "model.yaml").write_text("model: {lr: 5e-4, mults: [1, 2]}\nsampler: ddpm\n")
    (tmp_path / "study").mkdir()
    (tmp_path / "study" / "quick.yaml").write_text(
        "description: 'CPU: two cores'\nsteps: 3\nvoxel: ../shared/model.yaml\nparticle:\n  sampler: pc\n"
    )
    schema = {
        "description": str,
        "steps": None,
        "voxel": {"model": None, "sampler": None, "spacing": None},
        "particle": {"model": None, "sampler": None},
    }
    loaded = load_profile(tmp_path / "study" / "quick.yaml", schema)
    # the string stays a string; a key the file does not give is absent, not a default
    assert loaded == {
        "description": "CPU: two cores",
        "steps": 3,
        "voxel": {"model": {"lr": 0.0005, "mults": [1, 2]}, "sampler": "ddpm"},
        "particle": {"sampler": "pc"},
    }


def test_an_unknown_key_fails_in_one_line_naming_the_file(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text("steps: 3\nx0_projection: true\n")
    with pytest.raises(SystemExit, match=r"profile .*p\.yaml: .*x0_projection") as err:
        load_profile(tmp_path / "p.yaml", {"steps": None})
    assert "\n" not in str(err.value)
    with pytest.raises(SystemExit, match="no such file"):
        load_profile(tmp_path / "missing.yaml", {"steps": None})


def test_profile_names_and_paths(tmp_path: Path) -> None:
    (tmp_path / "quick.yaml").write_text("steps: 1\n")
    (tmp_path / "paper.yaml").write_text("steps: 2\n")
    assert profile_names(tmp_path) == ["paper", "quick"]
    assert profile_path(tmp_path, "quick") == tmp_path / "quick.yaml"
    assert profile_path(tmp_path, "/elsewhere/mine.yaml") == Path("/elsewhere/mine.yaml")
    with pytest.raises(SystemExit, match="not one of paper, quick"):
        profile_path(tmp_path, "slow")


def test_overrides_reach_into_sections_and_parse_json() -> None:
    settings = {"steps": 3, "voxel": {"model": {"lr": 1e-3}}}
    apply_overrides(settings, ["voxel.model.channel_mults=[1,2,2]", "steps=7", "voxel.sampler=ddim", "new.key=null"])
    assert settings == {
        "steps": 7,
        "voxel": {"model": {"lr": 1e-3, "channel_mults": [1, 2, 2]}, "sampler": "ddim"},
        "new": {"key": None},
    }
    with pytest.raises(SystemExit, match="KEY=VALUE"):
        apply_overrides(settings, ["steps"])


# ----------------------------------------------------------------------------------------------------
# the Trainer
def test_trainer_options_defaults_settings_and_overrides() -> None:
    settings = {"accelerator": "cpu", "devices": None, "steps": 5, "profile": "quick", "benchmark": True}
    marker = object()
    options = trainer_options(settings, max_steps=5, callbacks=[marker], limit_val_batches=1)
    # only the settings the builder reads reach the Trainer (a study's "benchmark" or "steps" do not)
    assert set(options) == set(STUDY_DEFAULTS) | {"max_steps", "callbacks"}
    assert options["devices"] == 1 and options["limit_val_batches"] == 1 and options["callbacks"] == [marker]
    with pytest.raises(TypeError, match="not Trainer arguments: max_step"):
        trainer_options(settings, max_step=5)


def test_build_trainer_with_resumable_checkpointing(tmp_path: Path) -> None:
    from lightning.pytorch.callbacks import ModelCheckpoint

    from lightning_gcd.callbacks.checkpointing import AtomicCheckpointIO

    options = checkpointing(tmp_path / "ckpt", every_n_train_steps=3)
    trainer = build_trainer({"accelerator": "cpu"}, max_steps=4, **options)
    assert trainer.max_steps == 4 and trainer.logger is None and trainer.num_sanity_val_steps == 0
    saver = next(c for c in trainer.callbacks if isinstance(c, ModelCheckpoint))
    assert Path(saver.dirpath) == tmp_path / "ckpt" and saver.save_last and saver.save_top_k == 0
    assert saver._every_n_train_steps == 3
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)


def _tiny_module(killed_at_step: int | None = None) -> Any:
    """A one-layer LightningModule with a logged validation loss; ``killed_at_step``: the process dies there."""
    import lightning as L
    import torch

    class Tiny(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(2, 1)

        def training_step(self, batch: list[torch.Tensor], _: int) -> torch.Tensor:
            if self.global_step == killed_at_step:
                raise KeyboardInterrupt  # the process is killed
            return self.layer(batch[0]).pow(2).mean()

        def validation_step(self, batch: list[torch.Tensor], _: int) -> None:
            self.log("val/loss", self.layer(batch[0]).pow(2).mean())

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    return Tiny()


@pytest.mark.parametrize("every_n_train_steps", [None, 4])
def test_a_killed_run_leaves_last_ckpt_of_its_last_validation_or_step(
    tmp_path: Path, every_n_train_steps: int | None
) -> None:
    """A fit that dies in its 9th step resumes from step 6 (validations after steps 3 and 6) or step 8 (saved every
    4 steps): last.ckpt is written during the run, not only by a run that ends normally."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    data = DataLoader(TensorDataset(torch.randn(64, 2)), batch_size=2)
    options = checkpointing(tmp_path / "ckpt", every_n_train_steps=every_n_train_steps)
    trainer = build_trainer(
        {"accelerator": "cpu"},
        max_steps=20,
        limit_val_batches=1,
        val_check_interval=3,
        check_val_every_n_epoch=None,
        **options,
    )
    with pytest.raises(SystemExit):  # Lightning turns the interrupt into an exit after its teardown
        trainer.fit(_tiny_module(killed_at_step=8), data, data)
    saved = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)
    assert saved["global_step"] == (6 if every_n_train_steps is None else 8)


def test_a_resumed_run_keeps_writing_last_ckpt_when_the_checkpoint_came_from_another_saver(tmp_path: Path) -> None:
    """Resuming from a last.ckpt written by a differently configured saver (an older version, the other mode)
    must overwrite last.ckpt, not start last-v1.ckpt: the same command resumes from last.ckpt next time."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    data = DataLoader(TensorDataset(torch.randn(64, 2)), batch_size=2)
    folder = tmp_path / "ckpt"
    for every_n_train_steps, max_steps in ((4, 4), (None, 9)):
        trainer = build_trainer(
            {"accelerator": "cpu"},
            max_steps=max_steps,
            limit_val_batches=1,
            val_check_interval=3,
            check_val_every_n_epoch=None,
            **checkpointing(folder, every_n_train_steps=every_n_train_steps),
        )
        resume = folder / "last.ckpt"
        trainer.fit(_tiny_module(), data, data, ckpt_path=resume if resume.is_file() else None)
    assert torch.load(folder / "last.ckpt", weights_only=False)["global_step"] == 9
    assert not list(folder.glob("last-v*.ckpt"))


# ----------------------------------------------------------------------------------------------------
# the worker pool
def _job(tmp_path: Path, name: str, code: str) -> Job:
    out = tmp_path / "tasks" / f"{name}.json"
    return Job(name, [sys.executable, "-c", code, str(out)], out, tmp_path / "tasks" / f"{name}.log")


def test_jobs_a_failed_worker_is_named_with_its_log_and_the_others_are_kept(tmp_path: Path) -> None:
    write = "import json, sys; json.dump({'value': %d}, open(sys.argv[1], 'w'))"
    jobs = [
        _job(tmp_path, "a", write % 1),
        _job(tmp_path, "broken", "raise SystemExit('no such phase')"),
        _job(tmp_path, "silent", "pass"),  # exits 0 but writes nothing: a failure too
        _job(tmp_path, "b", write % 2),
    ]
    (tmp_path / "tasks").mkdir()
    jobs[3].output.write_text('{"value": "stale"}')  # a previous run's file is not taken for this one's
    done = {}
    failures = run_jobs(jobs, 2, lambda job, result: done.__setitem__(job.name, result), poll_seconds=0.05)
    assert done == {"a": {"value": 1}, "b": {"value": 2}}
    assert failures == [
        f"broken: worker exited with 1; log {tmp_path / 'tasks' / 'broken.log'}",
        f"silent: worker exited with 0; log {tmp_path / 'tasks' / 'silent.log'}",
    ]
    assert "no such phase" in (tmp_path / "tasks" / "broken.log").read_text()


# ----------------------------------------------------------------------------------------------------
# the results folder
def test_a_figure_is_written_atomically(tmp_path: Path) -> None:
    fig = new_figure((2, 2))
    fig.add_subplot().plot([0, 1], [1, 0])
    path = save_figure(fig, tmp_path / "plot.png", dpi=50)
    assert path.read_bytes()[:4] == b"\x89PNG" and [p.name for p in tmp_path.iterdir()] == ["plot.png"]


def test_results_lock_makes_merging_processes_take_turns(tmp_path: Path) -> None:
    events: list[str] = []

    def second() -> None:
        with results_lock(tmp_path):
            events.append("second in")

    with results_lock(tmp_path):
        thread = threading.Thread(target=second)
        thread.start()
        time.sleep(0.3)
        events.append("first out")
    thread.join(10)
    assert events == ["first out", "second in"]


def test_reading_results_and_curves_back(tmp_path: Path) -> None:
    assert read_json(tmp_path / "none.json", {"empty": True}) == {"empty": True}
    (tmp_path / "r.json").write_text('{"a": 1}')
    assert read_json(tmp_path / "r.json") == {"a": 1}
    curves = curves_from_json({"r": [0.0, 1.0], "g": [1.0, None], "label": "x"})
    assert np.isnan(curves["g"][1]) and curves["r"].dtype == float and curves["label"] == "x"


def test_study_command_names_the_script_from_the_repository_root(tmp_path: Path) -> None:
    """A run from another checkout (a worktree, a cluster copy) records the command a user types, not its path."""
    from lightning_gcd.runner.results import study_command

    script = tmp_path / "checkout" / "experiments" / "crystals" / "trapping.py"
    assert study_command(script, ["--samples", "32"]) == [
        "python",
        "experiments/crystals/trapping.py",
        "--samples",
        "32",
    ]
    assert study_command(tmp_path / "elsewhere.py", []) == ["python", "elsewhere.py"]
