"""Relaxing in-painted grain boundaries into their boundary energy E_gb (J/m²).

Each generated structure is relaxed with the dataset's calculator (EMT or the LAMMPS EAM potential, same
settings; ``lightning_gcd.relax``) and its cell mode — the normal cell length relaxed to zero normal
stress (in-plane cell fixed) for files built so, the fixed cell for files built before that (no
``meta_relax_cell``), so generated and reference energies are comparable — and gets ``total_energy`` (eV),
``gb_energy`` (J/m², (E − N·E_coh)/(2A), two boundaries per cell), ``n_boundary_atoms`` (N − the perfect
bicrystal's count), ``grain_core_shift`` (Å) and ``grains_kept`` (``grain_boundaries.grains``: an E_gb is a
boundary's only while both grains survived the relaxation) in its ``info``.
"""

from __future__ import annotations

from collections.abc import Sequence

from ase import Atoms

from lightning_gcd.grain_boundaries.grains import grain_core_shift, grains_kept
from lightning_gcd.grain_boundaries.inpaint import InpaintSource

__all__ = ["relax_boundaries"]


def relax_boundaries(
    structures: Sequence[Atoms],
    source: InpaintSource,
    calculator: str | None = None,
    max_steps: int | None = None,
    progress: bool = False,
    cell: str | None = None,
    preludes: Sequence[list[str]] | None = None,
) -> list[Atoms]:
    """Relax each structure with the dataset's calculator and cell mode (or ``calculator``, ``cell``: "fixed"
    or "normal") and score its E_gb; ``preludes``: LAMMPS commands per structure run before its minimisation
    (the anneal of ``grain_boundaries.anneal``)."""
    from datamodules.builders.grain_boundaries import gb_energy, lattice_of, relaxer_for_file
    from lightning_gcd.relax import relax_structures

    relaxer = relaxer_for_file(source.attrs, calculator, max_steps=max_steps, cell=cell)
    own = str(source.attrs.get("meta_calculator", ""))
    if relaxer.calculator == own and "cohesive_energy" in source.properties:
        e_coh = source.properties["cohesive_energy"]
    else:  # another calculator: its bulk energy at the dataset's lattice constant (the grains' strain state)
        a = source.properties.get("lattice_a", float(source.attrs.get("meta_lattice_a", 0.0)))
        e_coh = relaxer.bulk_energy(lattice_of(relaxer.element), a)
    lengths = source.atoms.cell.lengths()
    area = source.properties.get("boundary_area", float(lengths[0] * lengths[1]))
    n_perfect = source.properties.get("n_atoms_perfect")
    out = relax_structures(structures, relaxer, progress, preludes)
    for relaxed in out:
        energy = relaxed.info["total_energy"]
        relaxed.info["gb_energy"] = gb_energy(energy, len(relaxed), e_coh, area) if len(relaxed) else float("nan")
        relaxed.info["cohesive_energy"] = float(e_coh)
        if n_perfect is not None:
            relaxed.info["n_boundary_atoms"] = int(len(relaxed) - int(n_perfect))
        shift = grain_core_shift(relaxed, source)
        relaxed.info["grain_core_shift"] = shift
        relaxed.info["grains_kept"] = grains_kept(shift)
    return out
