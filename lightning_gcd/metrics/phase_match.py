"""Is a generated structure the target crystal? Match against the ideal (unrattled) lattice sites.

A sample matches an ideal crystal when it has the same number of atoms of every species and, after
the best rigid translation, every atom can be assigned one-to-one to an ideal site of its own species
no farther than ``tolerance`` (Å, periodic minimum image). The per-atom distances to the assigned
sites (the displacements) measure how far the sample is from the perfect crystal: compare their RMS
with the thermal spread of the training data (the builder's Gaussian σ per component gives an RMS
displacement of about σ√3, a little less after the best translation is removed).

Algorithm (``phase_matches``): candidate translations put one sample atom of the rarest species
exactly on each ideal site of that species; a candidate survives when every sample atom has an ideal
site of its species within 2 × tolerance (a necessary condition: if some translation puts every atom
within the tolerance, the candidate built from the anchor's own site is off by at most the tolerance).
Candidates are checked in chunks until ``max_candidates`` survive (in a crystal the others are
images of those under its translation symmetry). The best survivors are refined: one-to-one assignment per species
(``scipy.optimize.linear_sum_assignment`` on squared distances, with a large penalty on distances
beyond the tolerance so that an assignment within the tolerance is found whenever one exists), then
the translation is moved by the mean displacement, three times.

Distances use the minimum image of fractional differences wrapped to [-0.5, 0.5); this is the true
periodic distance for every vector shorter than half the cell's smallest perpendicular width, in any
cell shape, which covers every distance the tolerance can accept.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ase import Atoms
from scipy.optimize import linear_sum_assignment
from torchmetrics import Metric

from lightning_gcd.errors import GcdError
from lightning_gcd.metrics._pairs import Structures, as_atoms_list

__all__ = ["phase_matches", "PhaseMatch", "ideal_for_dataset", "local_structure_types"]

_PENALTY = 1e6  # Å², added to assignment costs beyond the tolerance
_CHUNK = 1 << 21  # elements per vectorised candidate check

IdealSpec = Atoms | Sequence[Atoms] | Mapping[Any, Atoms] | Callable[[Atoms], Any]


def _wrap(d: np.ndarray) -> np.ndarray:
    return d - np.floor(d + 0.5)


def phase_matches(
    sample: Atoms, ideal: Atoms, tolerance: float = 0.5, max_candidates: int = 4
) -> tuple[bool, np.ndarray]:
    """Whether ``sample`` is the crystal ``ideal``, and its per-atom displacements (Å) from ideal sites.

    Args:
        sample: periodic structure to test.
        ideal: the perfect crystal in the same supercell (its fractional coordinates are placed in the
            sample's cell, so a slightly different cell is tolerated; a different supercell is not).
        tolerance: Å, the largest displacement of any atom from its assigned ideal site.
        max_candidates: how many of the best candidate translations are refined and assigned.
    Returns:
        ``(matched, displacements)``: ``displacements`` (n,) are the distances of the sample's atoms
        (in order) from their assigned sites after the best translation; empty when the atom counts or
        the compositions differ (then ``matched`` is False).
    """
    if tolerance <= 0:
        raise ValueError(f"tolerance must be positive, got {tolerance}")
    n = len(sample)
    zs, zi = np.asarray(sample.numbers), np.asarray(ideal.numbers)
    if n == 0 or n != len(ideal) or not np.array_equal(np.sort(zs), np.sort(zi)):
        return False, np.zeros(0)
    cell = np.asarray(sample.cell[:], dtype=np.float64)
    if abs(np.linalg.det(cell)) < 1e-9:
        return False, np.zeros(0)
    fs = np.linalg.solve(cell.T, np.asarray(sample.positions, dtype=np.float64).T).T
    fi = ideal.get_scaled_positions(wrap=False).astype(np.float64)
    species, counts = np.unique(zs, return_counts=True)
    groups = [(np.flatnonzero(zs == z), np.flatnonzero(zi == z)) for z in species]
    rare = int(np.argmin(counts))
    s_idx, i_idx = groups[rare]
    anchor = fs[s_idx[0]]
    candidates = fi[i_idx] - anchor  # (C, 3) fractional translations

    # cheap necessary condition: every atom within 2 * tolerance of some site of its species. Candidates
    # are checked in chunks; once max_candidates pass, the rest are skipped (in a crystal they are
    # images of those under its own translations and give the same refined result).
    worst = np.full(len(candidates), np.inf)
    msd = np.full(len(candidates), np.inf)
    step = max(1, _CHUNK // max(1, 3 * max(len(s) * len(i) for s, i in groups)))
    for c0 in range(0, len(candidates), step):
        t = candidates[c0 : c0 + step]
        w = np.zeros(len(t))
        m = np.zeros(len(t))
        for s, i in groups:
            d = _wrap(fi[i][None, None, :, :] - (fs[s][None, :, None, :] + t[:, None, None, :])) @ cell
            nearest = np.sqrt((d * d).sum(-1).min(-1))  # (c, n_s)
            w = np.maximum(w, nearest.max(-1))
            m += (nearest**2).sum(-1)
        worst[c0 : c0 + step], msd[c0 : c0 + step] = w, m
        if np.count_nonzero(worst <= 2 * tolerance) >= max_candidates:
            break
    ok = np.flatnonzero(worst <= 2 * tolerance)
    order = ok[np.argsort(msd[ok], kind="stable")][:max_candidates]
    if order.size == 0:  # no candidate: report the displacements of the best one anyway
        order = np.argsort(msd, kind="stable")[:1]

    best: tuple[bool, float, np.ndarray] | None = None
    for c in order:
        t = candidates[c].copy()
        for it in range(4):
            disp_frac = np.zeros((n, 3))
            for s, i in groups:
                d = _wrap(fi[i][None, :, :] - (fs[s][:, None, :] + t)) @ cell  # (n_s, n_i, 3)
                d2 = (d * d).sum(-1)
                cost = d2 + _PENALTY * (d2 > tolerance**2)
                rows, cols = linear_sum_assignment(cost)
                disp_frac[s[rows]] = _wrap(fi[i[cols]] - (fs[s[rows]] + t))
            if it < 3:
                t = t + disp_frac.mean(0)
        disp = np.linalg.norm(disp_frac @ cell, axis=-1)
        matched = bool(disp.max() <= tolerance)
        rms = float(np.sqrt((disp**2).mean()))
        if best is None or (matched, -rms) > (best[0], -best[1]):
            best = (matched, rms, disp)
    assert best is not None
    return best[0], best[2]


def _phase_name(atoms: Atoms, key: Any) -> str:
    return str(atoms.info.get("phase_name", key))


class PhaseMatch(Metric):
    """Fraction of structures that are a known crystal, and their RMS displacement from ideal sites.

    Args:
        ideal: the target crystal(s): one ``Atoms``; a list or a dict of them (a sample matches when it
            matches any one with its atom count and composition; ``update(batch, phase=...)`` can pick
            one per structure by key or position); or a callable ``sample -> Atoms | list | None``.
        tolerance: Å, see ``phase_matches``.

    States (summed across processes): ``matched``, ``total``; ``disp_sum``, ``disp_sq_sum`` and
    ``disp_count`` over the atoms of matched structures; ``matched_per_phase`` (P,) when the ideals
    are a list or dict (P of them).

    ``compute()`` returns ``{"phase_match": rate, "displacement_rms": Å, "displacement_mean": Å}``
    and, for a list/dict of ideals, ``"phase_match/<name>"``: the fraction of structures matching each
    (``name`` is ``atoms.info["phase_name"]`` when set, else the key).
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = True

    def __init__(self, ideal: IdealSpec, tolerance: float = 0.5, max_candidates: int = 4, **kwargs) -> None:
        super().__init__(**kwargs)
        if tolerance <= 0:
            raise ValueError(f"tolerance must be positive, got {tolerance}")
        self.tolerance = float(tolerance)
        self.max_candidates = int(max_candidates)
        self._callable: Callable[[Atoms], Any] | None = None
        self._keys: list[Any] = []
        self._ideals: list[Atoms] = []
        if isinstance(ideal, Atoms):
            self._keys, self._ideals = [0], [ideal]
        elif isinstance(ideal, Mapping):
            self._keys, self._ideals = list(ideal.keys()), list(ideal.values())
        elif callable(ideal):
            self._callable = ideal
        else:
            self._ideals = list(ideal)
            self._keys = list(range(len(self._ideals)))
        if self._callable is None and not self._ideals:
            raise ValueError("no ideal crystal given")
        self.names = [_phase_name(a, k) for k, a in zip(self._keys, self._ideals, strict=True)]
        for name in ("matched", "total", "disp_sum", "disp_sq_sum", "disp_count"):
            self.add_state(name, torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("matched_per_phase", torch.zeros(len(self._ideals), dtype=torch.float64), dist_reduce_fx="sum")

    def _candidates(self, sample: Atoms, phase: Any) -> list[tuple[int | None, Atoms]]:
        if self._callable is not None:
            out = self._callable(sample)
            if out is None:
                return []
            return [(None, out)] if isinstance(out, Atoms) else [(None, a) for a in out]
        if phase is not None:
            if phase in self._keys:
                p = self._keys.index(phase)
            elif isinstance(phase, (int, np.integer)) and 0 <= int(phase) < len(self._ideals):
                p = int(phase)
            else:
                raise KeyError(f"no ideal crystal for phase {phase!r} (known: {self._keys})")
            return [(p, self._ideals[p])]
        return list(enumerate(self._ideals))

    def match_one(self, sample: Atoms, phase: Any = None) -> tuple[bool, int | None, np.ndarray]:
        """``(matched, index of the matching ideal or None, displacements)`` for one structure."""
        best_disp = np.zeros(0)
        for p, ideal in self._candidates(sample, phase):
            ok, disp = phase_matches(sample, ideal, self.tolerance, self.max_candidates)
            if ok:
                return True, p, disp
            if disp.size and not best_disp.size:
                best_disp = disp
        return False, None, best_disp

    def update(self, batch: Structures, phase: Sequence[Any] | torch.Tensor | None = None) -> None:
        atoms_list = as_atoms_list(batch)
        if isinstance(phase, torch.Tensor):
            phase = phase.detach().cpu().tolist()
        if phase is not None and len(phase) != len(atoms_list):
            raise ValueError(f"{len(phase)} phases for {len(atoms_list)} structures")
        matched = 0
        per_phase = np.zeros(len(self._ideals))
        s1 = s2 = cnt = 0.0
        for b, sample in enumerate(atoms_list):
            ok, p, disp = self.match_one(sample, None if phase is None else phase[b])
            if ok:
                matched += 1
                if p is not None:
                    per_phase[p] += 1
                s1 += float(disp.sum())
                s2 += float((disp**2).sum())
                cnt += disp.size
        dev = self.total.device
        self.matched += matched
        self.total += len(atoms_list)
        self.disp_sum += s1
        self.disp_sq_sum += s2
        self.disp_count += cnt
        self.matched_per_phase += torch.as_tensor(per_phase, dtype=torch.float64, device=dev)

    def compute(self) -> dict[str, torch.Tensor]:
        nan = torch.tensor(float("nan"), dtype=torch.float64, device=self.total.device)
        rate = self.matched / self.total if self.total > 0 else nan
        has = self.disp_count > 0
        out = {
            "phase_match": rate,
            "displacement_rms": torch.sqrt(self.disp_sq_sum / self.disp_count) if has else nan,
            "displacement_mean": self.disp_sum / self.disp_count if has else nan,
        }
        for name, m in zip(self.names, self.matched_per_phase, strict=True):
            out[f"phase_match/{name}"] = m / self.total if self.total > 0 else nan
        return out


def _attr_list(value: Any) -> list[str]:
    if isinstance(value, (str, bytes)):
        value = [value]
    return [v.decode() if isinstance(v, bytes) else str(v) for v in np.asarray(value).ravel().tolist()]


def ideal_for_dataset(path: str | Path, strict: bool = True) -> dict[int, Atoms]:
    """The unrattled crystal of every phase of a dataset written by the crystals builder.

    Rebuilds ``CrystalSpec(phase, element, a, c).unit_cell() * repeat`` from the file's attributes
    (``meta_phases``, ``meta_elements``, ``meta_repeat``) and properties (``phase_index``,
    ``lattice_a``, ``lattice_c``). Returns ``{phase_index: Atoms}``; each ``Atoms.info`` carries
    ``phase``, ``element``, ``label`` and ``phase_name`` (the phase, or ``phase_element`` when two
    specs share a phase). Not a crystals dataset: ``GcdError`` when ``strict``, else ``{}``.
    """
    from datamodules.builders.crystals import CrystalSpec
    from datamodules.h5format import AtomsH5

    with AtomsH5(path) as data:
        attrs = data.attrs
        needed = ("meta_phases", "meta_elements", "meta_repeat")
        props = ("phase_index", "lattice_a", "lattice_c")
        if any(k not in attrs for k in needed) or any(p not in data.property_names for p in props):
            if strict:
                raise GcdError(
                    f"{path}: not a crystals dataset (needs attributes {', '.join(needed)} and "
                    f"properties {', '.join(props)}); ideal crystals are unknown"
                )
            return {}
        phases = _attr_list(attrs["meta_phases"])
        elements = _attr_list(attrs["meta_elements"])
        repeat = tuple(int(r) for r in np.asarray(attrs["meta_repeat"]).ravel())
        phase_index = np.asarray(data.structure_property("phase_index")).astype(np.int64).ravel()
        lattice_a = np.asarray(data.structure_property("lattice_a"), dtype=np.float64).ravel()
        lattice_c = np.asarray(data.structure_property("lattice_c"), dtype=np.float64).ravel()
        labels = data.labels
    if len(phases) != len(elements) or len(repeat) != 3:
        raise GcdError(
            f"{path}: inconsistent crystals metadata (phases {phases}, elements {elements}, repeat {repeat})"
        )
    out: dict[int, Atoms] = {}
    for p, (phase, element) in enumerate(zip(phases, elements, strict=True)):
        rows = np.flatnonzero(phase_index == p)
        if rows.size == 0:
            continue
        r = int(rows[0])
        spec = CrystalSpec(phase, element, float(lattice_a[r]), float(lattice_c[r]) if phase == "hcp" else None)
        atoms = spec.unit_cell() * repeat
        atoms.pbc = True
        name = phase if phases.count(phase) == 1 else f"{phase}_{element}"
        atoms.info.update(phase=phase, element=element, label=labels[r], phase_name=name)
        out[p] = atoms
    return out


def local_structure_types(atoms: Atoms, method: str = "ptm") -> list[str] | None:
    """Per-atom local structure type (e.g. ``"FCC"``, ``"BCC"``, ``"HCP"``, ``"Other"``) from OVITO.

    ``method="ptm"`` uses polyhedral template matching, ``"acna"`` adaptive common neighbour analysis.
    OVITO is optional and not a dependency of this project: when ``ovito`` cannot be imported this
    returns ``None`` (callers skip the analysis) instead of raising. Untested here, since OVITO was
    not installed where this was written.
    """
    try:
        from ovito.io.ase import ase_to_ovito
        from ovito.modifiers import CommonNeighborAnalysisModifier, PolyhedralTemplateMatchingModifier
        from ovito.pipeline import Pipeline, StaticSource
    except Exception:  # ImportError, or a broken OVITO install (missing GL libraries)
        return None
    if method == "ptm":
        modifier = PolyhedralTemplateMatchingModifier()
    elif method == "acna":
        modifier = CommonNeighborAnalysisModifier(mode=CommonNeighborAnalysisModifier.Mode.AdaptiveCutoff)
    else:
        raise ValueError(f"unknown method {method!r}; use 'ptm' or 'acna'")
    pipeline = Pipeline(source=StaticSource(data=ase_to_ovito(atoms)))
    pipeline.modifiers.append(modifier)
    data = pipeline.compute()
    prop = data.particles["Structure Type"]
    names = {t.id: t.name for t in prop.types}
    return [names.get(int(v), str(int(v))) for v in np.asarray(prop[...])]
