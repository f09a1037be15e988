"""Performance benchmark of both models; prints one JSON object.

Measures, on whatever device is available (CUDA if present, else CPU):
- training steps/s and samples/s: voxel model at 16³ and 32³ grids, particle model at 32 and 256 atoms,
  each in a fresh subprocess so peak memory (max RSS on CPU, max allocated on CUDA) is per configuration;
  the 32³ voxel step is run with and without high glibc malloc thresholds (the ratio is within one run);
- sampling structures/s for each sampler and step count;
- loader throughput against model consumption;
- radius-graph and g(r) time against atom count (should grow linearly);
- voxel sampling time against grid size (should grow ∝ voxels).

Run: ``python experiments/bench.py [--quick]`` (``--quick`` shrinks repeats for a smoke check).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lightning_gcd.runner.profiles import load_profile

MALLOC_HIGH = {"MALLOC_MMAP_THRESHOLD_": "10000000000", "MALLOC_TRIM_THRESHOLD_": "10000000000"}
#: the timed networks, shared with bench_gpu.py (experiments/bench_networks.yaml)
NETWORKS = load_profile(Path(__file__).with_name("bench_networks.yaml"), {"unet": None, "mpnn": None})
UNET, MPNN = NETWORKS["unet"], NETWORKS["mpnn"]


def _device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _dataset(workdir: Path, repeat: int, count: int = 32) -> Path:
    from datamodules.builders import build_dataset

    path = workdir / f"fcc_{repeat}.h5"
    if not path.exists():
        build_dataset("crystals", path, phases=["fcc"], count=count, repeat=[repeat] * 3, progress=False)
    return path


def _model_and_batch(kind: str, size: int, workdir: Path, batch_size: int) -> tuple[Any, dict[str, torch.Tensor]]:
    """A set-up model and one real batch: voxel at a size³ grid (fcc 2x2x2), particle with ``size`` atoms."""
    from datamodules.datamodule import AtomsDataModule
    from lightning_gcd.models.particle import ParticleDiffusion
    from lightning_gcd.models.voxel import GrandCanonicalDiffusion

    if kind == "voxel":
        dm = AtomsDataModule(str(_dataset(workdir, 2)), view="voxel", batch_size=batch_size, grid_shape=[size] * 3)
        model = GrandCanonicalDiffusion(**UNET, val_samples=0)
    else:
        repeat = round((size / 4) ** (1 / 3))
        dm = AtomsDataModule(str(_dataset(workdir, repeat)), view="particle", batch_size=batch_size)
        model = ParticleDiffusion(**MPNN, val_samples=0)
    dm.setup()
    info = model.data_info_from(dm)
    model.hparams["data_info"] = info
    model._build(info)
    batch = next(iter(dm.train_dataloader()))
    device = _device()
    return model.to(device), {k: v.to(device) for k, v in batch.items()}


def _seconds_per_call(fn, calls: int, warmup: int, device: str, reset_peak: bool = False) -> float:
    """Mean wall time of ``calls`` calls of ``fn`` after ``warmup`` untimed ones (CUDA synchronised)."""
    for _ in range(warmup):
        fn()
    if device == "cuda":
        torch.cuda.synchronize()
        if reset_peak:
            torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / calls


def train_step_worker(kind: str, size: int, workdir: str, batch_size: int, steps: int) -> dict[str, Any]:
    """Time optimiser steps of one configuration (run in a fresh process)."""
    model, batch = _model_and_batch(kind, size, Path(workdir), batch_size)
    optimizer = torch.optim.AdamW(model.net.parameters(), lr=1e-4)
    device = _device()

    def step() -> None:
        loss = model.diffusion_loss(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    elapsed = _seconds_per_call(step, steps, warmup=2, device=device, reset_peak=True)

    # the network's own work: its forward + backward on the inputs of a real loss call, plus the optimiser step
    captured: list[tuple] = []
    network = model.network
    model.network = lambda *a, **k: (captured.append((a, k)), network(*a, **k))[1]  # type: ignore[method-assign]
    model.diffusion_loss(batch)
    model.network = network  # type: ignore[method-assign]
    net_args, net_kwargs = captured[0]
    net_args = tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in net_args)

    def net_step() -> None:
        out = network(*net_args, **net_kwargs)
        optimizer.zero_grad(set_to_none=True)
        out.square().mean().backward()
        optimizer.step()

    net_elapsed = _seconds_per_call(net_step, steps, warmup=1, device=device)
    peak = (
        torch.cuda.max_memory_allocated()
        if device == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    )
    return {
        "model": kind,
        "size": size,
        "batch": batch_size,
        "params": sum(p.numel() for p in model.net.parameters()),
        "s_per_step": round(elapsed, 4),
        "steps_per_s": round(1 / elapsed, 3),
        "samples_per_s": round(batch_size / elapsed, 2),
        "network_only_s_per_step": round(net_elapsed, 4),
        "non_network_fraction": round(max(0.0, 1.0 - net_elapsed / elapsed), 3),
        "peak_memory_mb": round(peak / 2**20, 1),
        "peak_memory_kind": "cuda max allocated" if device == "cuda" else "process max RSS",
        "malloc_thresholds_high": os.environ.get("MALLOC_MMAP_THRESHOLD_") == MALLOC_HIGH["MALLOC_MMAP_THRESHOLD_"],
    }


def _in_subprocess(args: list[str], env_extra: dict[str, str] | None = None) -> dict[str, Any]:
    env = {**os.environ, **(env_extra or {})}
    for key in MALLOC_HIGH:
        if env_extra is None or key not in env_extra:
            env.pop(key, None)
    out = subprocess.run(
        [sys.executable, __file__, "--worker", *args], capture_output=True, text=True, env=env, timeout=900
    )
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"exit {out.returncode}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_sampling(workdir: Path, quick: bool) -> list[dict[str, Any]]:
    """Structures/s for each sampler and step count (untrained weights: speed only)."""
    rows = []
    n = 4 if quick else 8
    for kind, size, samplers in (
        ("voxel", 16, [("ddim", 10), ("dpm2m", 10), ("ddim", 50), ("ddpm", 50)]),
        ("particle", 32, [("em", 50), ("em", 200), ("pc", 50)]),
    ):
        model, batch = _model_and_batch(kind, size, workdir, n)
        model.eval()
        template = {k: batch[k][:n] for k in ("cell", "numbers", "mask")}
        for sampler, steps in samplers:
            if quick:
                steps = max(2, steps // 10)
            start = time.perf_counter()
            with torch.no_grad():
                model.generate(
                    template,
                    steps=steps,
                    sampler=sampler,
                    generator=torch.Generator(device=model.device).manual_seed(0),
                )
            elapsed = time.perf_counter() - start
            rows.append(
                {
                    "model": kind,
                    "size": size,
                    "sampler": sampler,
                    "steps": steps,
                    "structures": n,
                    "structures_per_s": round(n / elapsed, 3),
                    "network_evals_per_s": round(steps / elapsed, 2),
                }
            )
    return rows


def bench_grid_scaling(workdir: Path, quick: bool) -> dict[str, Any]:
    """DDIM sampling time of one structure against grid size (the U-Net is fully convolutional)."""
    model, batch = _model_and_batch("voxel", 16, workdir, 2)
    model.eval()
    sizes = [8, 16, 24] if quick else [8, 16, 24, 32]
    rows = []
    for g in sizes:
        shape = (1, model.encoding.n_channels, g, g, g)
        with torch.no_grad():
            model.diffusion.sample(model.network, shape, steps=2, device=model.device)  # warm-up
            start = time.perf_counter()
            model.diffusion.sample(model.network, shape, steps=5, device=model.device)
        rows.append({"grid": g, "voxels": g**3, "s_per_network_eval": round((time.perf_counter() - start) / 5, 4)})
    slope = np.polyfit(np.log([r["voxels"] for r in rows[1:]]), np.log([r["s_per_network_eval"] for r in rows[1:]]), 1)[
        0
    ]
    return {"rows": rows, "time_vs_voxels_exponent": round(float(slope), 3)}


def bench_loader(workdir: Path, train_rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Loader samples/s (0 and 2 workers) next to what training consumes."""
    from datamodules.datamodule import AtomsDataModule

    out = {}
    for view, grid in (("voxel", [16, 16, 16]), ("particle", None)):
        for workers in (0, 2):
            dm = AtomsDataModule(
                str(_dataset(workdir, 2, count=160)), view=view, batch_size=32, num_workers=workers, grid_shape=grid
            )
            dm.setup()
            loader = dm.train_dataloader()
            next(iter(loader))
            start, n = time.perf_counter(), 0
            for batch in loader:
                n += len(batch["index"])
            out[f"{view}_workers{workers}_samples_per_s"] = round(n / (time.perf_counter() - start), 1)
    consumption = {
        f"{r['model']}_{r['size']}_train_samples_per_s": r.get("samples_per_s") for r in train_rows if "error" not in r
    }
    return {**out, **consumption}


