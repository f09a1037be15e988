"""Data-path benchmark: loader samples/s for each view at batch 32, encode and decode structures/s.

Prints one JSON object. Run: ``python experiments/bench_data.py [--count 64] [--workers 0 2]``.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from datamodules.builders import build_dataset
from datamodules.datamodule import AtomsDataModule
from lightning_gcd.representations import make_encoding
from lightning_gcd.structures import StructureBatch


def _loader_rate(path: Path, view: str, workers: int, batch_size: int, epochs: int = 2, **kw) -> float:
    dm = AtomsDataModule(str(path), view=view, batch_size=batch_size, num_workers=workers, **kw)
    dm.setup("fit")
    loader = dm.train_dataloader()
    next(iter(loader))  # start workers, warm caches
    start, n = time.perf_counter(), 0
    for _ in range(epochs):
        for batch in loader:
            n += len(batch["index"])
    return n / (time.perf_counter() - start)


def _codec_rate(
    atoms: list, encoding: str, shape: tuple[int, int, int], repeats: int = 5, **options
) -> dict[str, float]:
    batch = StructureBatch.from_atoms(atoms, dtype=torch.float64)
    enc = make_encoding(encoding, sorted({int(z) for a in atoms for z in a.numbers}), **options)
    grids = enc.encode(batch, shape)
    t0 = time.perf_counter()
    for _ in range(repeats):
        grids = enc.encode(batch, shape)
    t1 = time.perf_counter()
    for _ in range(repeats):
        enc.decode(grids, batch.cell)
    t2 = time.perf_counter()
    return {
        "encode_structures_per_s": len(atoms) * repeats / (t1 - t0),
        "decode_structures_per_s": len(atoms) * repeats / (t2 - t1),
        "grid": list(shape),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=160, help="structures in the benchmark dataset (fcc Cu 2x2x2)")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        path = build_dataset(
            "crystals", Path(tmp) / "bench.h5", phases=["fcc"], count=args.count, voxels=["occupancy"], progress=False
        )
        loader = {}
        for workers in args.workers:
            loader[f"particle_workers{workers}"] = _loader_rate(path, "particle", workers, args.batch_size)
            loader[f"voxel_onthefly_workers{workers}"] = _loader_rate(
                path, "voxel", workers, args.batch_size, use_voxel_cache=False
            )
            loader[f"voxel_cached_workers{workers}"] = _loader_rate(path, "voxel", workers, args.batch_size)
        from datamodules.h5format import AtomsH5

        with AtomsH5(path) as data:
            atoms = [data.atoms(i) for i in range(64)]
    result = {
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "torch_threads": torch.get_num_threads(),
        },
        "loader_samples_per_s_batch32": {k: round(v, 1) for k, v in loader.items()},
        "codec_fcc_cu_32_atoms": {
            "occupancy": _codec_rate(atoms, "occupancy", (8, 8, 8)),
            "gaussian_sigma0.4": _codec_rate(atoms, "gaussian", (24, 24, 24), sigma=0.4),
        },
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
