"""Whether a relaxed bicrystal still holds its template's two grains.

An E_gb is the excess energy of a boundary between two given grains. A generated structure whose relaxation
destroyed a grain (atoms generated on top of each other blast the lattice apart in the first minimisation
steps; the debris relaxes into an amorphous cell, or into one crystal with no boundary at all, whose "E_gb"
can lie far below the true minimum) has no E_gb to compare. This module measures it: the atoms of the
template's grain cores (farther than ``depth`` Å from both boundary planes, where the in-painting held every
atom) are matched to their nearest relaxed atom, in fractional coordinates (so the normal cell relaxation's
uniform strain is not counted); each grain's mean displacement (a rigid slide, which relaxation may make) is
removed, and the RMS of what is left is the grain's **core shift** (Å). Intact cores move elastically by a
few hundredths of an Å; a lost grain's atoms sit about 1 Å from the nearest template site.
"""

from __future__ import annotations

import numpy as np
from ase import Atoms

from lightning_gcd.grain_boundaries.inpaint import InpaintSource

__all__ = ["CORE_DEPTH", "GRAIN_SHIFT_TOLERANCE", "grain_core_shift", "grains_kept"]

#: Å from the nearest boundary plane beyond which the template's atoms form the grain cores
CORE_DEPTH = 5.0
#: Å of core shift above which a grain counts as lost: intact cores measured ≤ 0.24 Å (W and Cu, voxel
#: in-painting, ± anneal, 800 cells) and lost ones ≥ 0.37 Å (experiments/grain_boundaries/RESULTS.md, "Lost grains")
GRAIN_SHIFT_TOLERANCE = 0.3


def grain_core_shift(relaxed: Atoms, source: InpaintSource, depth: float = CORE_DEPTH) -> float:
    """The larger of the two grains' core shifts (Å; module docstring) of ``relaxed`` against its template
    ``source``; NaN when a grain has no atom deeper than ``depth`` Å or ``relaxed`` holds no atoms."""
    from datamodules.builders.grain_boundaries import boundary_distance

    template = source.atoms
    lz = float(template.cell.lengths()[2])
    planes = np.sort(np.mod(np.asarray(source.boundary_z, dtype=np.float64), lz))
    core = boundary_distance(template.positions, planes, lz) > depth
    if len(relaxed) == 0 or planes.size != 2:
        return float("nan")
    z = np.mod(template.positions[core, 2], lz)
    upper = (z > planes[0]) & (z < planes[1])  # the grain between the two planes
    reference = template.cell.scaled_positions(template.positions[core])  # (K, 3)
    moved = relaxed.cell.scaled_positions(relaxed.positions)  # (N, 3)
    shift = np.concatenate(
        [
            _nearest_shift(chunk, moved, np.asarray(relaxed.cell))
            for chunk in np.array_split(reference, max(1, len(reference) // 256))
        ]
    )  # (K, 3) Å
    worst = 0.0
    for grain in (upper, ~upper):
        if not grain.any():
            return float("nan")
        residual = shift[grain] - shift[grain].mean(axis=0)
        worst = max(worst, float(np.sqrt((residual**2).sum(axis=1).mean())))
    return worst


def _nearest_shift(reference: np.ndarray, moved: np.ndarray, cell: np.ndarray) -> np.ndarray:
    """(K, 3) fractional reference sites, (N, 3) fractional positions -> (K, 3) Å from each site to the nearest
    position (minimum image)."""
    delta = moved[None, :, :] - reference[:, None, :]  # (K, N, 3)
    delta -= np.round(delta)
    cartesian = delta @ cell
    nearest = (cartesian**2).sum(-1).argmin(axis=1)
    return cartesian[np.arange(len(reference)), nearest]


def grains_kept(shift: float, tolerance: float = GRAIN_SHIFT_TOLERANCE) -> bool:
    """Whether a core shift (Å) leaves both grains in place; an unmeasured (NaN) shift counts as kept."""
    return not shift > tolerance