def bench_graph_and_rdf(quick: bool) -> dict[str, Any]:
    """Radius graph (3 Å) and g(r) (6 Å) time against atom count for rattled fcc Cu supercells."""
    from ase.build import bulk

    from lightning_gcd.metrics.rdf import structure_rdf
    from lightning_gcd.periodic import radius_graph
    from lightning_gcd.structures import StructureBatch

    rows = []
    for repeat in [2, 4, 6] if quick else [2, 4, 6, 8, 10, 14, 18]:
        atoms = bulk("Cu", "fcc", cubic=True) * ((repeat,) * 3)
        atoms.rattle(0.05, seed=0)
        batch = StructureBatch.from_atoms([atoms])
        radius_graph(batch.frac_coords, batch.cell, batch.mask, 3.0)
        graph_s = rdf_s = float("inf")
        for _ in range(3):  # best of three: the machine may be shared
            start = time.perf_counter()
            radius_graph(batch.frac_coords, batch.cell, batch.mask, 3.0)
            graph_s = min(graph_s, time.perf_counter() - start)
            start = time.perf_counter()
            structure_rdf([atoms], r_max=6.0, n_bins=120)
            rdf_s = min(rdf_s, time.perf_counter() - start)
        rows.append({"n_atoms": len(atoms), "radius_graph_s": round(graph_s, 5), "rdf_s": round(rdf_s, 5)})
    # below ~2,000 atoms both are dominated by a fixed per-call cost; the exponent is fitted above it
    big = [r for r in rows if r["n_atoms"] >= (256 if quick else 2000)]

    def fit(key: str) -> float:
        return round(float(np.polyfit(np.log([r["n_atoms"] for r in big]), np.log([r[key] for r in big]), 1)[0]), 3)

    return {"rows": rows, "radius_graph_exponent": fit("radius_graph_s"), "rdf_exponent": fit("rdf_s")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer repeats and sizes (a smoke check)")
    parser.add_argument(
        "--worker", nargs=5, metavar=("KIND", "SIZE", "WORKDIR", "BATCH", "STEPS"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.worker:
        kind, size, workdir, batch, steps = args.worker
        print(json.dumps(train_step_worker(kind, int(size), workdir, int(batch), int(steps))))
        return
    started = time.perf_counter()
    steps = "2" if args.quick else "5"

    def say(what: str) -> None:  # progress on stderr; the JSON alone goes to stdout
        print(f"[bench {time.perf_counter() - started:6.0f} s] {what}", file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        for repeat in (2, 4):
            _dataset(workdir, repeat)
        _dataset(workdir, 2, count=160)
        train = []
        for kind, size, env in (
            ("voxel", "16", None),
            ("voxel", "32", None),
            ("voxel", "32", MALLOC_HIGH),
            ("particle", "32", None),
            ("particle", "256", None),
        ):
            say(f"training steps: {kind} {size}{' (high malloc thresholds)' if env else ''}")
            train.append(_in_subprocess([kind, size, tmp, "8", steps], env))
        low, high = train[1], train[2]
        malloc_ratio = (
            round(low["s_per_step"] / high["s_per_step"], 3) if "s_per_step" in low and "s_per_step" in high else None
        )
        result = {
            "machine": {
                "platform": platform.platform(),
                "cpu_count": os.cpu_count(),
                "torch": torch.__version__,
                "torch_threads": torch.get_num_threads(),
                "device": _device(),
                "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            },
            "training": train,
            "voxel32_step_speedup_with_high_malloc_thresholds": malloc_ratio,
        }
        say("sampling")
        result["sampling"] = bench_sampling(workdir, args.quick)
        say("sampling against grid size")
        result["voxel_sampling_vs_grid"] = bench_grid_scaling(workdir, args.quick)
        say("loader")
        result["loader_vs_consumption"] = bench_loader(workdir, train)
        say("radius graph and g(r)")
        result["graph_and_rdf_vs_atoms"] = bench_graph_and_rdf(args.quick)
    result["wall_s"] = round(time.perf_counter() - started, 1)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
