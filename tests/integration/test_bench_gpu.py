"""experiments/bench_gpu.py on a CPU: the variants a CPU can run are timed, the CUDA-only ones say so, the
FLOP count behind the model FLOPs utilisation scales with the grid."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
from conftest import REPO


def _load():
    spec = importlib.util.spec_from_file_location("bench_gpu", REPO / "experiments" / "bench_gpu.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _training_step_flops(net: torch.nn.Module, grid: int, batch: int) -> float:
    """FLOPs of a forward + backward of ``net`` from the layers' shapes (see the test)."""
    forward: list[tuple[str, int]] = []

    def count(module: torch.nn.Module, args: tuple, out: torch.Tensor) -> None:
        if isinstance(module, torch.nn.Conv3d):
            forward.append(
                ("conv", 2 * out.numel() * module.in_channels // module.groups * int(np.prod(module.kernel_size)))
            )
        else:
            forward.append(("linear", 2 * out.numel() * module.in_features))

    for module in net.modules():
        if isinstance(module, (torch.nn.Conv3d, torch.nn.Linear)):
            module.register_forward_hook(count)
    with torch.no_grad():
        net(torch.randn(batch, 4, grid, grid, grid), torch.rand(batch))
    first_conv = next(f for kind, f in forward if kind == "conv")
    return 3.0 * sum(f for _, f in forward) - first_conv


def test_bench_gpu_runs_on_a_cpu_and_reports_what_needs_cuda() -> None:
    bench = _load()
    result = bench.main(
        [
            "--quick",
            "--device",
            "cpu",
            "--no-ddp",
            "--peak-tflops",
            "2.0",
            "--variants",
            "fp32",
            "tf32",
            "bf16+channels_last",
        ]
    )
    rows = {r["variant"]: r for r in result["training"]}
    assert rows["tf32"] == {"variant": "tf32", "skipped": "needs CUDA"}
    for name in ("fp32", "bf16+channels_last"):
        row = rows[name]
        assert row["s_per_step"] > 0 and row["samples_per_s"] == pytest.approx(2 / row["s_per_step"], rel=0.01)
        # achieved FLOP/s = the counted FLOPs of one step over its time; MFU against the given peak
        assert row["achieved_tflops"] == pytest.approx(
            result["flops_per_step"] / row["s_per_step"] / 1e12, rel=0.01, abs=1e-4
        )
        assert row["mfu"] == pytest.approx(row["achieved_tflops"] / 2.0, rel=0.01, abs=1e-4)
    assert result["peak_tflops"] == {"value": 2.0, "source": "--peak-tflops"}
    assert result["largest_training_grid"] == {"skipped": "needs CUDA"} and result["ddp_one_gpu"] == {
        "skipped": "--no-ddp"
    }
    assert result["network"]["params"] == 2965892  # the CPU benchmark's U-Net
    # the FLOPs behind MFU, counted here without torch's FlopCounterMode: 2·MACs of every Conv3d and Linear
    # in a forward at the quick run's grid 8, batch 2 (their real output shapes, from hooks); a training step
    # is that forward, the gradient of every weight, and of every layer input except the data's (the first
    # convolution): 3F - F_first. Left out (<0.1 % here): the coarsest attention's matmuls, and the time
    # embedding's first Linear counts an input gradient that is not computed.
    assert result["flops_per_step"] == pytest.approx(
        _training_step_flops(bench.make_net("cpu"), grid=8, batch=2), rel=1e-3
    )

    # the convolutions' FLOPs grow with the voxels: 8x the voxels, about 8x the FLOPs (attention at the
    # coarsest level a little more)
    net = bench.make_net("cpu")
    small, large = bench.step_flops(net, 8, 1, "cpu"), bench.step_flops(net, 16, 1, "cpu")
    assert 7.5 < large / small < 10.0
