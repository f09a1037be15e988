"""Helpers of one application that several study scripts use, so that no script imports another.

- ``studies.crystals``: the crystal phases, the models built from a profile's model sections (crystal and
  grain-boundary studies), the particle model's geometry per phase.
- ``studies.crystal_scores``: phase match and the other scores of generated crystals and of the data.
- ``studies.sampler_specs``: ``ddpm-100+r2@0.3``-style sampler settings of the command lines.
- ``studies.amorphous_carbon``: the a-C study's prior training, relaxation and density-scan pool.

Application-agnostic pieces (Trainer, worker pool, results, profiles) are in ``lightning_gcd.runner``.
"""
