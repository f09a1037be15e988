"""``gcd fit|validate|test|predict``: LightningCLI over the diffusion models and the AtomsDataModule.

A config composes ``model`` (``class_path`` picks ``GrandCanonicalDiffusion`` or ``ParticleDiffusion``),
``data`` (``AtomsDataModule``), ``trainer`` (logger and callbacks included) and ``checkpoint``.
On top of LightningCLI:

- a stable run directory ``<run_root>/<run_name>`` (run name: ``--run_name``, default the config file's
  stem); ``trainer.default_root_dir`` and the checkpoints live there, with the resolved ``config.yaml``;
- checkpoints: ``last.ckpt`` every ``checkpoint.every_n_train_steps`` steps and at each epoch end, written
  atomically; the resolved config is stored inside every checkpoint;
- resume: ``gcd fit ... --ckpt_path last``, and automatically when the run directory already holds
  ``last.ckpt``; model, EMA, optimiser, LR schedule, loop state (global step) and RNG states are restored,
  checkpoints are loaded weights-only; a checkpoint already past ``--trainer.max_steps``/``max_epochs`` is
  refused in one line (its step, and what to raise);
- a config naming a removed model option (``lightning_gcd.models.retired``) fails in one line;
- W&B: a ``WandbLogger`` gets the run name, the run directory as ``save_dir`` and an id kept in
  ``<run_dir>/wandb_id`` with ``resume="allow"``, so a resumed run continues the same W&B run;
- preemption: SIGTERM (and SIGUSR1 outside SLURM auto-requeue) saves ``last.ckpt`` and exits with 0.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import string
import sys
from collections.abc import Sequence
from io import StringIO
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.plugins.io import CheckpointIO
from lightning.pytorch.utilities.exceptions import SIGTERMException

from datamodules.datamodule import AtomsDataModule
from lightning_gcd.callbacks.checkpointing import AtomicCheckpointIO, PreemptionCheckpoint
from lightning_gcd.errors import GcdError
from lightning_gcd.io import write_text_atomic
from lightning_gcd.models.retired import drop_retired, retired_in, retired_message

TRAIN_COMMANDS = ("fit", "validate", "test", "predict")
WANDB_ID_FILE = "wandb_id"


class GcdSaveConfig(SaveConfigCallback):
    """Saves the resolved config to the run directory, and into every checkpoint (``gcd_config``)."""

    def save_config(self, trainer: Any, pl_module: Any, stage: str) -> None:
        """Also write ``config.yaml`` in the run directory (a logger may keep its own log folder).

        Runs on rank zero only: no collective calls here (``trainer.log_dir`` broadcasts, and would hang DDP).
        """
        path = Path(trainer.default_root_dir) / self.config_filename
        path.parent.mkdir(parents=True, exist_ok=True)
        self.parser.save(self.config, str(path), skip_none=False, overwrite=True, multifile=self.multifile)

    def on_save_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        checkpoint["gcd_config"] = self.parser.dump(self.config, skip_none=False)


class GcdCLI(LightningCLI):
    """LightningCLI with run directories, atomic checkpoints, auto-resume and persistent W&B ids."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.preemption = PreemptionCheckpoint()
        super().__init__(*args, **kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument(
            "--run_name",
            type=str | None,
            default=None,
            help="name of the run directory under run_root (default: the config file's stem)",
        )
        parser.add_argument("--run_root", type=str, default="runs", help="folder that holds run directories")
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.save_last": True,
                "checkpoint.every_n_train_steps": 50,
                "checkpoint.save_on_train_epoch_end": True,
                "checkpoint.save_top_k": 1,
                "checkpoint.filename": "step{step:07d}",
                "checkpoint.auto_insert_metric_name": False,
            }
        )

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """Lightning's parse; a config naming a removed model option fails in one line that says so and why
        (``lightning_gcd.models.retired``) instead of jsonargparse's usage and its list of union subtypes."""
        captured = StringIO()
        try:
            with contextlib.redirect_stderr(captured):
                super().parse_arguments(parser, args)
        except SystemExit as exc:
            retired = retired_in(captured.getvalue()) if exc.code not in (0, None) else []
            if retired:
                raise GcdError(retired_message(retired[0])) from None
            sys.stderr.write(captured.getvalue())
            raise
        sys.stderr.write(captured.getvalue())

    def _parse_ckpt_path(self) -> None:
        """Lightning's (``--ckpt_path``: the checkpoint's hyperparameters into the config), with the model
        options removed since the checkpoint was saved dropped, a warning each, so that it still loads."""
        if not self.config.get("subcommand"):
            return
        ckpt_path = self.config[self.config.subcommand].get("ckpt_path")
        if not (ckpt_path and Path(ckpt_path).is_file()):
            return
        hparams = torch.load(ckpt_path, weights_only=True, map_location="cpu").get("hyper_parameters", {})
        hparams.pop("_instantiator", None)
        if not hparams:
            return
        if "_class_path" in hparams:
            hparams = {"class_path": hparams.pop("_class_path"), "dict_kwargs": drop_retired(hparams, str(ckpt_path))}
        else:
            hparams = drop_retired(hparams, str(ckpt_path))
        try:
            self.config = self.parser.parse_object({self.config.subcommand: {"model": hparams}}, self.config)
        except SystemExit:
            sys.stderr.write("Parsing of ckpt_path hyperparameters failed!\n")
            raise

    # ------------------------------------------------------------------------------------------------
    def _section(self) -> Any:
        return self.config[self.subcommand] if self.subcommand else self.config

    def run_dir(self) -> Path:
        section = self._section()
        name = section.get("run_name")
        if not name:
            configs = section.get("config") or []
            name = Path(str(configs[-1])).stem if configs else "default"
        return Path(section.get("run_root") or "runs") / name

    def before_instantiate_classes(self) -> None:
        section = self._section()
        run_dir = self.run_dir()
        section["run_name"] = run_dir.name
        trainer = section["trainer"]
        trainer["default_root_dir"] = str(run_dir)
        if section.get("checkpoint") is not None and not section["checkpoint"].get("dirpath"):
            section["checkpoint"]["dirpath"] = str(run_dir / "checkpoints")
        self._configure_wandb(trainer.get("logger"), run_dir)

    def _configure_wandb(self, logger_config: Any, run_dir: Path) -> None:
        loggers = logger_config if isinstance(logger_config, list) else [logger_config]
        for logger in loggers:
            class_path = getattr(logger, "class_path", None) or (
                logger.get("class_path") if isinstance(logger, dict) else None
            )
            if not class_path or not str(class_path).endswith("WandbLogger"):
                continue
            init = logger["init_args"]
            if init.get("save_dir") in (None, "", ".", "./"):  # WandbLogger's default is "."
                init["save_dir"] = str(run_dir)
            init["name"] = init.get("name") or run_dir.name
            init["resume"] = init.get("resume") or "allow"
            init["id"] = init.get("id") or wandb_run_id(run_dir)

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Any]) -> Any:
        plugins = config.get("plugins") or []
        plugins = plugins if isinstance(plugins, list) else [plugins]
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            config["plugins"] = [*plugins, AtomicCheckpointIO()]
        return super()._instantiate_trainer(config, [*callbacks, self.preemption])

    def before_fit(self) -> None:
        """Resume automatically from the newest of ``last.ckpt`` and SLURM's ``hpc_ckpt_*.ckpt``; load weights-only."""
        config = self.config_init[self.subcommand]
        if config.get("ckpt_path") is None:
            candidates = list(Path(self.trainer.default_root_dir).glob("hpc_ckpt_*.ckpt"))
            if self.trainer.checkpoint_callback is not None and self.trainer.checkpoint_callback.dirpath:
                candidates += list(Path(self.trainer.checkpoint_callback.dirpath).glob("last.ckpt"))
            if candidates:
                newest = max(candidates, key=lambda p: p.stat().st_mtime)
                self.refuse_checkpoint_past_budget(newest)
                print(f"gcd: resuming from {newest}", file=sys.stderr)
                config["ckpt_path"] = str(newest)
        elif Path(str(config["ckpt_path"])).is_file():
            self.refuse_checkpoint_past_budget(Path(config["ckpt_path"]))
        if "weights_only" in config and config["weights_only"] is None:
            config["weights_only"] = True

    def refuse_checkpoint_past_budget(self, ckpt_path: Path) -> None:
        """One line when the checkpoint to resume is already past ``--trainer.max_steps`` or ``max_epochs``.

        Otherwise Lightning raises its ``MisconfigurationException`` (epochs) or restores the run and stops
        at once, having trained nothing (steps). A checkpoint exactly at the budget (a finished run re-run
        as it was) passes: Lightning stops at once, as it should.
        """
        try:  # mmap: the loop counters without reading the weights
            checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=True, mmap=True)
        except Exception:  # noqa: BLE001 - not ours to judge here: Lightning's loading reports it
            return
        step, epoch = int(checkpoint.get("global_step", 0)), int(checkpoint.get("epoch", 0))
        max_steps, max_epochs = self.trainer.max_steps, self.trainer.max_epochs
        if max_steps is not None and max_steps >= 0 and step > max_steps:
            raise GcdError(
                f"{ckpt_path} is at step {step}, past --trainer.max_steps {max_steps}: raise "
                f"--trainer.max_steps above {step} to train on, or give a new --run_name to start a new run"
            )
        if max_epochs is not None and max_epochs >= 0 and epoch > max_epochs:
            raise GcdError(
                f"{ckpt_path} is at epoch {epoch}, past --trainer.max_epochs {max_epochs}: raise "
                f"--trainer.max_epochs above {epoch} to train on, or give a new --run_name to start a new run"
            )


