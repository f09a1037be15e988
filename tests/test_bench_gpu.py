"""experiments/bench_gpu.py on a CPU: the variants a CPU can run are timed, the CUDA-only ones say so, the
FLOP count behind the model FLOPs utilisation scales with the grid."""

from __future__ import annotations

import importlib.util

import pytest

from conftest import REPO


def _load():
    spec = importlib.util.spec_from_file_location("bench_gpu", REPO / "experiments" / "bench_gpu.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_gpu_runs_on_a_cpu_and_reports_what_needs_cuda() -> None:
    bench = _load()
    result = bench.main(["--quick", "--device", "cpu", "--no-ddp", "--peak-tflops", "2.0",
                         "--variants", "fp32", "tf32", "bf16+channels_last"])
    rows = {r["variant"]: r for r in result["training"]}
    assert rows["tf32"] == {"variant": "tf32", "skipped": "needs CUDA"}
    for name in ("fp32", "bf16+channels_last"):
        row = rows[name]
        assert row["s_per_step"] > 0 and row["samples_per_s"] == pytest.approx(2 / row["s_per_step"], rel=0.01)
        # achieved FLOP/s = the counted FLOPs of one step over its time; MFU against the given peak
        assert row["achieved_tflops"] == pytest.approx(result["flops_per_step"] / row["s_per_step"] / 1e12, rel=0.01, abs=1e-4)
        assert row["mfu"] == pytest.approx(row["achieved_tflops"] / 2.0, rel=0.01, abs=1e-4)
    assert result["peak_tflops"] == {"value": 2.0, "source": "--peak-tflops"}
    assert result["largest_training_grid"] == {"skipped": "needs CUDA"} and result["ddp_one_gpu"] == {"skipped": "--no-ddp"}
    assert result["network"]["params"] == 2965892  # the CPU benchmark's U-Net

    # the convolutions' FLOPs grow with the voxels: 8x the voxels, about 8x the FLOPs (attention at the
    # coarsest level a little more)
    net = bench.make_net("cpu")
    small, large = bench.step_flops(net, 8, 1, "cpu"), bench.step_flops(net, 16, 1, "cpu")
    assert 7.5 < large / small < 10.0
