"""The mass density of a target spectrum, found by analysis by synthesis (``gcd sample --density auto``).

Both models sample a cell whose density the user chooses (the particle model places density × volume
atoms; the voxel model's grid follows the atom count), and the density sets most of a generated a-C
cell's structure, its sp3 fraction above all. A user with only a measured spectrum
usually does not know the density. The scan recovers it: at each candidate density the prior samples a
few small cells (the training size, cheap), optionally relaxes them (their spectra are the ones a user
gets), and the forward model predicts their mean spectra; the density whose samples' spectra lie closest
to the target (relative L2, averaged over the samples) wins, refined by a parabola through the best
candidate and its two neighbours. The scan's samples are unconditional (guidance 0) unless told
otherwise, so the choice rests on the forward model alone, not on the prior's reading of the condition.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lightning_gcd.errors import GcdError
from lightning_gcd.io import write_json_atomic
from lightning_gcd.structures import G_PER_CM3_IN_AMU_PER_A3


@dataclass
class DensityScan:
    """The outcome of a scan.

    densities: (D,) g/cm³ scanned; errors: (D, S) relative L2 of each sample's mean predicted spectrum
    against the target (NaN for a sample without atoms); best: the chosen density (g/cm³).
    """

    densities: np.ndarray
    errors: np.ndarray
    best: float

    @property
    def mean_errors(self) -> np.ndarray:
        """(D,) the mean relative L2 per candidate density."""
        return np.nanmean(self.errors, axis=1)

    def table(self) -> str:
        """One line per density: its mean error (± standard deviation over samples), the best marked."""
        lines = ["density (g/cm³)  spectrum rel. L2 (forward model, mean ± sd over samples)"]
        nearest = int(np.argmin(np.abs(self.densities - self.best)))
        for k, (rho, row) in enumerate(zip(self.densities, self.errors, strict=True)):
            mark = "  <-" if k == nearest else ""
            lines.append(f"{rho:15.3f}  {np.nanmean(row):.4f} ± {np.nanstd(row):.4f}{mark}")
        lines.append(f"chosen: {self.best:.3f} g/cm³")
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        return {
            "densities": self.densities.tolist(),
            "errors": self.errors.tolist(),
            "mean_errors": self.mean_errors.tolist(),
            "best": float(self.best),
        }


def candidate_densities(low: float, high: float, points: int) -> np.ndarray:
    """(points,) evenly spaced densities from ``low`` to ``high`` g/cm³; GcdError on a bad range."""
    if not (0 < low < high) or points < 3:
        raise GcdError(f"a density scan needs 0 < low < high and at least 3 points, got {low}, {high}, {points}")
    return np.linspace(low, high, points)


def relative_l2(predicted: np.ndarray, target: np.ndarray) -> np.ndarray:
    """(...,) ‖predicted − target‖ / ‖target‖ over the last axis."""
    return np.linalg.norm(predicted - target, axis=-1) / np.linalg.norm(target)


def predicted_spectra(forward, structures: Sequence) -> np.ndarray:
    """(S, K) the forward model's mean spectrum of each structure; NaN rows for empty structures."""
    from lightning_gcd.structures import StructureBatch

    out = np.full((len(structures), int(forward.info["n_out"])), np.nan)
    keep = [k for k, atoms in enumerate(structures) if len(atoms)]
    if keep:
        batch = StructureBatch.from_atoms([structures[k] for k in keep])
        device = next(forward.parameters()).device
        with torch.no_grad():
            mean = forward.mean_spectrum(
                batch.frac_coords.float().to(device),
                batch.numbers.to(device),
                batch.mask.to(device),
                batch.cell.float().to(device),
            )
        out[keep] = mean.double().cpu().numpy()
    return out


def refine(densities: np.ndarray, mean_errors: np.ndarray) -> float:
    """The minimum of the parabola through the best candidate and its neighbours (the best candidate
    itself at the ends of the range, and where the fit is degenerate)."""
    k = int(np.nanargmin(mean_errors))
    if k == 0 or k == len(densities) - 1:
        return float(densities[k])
    x, y = densities[k - 1 : k + 2], mean_errors[k - 1 : k + 2]
    a, b, _ = np.polyfit(x, y, 2)
    if not np.isfinite(a) or a <= 0:
        return float(densities[k])
    return float(np.clip(-b / (2 * a), x[0], x[2]))


def choose_density(densities: np.ndarray, spectra: np.ndarray, target: np.ndarray) -> DensityScan:
    """The scan's choice from the predicted spectra (D, S, K) of the samples at each density (D,)."""
    errors = relative_l2(spectra, np.asarray(target, dtype=np.float64))
    if not np.isfinite(errors).any(axis=1).all():
        empty = densities[~np.isfinite(errors).any(axis=1)]
        raise GcdError(f"density scan: no sample with atoms at {', '.join(f'{r:g}' for r in empty)} g/cm³")
    return DensityScan(densities, errors, refine(densities, np.nanmean(errors, axis=1)))


