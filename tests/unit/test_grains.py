"""The grain check of relaxed bicrystals (``lightning_gcd.grain_boundaries.grains``): elastic relaxation, a
uniform normal strain and a rigid slide of a grain keep both grains; a grain whose atoms were scattered is lost."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms

from datamodules.builders.grain_boundaries import BOUNDARIES, bicrystal
from lightning_gcd.grain_boundaries.grains import GRAIN_SHIFT_TOLERANCE, grain_core_shift, grains_kept
from lightning_gcd.grain_boundaries.inpaint import InpaintSource


@pytest.fixture(scope="module")
def template() -> tuple[InpaintSource, np.ndarray]:
    """A Cu Σ5(100) twist bicrystal (36 Å along z, two 18 Å grains) and the mask of its upper grain."""
    crystal = bicrystal(BOUNDARIES["twist100"], "Cu", 3.615, repeat=(1, 1, 5))
    atoms = crystal.atoms
    lz = atoms.cell.lengths()[2]
    z = np.mod(atoms.positions[:, 2], lz)
    upper = (z > crystal.boundary_z[0]) & (z < crystal.boundary_z[1])
    return InpaintSource(atoms, np.asarray(crystal.boundary_z)), upper


def test_template_against_itself_strained_and_elastically_relaxed_keeps_its_grains(template) -> None:
    source, _ = template
    assert grain_core_shift(source.atoms, source) == pytest.approx(0.0, abs=1e-9)
    strained = source.atoms.copy()
    strained.set_cell(strained.cell[:] @ np.diag([1.0, 1.0, 1.03]), scale_atoms=True)  # normal relaxation
    assert grain_core_shift(strained, source) == pytest.approx(0.0, abs=1e-9)
    relaxed = source.atoms.copy()
    relaxed.positions += np.random.default_rng(0).normal(0.0, 0.05, relaxed.positions.shape)
    shift = grain_core_shift(relaxed, source)
    assert 0.03 < shift < 0.12 and grains_kept(shift)


def test_rigid_slide_of_one_grain_is_not_counted(template) -> None:
    source, upper = template
    slid = source.atoms.copy()
    slid.positions[upper] += [0.6, -0.4, 0.2]  # Å: the upper grain slides along the boundary and away from it
    assert grain_core_shift(slid, source) == pytest.approx(0.0, abs=1e-9)


def test_scattered_grain_is_lost(template) -> None:
    source, upper = template
    scattered = source.atoms.copy()
    rng = np.random.default_rng(1)
    scattered.positions[upper] += rng.normal(0.0, 1.0, (int(upper.sum()), 3))  # the debris of a blasted grain
    shift = grain_core_shift(scattered, source)
    assert shift > 2 * GRAIN_SHIFT_TOLERANCE and not grains_kept(shift)


def test_empty_structure_or_thin_grains_are_unmeasured(template) -> None:
    source, _ = template
    assert np.isnan(grain_core_shift(Atoms(cell=source.atoms.cell, pbc=True), source))
    assert np.isnan(grain_core_shift(source.atoms, source, depth=20.0))  # no atom 20 Å from both planes
    assert grains_kept(float("nan"))
