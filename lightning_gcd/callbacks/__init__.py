"""Lightning callbacks: local metric history (what ``gcd compare`` reads) and W&B structure reports.

Checkpoint safety lives in ``lightning_gcd.callbacks.checkpointing`` (used by ``gcd fit`` itself).
"""

from lightning_gcd.callbacks.metrics_history import MetricsHistory
from lightning_gcd.callbacks.wandb_report import WandbStructureReport

__all__ = ["MetricsHistory", "WandbStructureReport"]