def scan_samples(
    model,
    densities: np.ndarray,
    n_atoms: int,
    samples: int,
    *,
    cond: torch.Tensor | None = None,
    guidance_scale: float = 0.0,
    relaxer: Any = None,
    steps: int | None = None,
    sampler: str | None = None,
    seed: int = 0,
    progress: bool = False,
) -> list[list]:
    """For each density, ``samples`` cubic cells of ``n_atoms`` sampled by ``model`` (relaxed by ``relaxer``
    when given); the same seed at every density, so the candidates differ by their density only."""
    from tqdm.auto import tqdm

    from lightning_gcd.relax import relax_structures
    from lightning_gcd.structures import cubic_cell

    composition = {int(z): float(f) for z, f in model.info["composition"].items()}
    cond_dim = int(model.info.get("cond_dim", 0))
    if cond is None and cond_dim:
        if guidance_scale:
            raise GcdError("a guided density scan needs the condition (cond)")
        cond = torch.zeros(cond_dim)  # a conditioned model's template needs one; unused at guidance 0
    out = []
    for rho in tqdm(densities, desc="density scan", disable=not progress):
        cell = cubic_cell(n_atoms, float(rho), composition)
        template = model.sample_template(samples, cond=cond, cell=cell, n_atoms=n_atoms)
        structures = model.sample(
            template,
            batch_size=samples,
            steps=steps,
            sampler=sampler,
            guidance_scale=guidance_scale,
            seed=seed,
            progress=False,
        )
        out.append(relax_structures(structures, relaxer) if relaxer is not None else structures)
    return out


def scan_density(
    model,
    forward,
    target: torch.Tensor | np.ndarray,
    densities: np.ndarray,
    n_atoms: int,
    samples: int,
    **sampling: Any,
) -> DensityScan:
    """Sample at every candidate density (``scan_samples``) and choose the one whose samples' predicted
    spectra are closest to ``target`` (K,)."""
    pools = scan_samples(model, densities, n_atoms, samples, **sampling)
    spectra = np.stack([predicted_spectra(forward, pool) for pool in pools])  # (D, S, K)
    return choose_density(densities, spectra, np.asarray(target, dtype=np.float64))


def training_density_range(info: dict[str, Any]) -> tuple[float, float] | None:
    """(low, high) g/cm³ of the training cells: their number densities (``number_density_range``, atoms/Å³)
    times the training composition's mean atomic mass (exact for one element), or the ``mass_density_range``
    that checkpoints before issue #29 stored; None for checkpoints that store neither."""
    span = info.get("mass_density_range")
    if span:
        return (float(span[0]), float(span[1]))
    span = info.get("number_density_range")
    if not span:
        return None
    mass = mean_atomic_mass(info["composition"]) / G_PER_CM3_IN_AMU_PER_A3  # g/cm³ per atom/Å³
    return (float(span[0]) * mass, float(span[1]) * mass)


def mean_atomic_mass(composition: dict[str, float]) -> float:
    """The mean atomic mass (amu) of a composition ``{atomic number: fraction}``."""
    from ase.data import atomic_masses

    return sum(float(atomic_masses[int(z)]) * float(f) for z, f in composition.items())


def run_density_scan(
    model: Any,
    forward: Any,
    target: torch.Tensor,
    out: str | Path,
    *,
    n_atoms: int | None,
    density_range: Sequence[float] | None = None,
    points: int = 9,
    samples: int = 4,
    scan_atoms: int | None = None,
    relaxer: Any = None,
    steps: int | None = None,
    sampler: str | None = None,
    seed: int = 0,
    progress: bool = False,
) -> DensityScan:
    """``gcd sample --density auto``: scan ``points`` densities over ``density_range`` (default: the training
    cells'), ``samples`` cells of ``scan_atoms`` atoms each (default: the training mean count), print the table,
    write it to ``OUT_density_scan.json`` beside ``out`` and return the ``DensityScan``."""
    if n_atoms is None:
        raise GcdError("--density auto needs --n-atoms N (the size of the cubic cell to generate)")
    if forward is None or target is None:
        raise GcdError(
            "--density auto needs --forward-ckpt and a target (--spectrum FILE or --condition-from "
            "DATASET:INDEX): the forward model scores each candidate density against the target"
        )
    span = tuple(density_range) if density_range else training_density_range(model.info)
    if span is None:
        raise GcdError("the checkpoint does not store its training densities; give --density-range LOW HIGH (g/cm³)")
    densities = candidate_densities(span[0], span[1], points)
    if samples < 1:
        raise GcdError(f"--density-scan-samples must be at least 1, got {samples}")
    n_scan = scan_atoms or max(1, round(float(model.info["n_atoms_mean"])))
    if relaxer is None:
        print(
            "warning: --density auto without --relax scores the raw samples, whose sampler noise the forward "
            "model reads as low density (on the a-C file: mean error 0.97 g/cm³ raw, 0.31 relaxed); add "
            "--relax lammps",
            file=sys.stderr,
        )
    print(
        f"--density auto: {samples} unconditional samples of {n_scan} atoms at each of "
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
        samples,
        relaxer=relaxer,
        steps=steps,
        sampler=sampler,
        seed=seed,
        progress=progress,
    )
    print(scan.table(), file=sys.stderr)
    out = Path(out)
    write_json_atomic(
        out.with_name(f"{out.stem}_density_scan.json"),
        {**scan.as_dict(), "n_atoms": n_scan, "samples": samples, "relaxed": relaxer is not None},
        keep_nan=True,
        indent=1,
    )
    return scan
