"""``gcd sample``: generate structures from a checkpoint and write them (extxyz or any ASE format)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import torch

from lightning_gcd.errors import GcdError


def add_sample_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("sample", help="generate structures from a trained checkpoint")
    p.add_argument("--ckpt", required=True, help="checkpoint written by gcd fit (EMA weights are used)")
    p.add_argument("--n", type=int, default=16, help="number of structures (default 16)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--grid", type=int, nargs=3, metavar=("D", "H", "W"),
                      help="voxel model: grid to sample on; the cell grows with it at the training spacing")
    size.add_argument("--supercell", type=float, nargs=3, metavar=("A", "B", "C"),
                      help="multiples of the training cell (default 1 1 1); larger cells are supported")
    p.add_argument("--steps", type=int, default=None, help="sampler steps (default: the model's sample_steps)")
    p.add_argument("--sampler", default=None, help="ddpm | ddim (voxel), em | pc (particle); default: the model's")
    p.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale (0 = unconditional, 1 = conditional)")
    p.add_argument("--condition-from", default=None, metavar="DATASET:INDEX",
                   help="use the conditioning properties of structure INDEX of an HDF5 dataset")
    p.add_argument("--inpaint", default=None, metavar="DATASET:INDEX",
                   help="grain-boundary in-painting: keep structure INDEX's bulk grains fixed and generate its boundary "
                        "regions (voxel model: the atom count there may change; particle model: fixed count)")
    p.add_argument("--boundary-width", type=float, default=3.0, metavar="Å",
                   help="with --inpaint: half-thickness of the generated slab around each boundary plane (default 3.0 Å)")
    p.add_argument("--boundary-z", type=float, nargs="+", default=None, metavar="Z",
                   help="with --inpaint: boundary plane heights in Å (default: the dataset's boundary_z property)")
    p.add_argument("--relax", choices=["auto", "emt", "lammps", "none"], default="auto",
                   help="with --inpaint: relax the generated structures (fixed cell) and write E_gb; auto (default) = the "
                        "dataset's calculator when it was built by the grain-boundaries builder, else none")
    p.add_argument("--relax-steps", type=int, default=None, help="relaxation step cap (default: the dataset's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", required=True, help="output file (extxyz recommended)")
    p.add_argument("--no-progress", action="store_true")


def condition_from(spec: str, names: list[str]) -> torch.Tensor:
    """Read and concatenate properties ``names`` of structure INDEX from DATASET (``path:index``)."""
    from datamodules.h5format import AtomsH5

    path, sep, index = spec.rpartition(":")
    if not sep or not index.isdigit():
        raise GcdError(f"--condition-from expects DATASET:INDEX, got '{spec}'")
    with AtomsH5(path) as data:
        i = int(index)
        if i >= len(data):
            raise GcdError(f"{path}: index {i} out of range (the file holds {len(data)} structures)")
        parts = [np.atleast_1d(np.asarray(data.structure_property(name, i), dtype=np.float32)).ravel() for name in names]
    return torch.as_tensor(np.concatenate(parts))


def write_structures(atoms_list: list, out: str | Path) -> Path:
    """Write structures with ASE, atomically (a temporary file renamed at the end)."""
    import ase.io

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}{out.suffix}")
    try:
        ase.io.write(tmp, atoms_list)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    return out


def run_sample(args: argparse.Namespace) -> int:
    from lightning_gcd.models.loading import load_model

    if args.n < 1:
        raise GcdError("--n must be at least 1")
    if args.inpaint is None and (args.relax not in ("auto", "none") or args.boundary_z is not None):
        raise GcdError("--relax and --boundary-z apply to --inpaint only")
    if args.inpaint is not None and (args.grid or args.supercell or args.condition_from):
        raise GcdError("--inpaint samples the source structure's own cell: drop --grid, --supercell and --condition-from")
    model = load_model(args.ckpt, map_location=args.device)
    if args.inpaint is not None:
        return _run_inpaint(args, model)
    info = model.info
    supercell = list(args.supercell) if args.supercell else [1.0, 1.0, 1.0]
    if args.grid:
        if "grid_shape" not in info:
            raise GcdError("--grid applies to voxel models only; use --supercell")
        supercell = [g / g0 for g, g0 in zip(args.grid, info["grid_shape"])]
    cond = condition_from(args.condition_from, info.get("conditions", [])) if args.condition_from else None
    if cond is not None and cond.numel() != info.get("cond_dim", 0):
        raise GcdError(f"the condition has {cond.numel()} values, the model expects {info.get('cond_dim', 0)}")
    template = model.sample_template(args.n, supercell, cond)
    atoms_list = model.sample(template, batch_size=args.batch_size, steps=args.steps, sampler=args.sampler,
                              guidance_scale=args.guidance, seed=args.seed, progress=not args.no_progress)
    for k, atoms in enumerate(atoms_list):
        atoms.info.update({"sample": k, "model": type(model).__name__, "seed": args.seed})
    write_structures(atoms_list, args.out)
    counts = [len(a) for a in atoms_list]
    print(f"wrote {len(atoms_list)} structures to {args.out} (atoms per structure: min {min(counts)}, "
          f"mean {np.mean(counts):.1f}, max {max(counts)})", file=sys.stderr)
    return 0


def _run_inpaint(args: argparse.Namespace, model) -> int:
    """``gcd sample --inpaint DATASET:INDEX``: generate boundary regions, optionally relax and score them."""
    from lightning_gcd.inpaint import inpaint, read_source, relax_boundaries

    source = read_source(args.inpaint, args.boundary_z)
    generated, fixed = inpaint(model, source, args.boundary_width, args.n, steps=args.steps, sampler=args.sampler,
                               seed=args.seed, batch_size=args.batch_size, progress=not args.no_progress)
    relax = args.relax
    if relax == "auto":
        relax = "none" if "meta_element" not in source.attrs else str(source.attrs.get("meta_calculator", "none"))
    counts = [len(a) for a in generated]
    print(f"in-painted {len(generated)} boundaries of {source.label or args.inpaint} ({int(fixed.sum())} of "
          f"{len(source.atoms)} atoms fixed; atoms per structure: min {min(counts)}, mean {np.mean(counts):.1f}, "
          f"max {max(counts)})", file=sys.stderr)
    if relax == "none":
        write_structures(generated, args.out)
        print(f"wrote {args.out}", file=sys.stderr)
        return 0
    out = Path(args.out)
    raw = out.with_name(f"{out.stem}_generated{out.suffix}")
    write_structures(generated, raw)
    relaxed = relax_boundaries(generated, source, relax, max_steps=args.relax_steps, progress=not args.no_progress)
    write_structures(relaxed, out)
    energies = np.array([a.info["gb_energy"] for a in relaxed], dtype=float)
    ok = np.isfinite(energies)
    reference = source.properties.get("gb_energy")
    summary = (f"E_gb min {energies[ok].min():.3f}, median {np.median(energies[ok]):.3f} J/m²" if ok.any() else "no finite E_gb")
    if reference is not None:
        summary += f" (source structure: {reference:.3f} J/m²)"
    print(f"relaxed with {relaxed[0].info['potential']}: {summary}; wrote {out} (unrelaxed: {raw})", file=sys.stderr)
    return 0
