"""Real DDP on the CPU: two processes (gloo), launched as a separate command as a user would.

The DDP launcher re-executes the command line, so DDP runs only as subprocesses here: two DDP runs inside
one pytest process would collide on the rendezvous port.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

from conftest import REPO, run_gcd

from datamodules import AtomsH5

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
    return [
        "--trainer.logger",
        "lightning.pytorch.loggers.CSVLogger",
        "--trainer.logger.save_dir",
        str(run_dir),
        "--trainer.logger.name",
        "csv",
    ]


def _world_size(run) -> int:
    """The number of processes Lightning started (its "Starting with N processes"; 1 when it printed none)."""
    found = re.findall(r"Starting with (\d+) processes", run.stderr)
    return int(found[-1]) if found else 1


def test_two_process_ddp_fit_and_validate_match_one_process(tmp_path: Path) -> None:
    """An uneven split: 3 validation structures and 5 samples over 2 ranks. Two processes ran (world size 2);
    the validation loss is that of one process (each structure counted once: no sampler padding); the
    sample metrics are computed on exactly the 5 samples asked for, gathered from both ranks."""
    from datamodules.builders import build_dataset

    data = build_dataset(
        "crystals", tmp_path / "odd_val.h5", count=20, phases=["fcc"], split=(0.75, 0.16, 0.09), progress=False
    )
    with AtomsH5(data) as h5:
        assert len(h5.split("val")) == 3  # odd: two ranks cannot split it evenly
    options = [*QUIET, "--data.path", str(data), "--model.init_args.val_samples", "5"]
    fit_dir = tmp_path / "runs/ddp_fit"
    fit = run_gcd(
        "fit",
        "--config",
        VOXEL,
        *options,
        "--run_name",
        "ddp_fit",
        "--trainer.devices",
        "2",
        "--trainer.strategy",
        "ddp",
        "--trainer.max_epochs",
        "2",
        "--data.batch_size",
        "8",
        *_csv(fit_dir),
        cwd=tmp_path,
        timeout=900,
    )
    assert fit.returncode == 0, fit.stderr[-4000:]
    assert _world_size(fit) == 2, fit.stderr[-4000:]
    checkpoint = fit_dir / "checkpoints/last.ckpt"
    assert checkpoint.exists()
    fitted = _last_val(fit_dir)
    assert {"val/loss", "val/n_atoms_mean", "val/rdf_l1"} <= set(fitted)
    assert fitted["val/n_structures"] == 5  # gathered from both ranks (3 + 2)

    results = {}
    for devices in ("1", "2"):
        run_dir = tmp_path / f"runs/validate{devices}"
        strategy = ["--trainer.strategy", "ddp"] if devices == "2" else []
        run = run_gcd(
            "validate",
            "--config",
            VOXEL,
            *options,
            "--run_name",
            f"validate{devices}",
            "--trainer.devices",
            devices,
            *strategy,
            "--data.batch_size",
            "2",
            "--ckpt_path",
            str(checkpoint),
            *_csv(run_dir),
            cwd=tmp_path,
            timeout=900,
        )
        assert run.returncode == 0, run.stderr[-4000:]
        assert _world_size(run) == int(devices), run.stderr[-4000:]
        results[devices] = _last_val(run_dir)
    # the validation loss draws each structure's noise from its index: equal however the data is split, the
    # third structure counted once (a padded sampler counts one twice: 5e-4 apart here; Lightning's own mean of
    # a logged tensor over ranks with unequal batch counts: 0.11 apart)
    assert abs(results["1"]["val/loss"] - results["2"]["val/loss"]) < 1e-5, results
    # the sample metrics cover the 5 samples asked for, however many ranks made them: the count and the
    # atom-count histogram of curves.json (test_metrics checks every figure of the gathered metrics)
    for devices, result in results.items():
        assert result["val/n_structures"] == 5 and result["val/n_atoms_mean"] >= 0, result
        assert "val/min_distance_violations" in result
        curves = json.loads((tmp_path / f"runs/validate{devices}/curves.json").read_text())
        assert sum(curves["n_atoms_hist"]) == 5, (devices, curves["n_atoms_hist"])


#: two-rank DDP fit of a tiny torus particle model with each structure's noise seeded by its index; argv: data,
#: PAIR_BLOCK_ELEMENTS, output file (rank 0's weights)
TORUS_FIT = """
import sys
import lightning as L
import torch
from datamodules.datamodule import AtomsDataModule
from lightning_gcd.models.particle_torus import TorusParticleDiffusion
from lightning_gcd.nets import fourier_pairs

