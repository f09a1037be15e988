"""The grain-boundary application: in-paint the boundary regions of a bicrystal and relax them into E_gb.

It attaches to the core by composition (in-painting is a template the models' samplers hold fixed), and the
core imports nothing of it:

* ``inpaint``: the in-painting template (the bulk grains fixed, slabs around the boundary planes generated);
* ``relax``: relaxation of the generated structures with the dataset's calculator, and their E_gb (J/m²);
* ``grains``: whether a relaxed structure still holds its template's two grains (else it has no E_gb);
* ``anneal``: the annealed search's MD anneal, then the same relaxation (in-painting + anneal);
* ``layers``: the atomic layers of a bicrystal and the atom count of each of its two boundaries;
* ``sample``: ``gcd sample --inpaint``, the two in sequence, written to a file.
"""

from lightning_gcd.grain_boundaries.anneal import anneal_boundaries
from lightning_gcd.grain_boundaries.grains import grain_core_shift, grains_kept
from lightning_gcd.grain_boundaries.inpaint import (
    InpaintSource,
    fixed_atoms_kept,
    inpaint,
    inpaint_template,
    read_source,
    slab_free,
)
from lightning_gcd.grain_boundaries.relax import relax_boundaries
from lightning_gcd.grain_boundaries.sample import sample_boundaries

__all__ = [
    "InpaintSource",
    "anneal_boundaries",
    "fixed_atoms_kept",
    "grain_core_shift",
    "grains_kept",
    "inpaint",
    "inpaint_template",
    "read_source",
    "relax_boundaries",
    "sample_boundaries",
    "slab_free",
]
