"""The machine a run ran on, recorded beside its numbers (a time means little without it)."""

from __future__ import annotations

import datetime as _dt
import os
import platform
from collections.abc import Mapping
from typing import Any

__all__ = ["machine_info"]


def machine_info(settings: Mapping[str, Any]) -> dict[str, Any]:
    """Platform, CPUs (count and affinity), Python, torch and Lightning versions, torch threads, the GPU if any,
    the run's ``accelerator`` setting, the date and the load average."""
    import lightning
    import torch

    info = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "accelerator": settings["accelerator"],
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
    }
    try:
        info["load_average"] = list(os.getloadavg())
    except OSError:
        pass
    return info