fourier_pairs.PAIR_BLOCK_ELEMENTS = int(sys.argv[2])
loss = TorusParticleDiffusion.diffusion_loss
TorusParticleDiffusion.diffusion_loss = lambda self, batch, fixed_noise=False: loss(self, batch, fixed_noise=True)
L.seed_everything(0, verbose=False)
model = TorusParticleDiffusion(hidden=16, layers=2, frequencies=4, val_samples=0, lr=1e-3)
trainer = L.Trainer(max_steps=3, accelerator="cpu", devices=2, strategy="ddp", logger=False,
                    enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                    limit_val_batches=0, default_root_dir=sys.argv[3] + ".dir")
trainer.fit(model, AtomsDataModule(sys.argv[1], view="particle", batch_size=8, num_workers=0, build={}))
weights = torch.cat([p.detach().flatten() for p in model.net.parameters()])
torch.save(weights, f"{sys.argv[3]}.rank{trainer.global_rank}")
"""


def test_torus_training_in_chunks_under_ddp_gives_the_whole_batch_weights(fcc_h5: Path, tmp_path: Path) -> None:
    """Training each rank's batch in chunks (gradients precomputed chunk by chunk, then reduced by DDP) ends
    at the weights of whole batches, on both ranks."""
    import os
    import subprocess
    import sys

    import torch

    script = tmp_path / "torus_fit.py"
    script.write_text(TORUS_FIT)
    weights = {}
    for name, elements in (("whole", 1 << 40), ("chunks", 3 * 32 * 32 * 16)):  # chunks of 3 of each rank's 8
        out = tmp_path / name
        run = subprocess.run(
            [sys.executable, str(script), str(fcc_h5), str(elements), str(out)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=600,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        assert run.returncode == 0, run.stderr[-4000:]
        assert _world_size(run) == 2, run.stderr[-4000:]
        ranks = [torch.load(f"{out}.rank{rank}") for rank in (0, 1)]
        torch.testing.assert_close(ranks[1], ranks[0], rtol=0, atol=0)  # gradients reduced over the ranks
        weights[name] = ranks[0]
    torch.testing.assert_close(weights["chunks"], weights["whole"], rtol=1e-5, atol=1e-7)


CLOCK_FIT = """
import json, sys
import lightning as L
from lightning.pytorch.demos.boring_classes import BoringModel
from lightning_gcd.callbacks import TrainingClock

class RankClock(TrainingClock):
    '''Rank 0's chunk is over at its first step; rank 1's never is: the ranks' own clocks disagree.'''
    def on_train_start(self, trainer, pl_module):
        super().on_train_start(trainer, pl_module)
        self.chunk_seconds = 0.0 if trainer.global_rank == 0 else 1e9

clock = RankClock(chunk_seconds=1e9)
trainer = L.Trainer(max_steps=20, accelerator="cpu", devices=2, strategy="ddp", logger=False,
                    enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                    limit_val_batches=0, callbacks=[clock], default_root_dir=sys.argv[1] + ".dir")
trainer.fit(BoringModel())
with open(f"{sys.argv[1]}.rank{trainer.global_rank}", "w") as handle:
    json.dump({"step": trainer.global_step, "chunk_ended": clock.chunk_ended}, handle)
"""


def test_a_chunk_limit_reached_on_one_rank_stops_both_ranks_at_the_same_step(tmp_path: Path) -> None:
    """A chunk or budget limit crossed on one rank's clock stops every rank at that step (the decision is
    reduced over ranks); a rank stopping alone leaves the other's gradient reduction without a partner, and
    that rank's fit fails (or hangs until the timeout)."""
    import os
    import signal
    import subprocess
    import sys

    script, out = tmp_path / "clock_fit.py", tmp_path / "clock"
    script.write_text(CLOCK_FIT)
    run = subprocess.Popen(
        [sys.executable, str(script), str(out)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        start_new_session=True,
    )
    try:
        stdout, stderr = run.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(run.pid, signal.SIGKILL)
        raise AssertionError("the ranks did not stop together: one waited for the other") from None
    assert run.returncode == 0, stderr[-4000:]
    unfinished = [rank for rank in (0, 1) if not Path(f"{out}.rank{rank}").exists()]
    assert not unfinished, f"rank {unfinished} did not finish its fit: {stderr[-2000:]}"
    ranks = [json.loads(Path(f"{out}.rank{rank}").read_text()) for rank in (0, 1)]
    assert ranks == [{"step": 1, "chunk_ended": True}] * 2
