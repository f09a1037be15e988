"""Lightning callbacks: local metric history (what ``gcd compare`` reads), W&B structure reports, a training
clock with a wall-time budget, and a stop when a sampled rate plateaus within its binomial noise.

Checkpoint safety lives in ``lightning_gcd.callbacks.checkpointing`` (used by ``gcd fit`` itself).
"""

from lightning_gcd.callbacks.clock import TrainingClock
from lightning_gcd.callbacks.metrics_history import MetricsHistory
from lightning_gcd.callbacks.plateau import RatePlateauStop
from lightning_gcd.callbacks.wandb_report import WandbStructureReport

__all__ = ["MetricsHistory", "RatePlateauStop", "TrainingClock", "WandbStructureReport"]
