"""The reference search's anneal applied to in-painted boundaries, then the same minimisation.

Issue #28 asks whether a generator followed by the short MD anneal of the annealed search
(``datamodules.builders.gb_search``) finds low-energy boundaries more often than the search itself. This
module gives each generated structure exactly the search's treatment: the atoms within ``mobile_width`` Å of a
boundary plane move under a Langevin thermostat at a temperature and for a number of steps drawn as the
search draws them, one grain core is held, the other moves as a rigid block, the cell length along z follows
a barostat to zero normal stress; then the dataset's own minimisation (``relax_boundaries``) and E_gb. LAMMPS
only (the anneal is LAMMPS commands run before the minimisation in the same session).
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np
from ase import Atoms

from lightning_gcd.errors import GcdError
from lightning_gcd.grain_boundaries.inpaint import InpaintSource
from lightning_gcd.grain_boundaries.relax import relax_boundaries

__all__ = ["anneal_boundaries", "anneal_settings", "grains_and_mobile"]


def anneal_settings(source: InpaintSource, **overrides):
    """The search's ``Anneal`` of ``source``'s file (its ``meta_anneal``), else the element's defaults;
    ``overrides``: fields to change (e.g. ``md_steps=(5000, 5000)``)."""
    from datamodules.builders.gb_search import anneal_for

    element = str(source.attrs.get("meta_element", ""))
    stored = source.attrs.get("meta_anneal")
    fields = json.loads(stored) if stored else {}
    fields.update(overrides)
    return anneal_for(element, fields)


def grains_and_mobile(
    atoms: Atoms, boundary_z: Sequence[float], mobile_width: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(N,) masks (held grain core, rigid grain core, mobile) of ``atoms`` with boundary planes at ``boundary_z``
    Å: mobile within ``mobile_width`` Å of a plane; the cores split by which side of the planes they lie on (the
    grain between the first two planes is the rigid one)."""
    from datamodules.builders.grain_boundaries import boundary_distance

    lz = float(atoms.cell.lengths()[2])
    planes = np.sort(np.mod(np.asarray(boundary_z, dtype=np.float64), lz))
    if planes.size != 2:
        raise GcdError(f"the anneal needs the two boundary planes of a periodic bicrystal, got {planes.size}")
    z = np.mod(atoms.positions[:, 2], lz)
    mobile = boundary_distance(atoms.positions, planes, lz) < mobile_width
    between = (z > planes[0]) & (z < planes[1])
    held, rigid = ~mobile & ~between, ~mobile & between
    if not held.any() or not rigid.any():
        raise GcdError(f"no grain core farther than {mobile_width:g} Å from the boundaries: lower the mobile width")
    return held, rigid, mobile


def anneal_boundaries(
    structures: Sequence[Atoms],
    source: InpaintSource,
    seed: int = 0,
    max_steps: int | None = None,
    progress: bool = False,
    **anneal_overrides,
) -> list[Atoms]:
    """Each structure annealed as the search anneals its candidates, then minimised and scored like
    ``relax_boundaries`` (``info``: its fields and ``anneal_temperature`` K, ``anneal_steps``). Structure ``k``
    draws its temperature and MD steps from the stream ``(seed, k)``."""
    from datamodules.builders.gb_search import anneal_commands
    from datamodules.builders.grain_boundaries import lattice_of, relaxer_for_file

    anneal = anneal_settings(source, **anneal_overrides)
    relaxer = relaxer_for_file(source.attrs, max_steps=max_steps)
    if relaxer.calculator != "lammps":
        raise GcdError(f"the anneal runs in LAMMPS; the dataset was relaxed with {relaxer.calculator}")
    a = source.properties.get("lattice_a", float(source.attrs.get("meta_lattice_a", 0.0)))
    modulus = relaxer.bulk_modulus(lattice_of(relaxer.element), a)
    preludes, drawn = [], []
    for k, atoms in enumerate(structures):
        rng = np.random.default_rng(np.random.SeedSequence([seed, k]))
        temperature, steps = anneal.draw(rng)
        velocity_seed = int(rng.integers(1, 900_000_000))
        if len(atoms) == 0:
            preludes.append([])
        else:
            held, rigid, mobile = grains_and_mobile(atoms, source.boundary_z, anneal.mobile_width)
            preludes.append(
                anneal_commands(held, rigid, mobile, anneal, temperature, steps, velocity_seed, modulus, relaxer.fmax)
            )
        drawn.append((temperature, steps))
    out = relax_boundaries(structures, source, max_steps=max_steps, progress=progress, preludes=preludes)
    for atoms, (temperature, steps) in zip(out, drawn, strict=True):
        atoms.info["anneal_temperature"] = float(temperature)
        atoms.info["anneal_steps"] = int(steps)
    return out
