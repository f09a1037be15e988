"""``gcd sample --inpaint``: in-paint the boundaries of a dataset's structure, relax and score them, write them."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lightning_gcd.errors import GcdError
from lightning_gcd.grain_boundaries.anneal import anneal_boundaries
from lightning_gcd.grain_boundaries.inpaint import inpaint, read_source
from lightning_gcd.grain_boundaries.relax import relax_boundaries
from lightning_gcd.sampling import write_structures

__all__ = ["sample_boundaries"]


def sample_boundaries(
    model: Any,
    spec: str,
    out: str | Path,
    *,
    n: int,
    width: float = 3.0,
    boundary_z: Sequence[float] | None = None,
    relax: str = "auto",
    relax_steps: int | None = None,
    anneal: bool = False,
    steps: int | None = None,
    sampler: str | None = None,
    seed: int = 0,
    batch_size: int = 16,
    progress: bool = False,
) -> None:
    """``gcd sample --inpaint DATASET:INDEX``: generate ``n`` boundary regions of structure ``spec`` (slabs of
    half-thickness ``width`` Å around its boundary planes), optionally relax them into E_gb (``relax``: auto =
    the dataset's calculator where the grain-boundaries builder made it, else none), and write them to ``out``
    (the unrelaxed ones to ``OUT_generated`` when relaxed); ``anneal``: the annealed search's MD anneal before
    the relaxation (``grain_boundaries.anneal``; LAMMPS)."""
    source = read_source(spec, boundary_z)
    if relax == "auto":
        relax = "none" if "meta_element" not in source.attrs else str(source.attrs.get("meta_calculator", "none"))
    if anneal and relax != "lammps":
        raise GcdError(f"--anneal runs in LAMMPS; this source would be relaxed with {relax}")
    generated, fixed = inpaint(
        model,
        source,
        width,
        n,
        steps=steps,
        sampler=sampler,
        seed=seed,
        batch_size=batch_size,
        progress=progress,
    )
    counts = [len(a) for a in generated]
    print(
        f"in-painted {len(generated)} boundaries of {source.label or spec} ({int(fixed.sum())} of "
        f"{len(source.atoms)} atoms fixed; atoms per structure: min {min(counts)}, mean {np.mean(counts):.1f}, "
        f"max {max(counts)})",
        file=sys.stderr,
    )
    if relax == "none":
        write_structures(generated, out)
        print(f"wrote {out}", file=sys.stderr)
        return
    out = Path(out)
    raw = out.with_name(f"{out.stem}_generated{out.suffix}")
    write_structures(generated, raw)
    if anneal:
        relaxed = anneal_boundaries(generated, source, seed=seed, max_steps=relax_steps, progress=progress)
    else:
        relaxed = relax_boundaries(generated, source, relax, max_steps=relax_steps, progress=progress)
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
    how = "annealed and relaxed" if anneal else "relaxed"
    print(f"{how} with {relaxed[0].info['potential']}: {summary}; wrote {out} (unrelaxed: {raw})", file=sys.stderr)
