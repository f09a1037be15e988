"""GPU figures of the voxel U-Net (issue #10): precision and layout switches, model FLOPs utilisation, the
largest grid that fits, and DDP over NCCL on one GPU. Prints one JSON object.

    python experiments/bench_gpu.py                       # on a GPU machine: everything
    python experiments/bench_gpu.py --peak-tflops 989     # the card's dense bf16 peak, if not in PEAK_TFLOPS
    python experiments/bench_gpu.py --quick --device cpu  # a smoke check of the script on a CPU

Training-step variants (the bench U-Net of ``experiments/bench.py``: 3.0M parameters, batch 8 at 32³ by
default; forward, backward and an AdamW step on random grids): ``fp32``, ``tf32`` (TF32 matmuls and
convolutions, CUDA only), ``bf16`` (``torch.autocast``, what ``trainer.precision: bf16-mixed`` does),
``bf16+channels_last`` (the model and its input in ``torch.channels_last_3d``), ``bf16+compile``
(``torch.compile``, CUDA only by default: the inductor build takes minutes on a CPU). Model FLOPs
utilisation is the FLOPs of one training step (``torch.utils.flop_counter``, counted once at fp32) per
second over the card's dense bf16 peak. The largest grid: cubic grids of growing size until one training
step (batch 1, bf16) or one sampling step (batch 1, bf16, no gradient) runs out of memory. DDP: ``gcd fit`` on
the smoke config with ``strategy: ddp`` on one GPU (the NCCL backend) as a subprocess.
What needs CUDA is reported as ``{"skipped": reason}`` on a CPU.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from lightning_gcd.runner.profiles import load_profile

REPO = Path(__file__).resolve().parents[1]
#: the same network as the CPU benchmark (bench.py): experiments/bench_networks.yaml
UNET = load_profile(REPO / "experiments" / "bench_networks.yaml", {"unet": None, "mpnn": None})["unet"]

# dense bf16 tensor-core peaks (TFLOP/s) by a substring of torch.cuda.get_device_name(); the first match wins
PEAK_TFLOPS = {
    "H200": 989.0,
    "H100": 989.0,
    "A100": 312.0,
    "L40S": 362.0,
    "L40": 181.0,
    "A10": 125.0,
    "RTX 4090": 165.0,
    "A6000": 155.0,
    "V100": 125.0,
}
CHANNELS = 4  # occupancy + three offsets: one species
VARIANTS = ("fp32", "tf32", "bf16", "bf16+channels_last", "bf16+compile")


def make_net(device: str) -> torch.nn.Module:
    from lightning_gcd.nets.unet3d import PeriodicUNet3d

    return PeriodicUNet3d(in_channels=CHANNELS, **UNET).to(device)


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def training_step(
    net: torch.nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, t: torch.Tensor, bf16: bool
) -> None:
    """One optimiser step of an x0-style regression on ``x`` (B, C, D, H, W)."""
    with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16, enabled=bf16):
        loss = (net(x, t).float() - x).square().mean()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def time_variant(variant: str, base: torch.nn.Module, grid: int, batch: int, steps: int, device: str) -> dict[str, Any]:
    """Seconds per training step of one variant (after 2 untimed warm-up steps; compile's after 3)."""
    if variant in ("tf32", "bf16+compile") and device != "cuda":
        return {"variant": variant, "skipped": "needs CUDA"}
    net = copy.deepcopy(base)
    x = torch.randn(batch, CHANNELS, grid, grid, grid, device=device)
    t = torch.rand(batch, device=device)
    if variant == "bf16+channels_last":
        net = net.to(memory_format=torch.channels_last_3d)
        x = x.contiguous(memory_format=torch.channels_last_3d)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4)
    model: Callable = torch.compile(net) if variant == "bf16+compile" else net
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = variant == "tf32"
    try:
        bf16 = variant.startswith("bf16")
        for _ in range(3 if variant == "bf16+compile" else 2):
            training_step(model, optimizer, x, t, bf16)
        _sync(device)
        start = time.perf_counter()
        for _ in range(steps):
            training_step(model, optimizer, x, t, bf16)
        _sync(device)
        seconds = (time.perf_counter() - start) / steps
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    return {"variant": variant, "s_per_step": round(seconds, 5), "samples_per_s": round(batch / seconds, 2)}


def step_flops(base: torch.nn.Module, grid: int, batch: int, device: str) -> int:
    """FLOPs of one training step's forward and backward (the optimiser's few per parameter left out)."""
    from torch.utils.flop_counter import FlopCounterMode

    net = copy.deepcopy(base)
    x = torch.randn(batch, CHANNELS, grid, grid, grid, device=device)
    t = torch.rand(batch, device=device)
    with FlopCounterMode(display=False) as counter:
        (net(x, t) - x).square().mean().backward()
    return int(counter.get_total_flops())


