"""Memory that a device has free, and a readable size: what ``gcd sample`` checks before it allocates a grid.

- CPU: ``MemAvailable`` of ``/proc/meminfo`` (what the kernel can give without swapping), capped by the
  cgroup's limit where one is set (a container or a SLURM job sees its own share, not the node's).
- CUDA: ``torch.cuda.mem_get_info`` (free on the device) plus what torch's caching allocator holds unused.
- Elsewhere (macOS, MPS): unknown (None); callers then do not refuse anything.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["available_bytes", "format_bytes"]


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _cgroup_available() -> int | None:
    """Limit minus usage of this process's cgroup (v2, then v1); None without a limit."""
    for limit_file, usage_file in (
        ("memory.max", "memory.current"),
        ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes"),
    ):
        try:
            limit = Path("/sys/fs/cgroup", limit_file).read_text().strip()
            usage = Path("/sys/fs/cgroup", usage_file).read_text().strip()
        except OSError:
            continue
        if limit.isdigit() and usage.isdigit() and int(limit) < 1 << 60:  # v1 writes ~2^63 for "no limit"
            return max(0, int(limit) - int(usage))
    return None


def available_bytes(device: str | object = "cpu") -> int | None:
    """Bytes that ``device`` can still allocate, or None where that cannot be known."""
    kind = str(device).split(":")[0]
    if kind == "cpu":
        values = [v for v in (_meminfo_available(), _cgroup_available()) if v is not None]
        if not values and hasattr(os, "sysconf") and "SC_AVPHYS_PAGES" in os.sysconf_names:
            values = [os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")]
        return min(values) if values else None
    if kind == "cuda":
        import torch

        if not torch.cuda.is_available():
            return None
        index = torch.device(str(device)).index
        index = torch.cuda.current_device() if index is None else index
        free, _ = torch.cuda.mem_get_info(index)
        return int(free + torch.cuda.memory_reserved(index) - torch.cuda.memory_allocated(index))
    return None


def format_bytes(n: float) -> str:
    """``1.5 GiB``, ``3.6 TiB``, ``12 MiB``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit in ("B", "KiB", "MiB") else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"  # pragma: no cover