def wandb_run_id(run_dir: Path) -> str | None:
    """The W&B run id of this run directory: read from ``wandb_id``, or made and written by global rank 0."""
    path = run_dir / WANDB_ID_FILE
    if path.exists():
        return path.read_text().strip() or None
    rank = int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", os.environ.get("LOCAL_RANK", "0"))))
    if rank != 0:
        return None
    alphabet = string.ascii_lowercase + string.digits
    run_id = "".join(secrets.choice(alphabet) for _ in range(8))  # W&B's own id format
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, run_id)
    return run_id


def run_lightning(argv: Sequence[str]) -> int:
    """Run a LightningCLI subcommand; a SIGTERM-stopped fit saves ``last.ckpt`` and returns 0."""
    cli: GcdCLI | None = None
    try:
        cli = GcdCLI(
            L.LightningModule,  # subclass mode: the diffusion models and the spectrum forward model
            AtomsDataModule,
            subclass_mode_model=True,
            args=None if list(argv) == sys.argv[1:] else list(argv),  # LightningCLI warns when given both
            save_config_callback=GcdSaveConfig,
            save_config_kwargs={"overwrite": True},
            parser_kwargs={"prog": "gcd"},
        )
    except SIGTERMException:
        where = (cli.preemption.saved_path if cli is not None else None) or PreemptionCheckpoint.last_saved or "none"
        print(f"gcd: stopped by a termination signal; checkpoint saved: {where}", file=sys.stderr)
        return 0
    return 0