def peak_tflops(device: str, given: float | None) -> tuple[float | None, str]:
    if given:
        return float(given), "--peak-tflops"
    if device != "cuda":
        return None, "no GPU"
    name = torch.cuda.get_device_name()
    for key, value in PEAK_TFLOPS.items():
        if key in name:
            return value, f"PEAK_TFLOPS[{key!r}]"
    return None, f"unknown card {name!r}: pass --peak-tflops"


def largest_grid(base: torch.nn.Module, sizes: list[int], device: str, train: bool) -> dict[str, Any]:
    """The largest cubic grid (batch 1, bf16) whose training step (or sampling step) fits in GPU memory."""
    if device != "cuda":
        return {"skipped": "needs CUDA"}
    fits, rows = None, []
    net = copy.deepcopy(base)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4)
    for grid in sizes:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        try:
            x = torch.randn(1, CHANNELS, grid, grid, grid, device=device)
            t = torch.rand(1, device=device)
            if train:
                training_step(net, optimizer, x, t, bf16=True)
            else:
                with torch.no_grad(), torch.autocast(device_type="cuda", dtype=torch.bfloat16):
                    net(x, t)
            torch.cuda.synchronize()
        except torch.cuda.OutOfMemoryError:
            rows.append({"grid": grid, "fits": False})
            break
        finally:
            x = t = None  # noqa: F841  (free before the next size)
        fits = grid
        rows.append({"grid": grid, "fits": True, "peak_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2)})
    optimizer.zero_grad(set_to_none=True)
    return {"largest_grid": fits, "rows": rows}


def ddp_one_gpu(device: str, workdir: Path) -> dict[str, Any]:
    """``gcd fit`` on the smoke config with DDP on one GPU (NCCL) in a subprocess: its exit status and time."""
    if device != "cuda":
        return {"skipped": "needs CUDA"}
    command = [
        sys.executable,
        "-m",
        "lightning_gcd.cli",
        "fit",
        "--config",
        str(REPO / "experiments/smoke/voxel.yaml"),
        "--trainer.accelerator",
        "gpu",
        "--trainer.devices",
        "1",
        "--trainer.strategy",
        "ddp",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.logger",
        "false",
    ]
    start = time.perf_counter()
    run = subprocess.run(
        command, cwd=workdir, capture_output=True, text=True, env={**os.environ, "WANDB_MODE": "disabled"}
    )
    return {
        "returncode": run.returncode,
        "seconds": round(time.perf_counter() - start, 1),
        "nccl": "nccl" in (run.stdout + run.stderr).lower(),
        "stderr_tail": run.stderr[-800:] if run.returncode else "",
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--grid", type=int, default=32, help="grid of the timed training steps (default 32)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=10, help="timed steps per variant")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--peak-tflops", type=float, default=None, help="the card's dense bf16 peak (TFLOP/s)")
    p.add_argument("--max-grid", type=int, default=384, help="largest grid tried by the memory search")
    p.add_argument("--no-ddp", action="store_true", help="skip the DDP check")
    p.add_argument("--quick", action="store_true", help="grid 8, batch 2, 2 steps: a smoke check")
    p.add_argument("--workdir", default="runs/bench_gpu", help="where the DDP check runs (default: %(default)s)")
    args = p.parse_args(argv)
    if args.quick:
        args.grid, args.batch, args.steps = 8, 2, 2
    device = args.device
    started = time.perf_counter()
    base = make_net(device)
    result: dict[str, Any] = {
        "machine": {
            "platform": platform.platform(),
            "torch": torch.__version__,
            "device": device,
            "gpu": torch.cuda.get_device_name() if device == "cuda" else None,
            "torch_threads": torch.get_num_threads(),
        },
        "network": {
            **UNET,
            "params": sum(q.numel() for q in base.parameters()),
            "grid": args.grid,
            "batch": args.batch,
        },
    }
    result["training"] = [time_variant(v, base, args.grid, args.batch, args.steps, device) for v in args.variants]
    flops = step_flops(base, args.grid, args.batch, device)
    peak, source = peak_tflops(device, args.peak_tflops)
    result["flops_per_step"] = flops
    result["peak_tflops"] = {"value": peak, "source": source}
    for row in result["training"]:
        if "s_per_step" in row:
            row["achieved_tflops"] = round(flops / row["s_per_step"] / 1e12, 4)
            row["mfu"] = round(row["achieved_tflops"] / peak, 4) if peak else None
    sizes = [s for s in (32, 48, 64, 96, 128, 160, 192, 224, 256, 320, 384, 448, 512) if s <= args.max_grid]
    result["largest_training_grid"] = largest_grid(base, sizes, device, train=True)
    result["largest_sampling_grid"] = largest_grid(base, sizes, device, train=False)
    if args.no_ddp:
        result["ddp_one_gpu"] = {"skipped": "--no-ddp"}
    else:
        workdir = Path(args.workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        result["ddp_one_gpu"] = ddp_one_gpu(device, workdir)
    result["wall_s"] = round(time.perf_counter() - started, 1)
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
