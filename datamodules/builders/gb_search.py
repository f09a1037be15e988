"""Annealed grand canonical search of grain-boundary structures (a reference search in the spirit of GRIP).

GRIP (Chen, Frolov et al., Nat. Commun. 2024) samples the boundary atom fraction [n], in-plane translations of
one grain, and short MD anneals at random temperatures before a minimisation; the lowest E_gb at each [n] is
the lower envelope E_gb([n]). This builder does the same in the project's bicrystal, so its output is a
grain-boundary dataset that models train on and whose energies compare with ``gcd data build
grain-boundaries``:

* **Cell.** The builder's periodic bicrystal (``grain_boundaries.bicrystal``: two boundaries per cell, grain A
  below grain B, boundary planes normal to z), repeated in-plane until one atomic plane parallel to the
  boundary holds at least ``MIN_ATOMS_PER_PLANE`` (10) atoms, so [n] takes at least 10 values over a full
  plane, and along z until each grain is at least ``MIN_GRAIN_THICKNESS`` Å thick (``search_repeat``).
* **[n].** ``[n] = k / P`` for ``k`` atoms kept of ``P`` in the plane of grain B next to each boundary: the
  other ``P − k`` (none for k = 0) are removed at random, as GRIP removes atoms from its upper grain's first
  plane; ``[n]`` is the number of atoms at each boundary relative to the perfect bicrystal, in planes, mod 1.
  Candidate ``j`` of a boundary takes its ``k`` from a random permutation of the requested values per block of
  ``len(values)`` candidates, so every prefix and every shard of a search covers the values evenly.
* **Translation.** Grain B shifted in-plane by a uniform random fraction of one grain-cell period.
* **Anneal** (LAMMPS, the potential of ``relax.Relaxer``, in the same session as the minimisation): a
  fixed-cell minimisation (overlaps from the random shift), then Langevin MD of the atoms within
  ``mobile_width`` Å of a boundary at a temperature drawn in steps of 100 K from ``temperatures`` for a number
  of steps drawn uniformly from ``md_steps`` (rounded to 1000; GRIP's protocol), then a ramp to
  ``end_temperature`` over ``cool_steps``. The core of grain A (atoms farther than ``mobile_width`` from both
  boundaries) is held fixed and the core of grain B moves as one rigid block (its atoms share the block's
  mean force): GRIP's bottom-fixed / top-rigid setup, here in a periodic cell, which also stops a hot
  boundary from migrating through a thin grain. The cell length along z follows a Berendsen barostat to
  zero normal stress (the in-plane cell stays at the 0 K lattice, as in GRIP's slab).
* **Minimisation.** ``relax.Relaxer(cell="normal")``, the builder's own: all atoms free, the cell length
  along z relaxed to zero normal stress. E_gb = (E − N·E_coh)/(2A) in J/m².

Why a periodic cell and not GRIP's free-surface slab: the candidates are then the builder's structures
(same cell, same relaxation, same bulk reference), so the search writes a training set and its energies
compare directly with the dataset's and with in-painted boundaries; the two setups gave the same n = 0
minima within 0.01 % (``experiments/grain_boundaries/RESULTS.md``, normal relaxation).

Long searches: like the amorphous-carbon builder (``datamodules.builders.parts``), every finished candidate
is written at once to ``<out>.parts/candidate_<boundary>_<j>.npz`` and reused by a rerun with the same
settings (a killed search loses only the candidates in flight; a larger ``candidates`` extends a search);
``shard=(i, n)`` computes only candidates whose ``build_index`` is i mod n, and ``gcd data merge`` joins the
shard files. A candidate whose MD or minimisation fails (e.g. LAMMPS loses atoms) is a result: its part
records the error, and it is left out of the dataset and counted in ``meta_failed``.

Stored per structure: the grain-boundary builder's fields (``energy``, ``gb_energy`` J/m², ``gb_energy_ev_a2``,
``cohesive_energy``, ``lattice_a``, ``boundary_index``, ``n_boundary_atoms``, ``n_atoms_perfect``,
``atoms_per_plane``, ``plane_fraction``, ``boundary_z``, ``boundary_area``, ``translation`` Å, ``relax_steps``,
``relax_fmax``, ``stress_zz`` GPa; per atom ``boundary_distance``, ``grain``) and ``n_fraction`` ([n]),
``anneal_temperature`` (K), ``anneal_steps``, ``build_index`` and ``seconds`` (wall time of the candidate).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms

from datamodules.builders.grain_boundaries import (
    BOUNDARIES,
    BoundarySpec,
    bicrystal,
    boundary_distance,
    change_boundary_count,
    gb_energy,
    lattice_of,
)
from datamodules.builders.parts import available_cores, compute_parts, parse_shard, parts_folder, read_part, write_part
from datamodules.h5format import DatasetRecords
from lightning_gcd.errors import GcdError
from lightning_gcd.relax import EV_PER_A2_IN_J_PER_M2, Relaxer, reference_lattice_constant

PART_VERSION = 1
MIN_ATOMS_PER_PLANE = 10  # [n] in steps of at most 0.1 over a full plane
MIN_GRAIN_THICKNESS = 17.0  # Å per grain: a held core beyond mobile_width of both boundaries
DEFAULT_TEMPERATURES = {"Cu": (300.0, 1200.0), "W": (1000.0, 3300.0)}  # K: GRIP's ranges for Cu and W
GPA_IN_BAR = 1.0e4


@dataclass(frozen=True)
class Anneal:
    """MD anneal of a candidate before its minimisation (LAMMPS metal units: K, fs, ps, Å)."""

    temperatures: tuple[float, float] = (1000.0, 3300.0)  # K, drawn in steps of 100 K
    md_steps: tuple[int, int] = (5000, 20000)  # drawn uniformly, rounded to 1000
    timestep: float = 2.0  # fs
    cool_steps: int = 1000  # ramp to end_temperature
    end_temperature: float = 50.0  # K
    damping: float = 0.2  # ps, Langevin time constant (100 time steps, as GRIP)
    pressure_damping: float = 1.0  # ps, Berendsen barostat along z
    mobile_width: float = 6.0  # Å: atoms within this distance of a boundary move; the grain cores are held

    def __post_init__(self) -> None:
        t_min, t_max = (float(t) for t in self.temperatures)
        s_min, s_max = (int(s) for s in self.md_steps)
        if not 0 < t_min <= t_max:
            raise GcdError(f"--temperatures needs 0 < TMIN <= TMAX (K), got {t_min:g} {t_max:g}")
        if not 0 <= s_min <= s_max:
            raise GcdError(f"--md-steps needs 0 <= MIN <= MAX, got {s_min} {s_max}")
        if self.timestep <= 0 or self.cool_steps < 0 or self.mobile_width <= 0:
            raise GcdError("the MD time step and the mobile width must be positive, the cooling steps non-negative")

    def draw(self, rng: np.random.Generator) -> tuple[float, int]:
        """(temperature K, MD steps) of one candidate."""
        t_min, t_max = (float(t) for t in self.temperatures)
        temperatures = np.arange(t_min, t_max + 1e-9, 100.0)
        temperature = float(rng.choice(temperatures))
        s_min, s_max = (int(s) for s in self.md_steps)
        steps = int(rng.integers(s_min, s_max, endpoint=True))
        return temperature, int(round(steps, -3)) if s_max >= 1000 else steps


def search_repeat(spec: BoundarySpec, element: str, a: float) -> tuple[int, int, int]:
    """The smallest in-plane repeat (the squarest of those) with at least ``MIN_ATOMS_PER_PLANE`` atoms per
    boundary plane, and grain periods along z for at least ``MIN_GRAIN_THICKNESS`` Å per grain."""
    unit = bicrystal(spec, element, a, (1, 1, 1))
    per_plane = unit.atoms_per_plane
    lx, ly, lz = (float(v) for v in unit.atoms.cell.lengths())
    options = [
        (nx * ny, abs(nx * lx - ny * ly), nx, ny)
        for nx in range(1, MIN_ATOMS_PER_PLANE + 1)
        for ny in range(1, MIN_ATOMS_PER_PLANE + 1)
        if nx * ny * per_plane >= MIN_ATOMS_PER_PLANE
    ]
    _, _, nx, ny = min(options)
    return nx, ny, max(1, math.ceil(MIN_GRAIN_THICKNESS / (lz / 2) - 1e-9))


def n_counts(fractions: Sequence[float] | None, atoms_per_plane: int) -> list[int]:
    """Atoms kept per boundary plane, ``k = round([n] × P)`` for the requested [n] in [0, 1) (None: all k)."""
    if fractions is None:
        return list(range(atoms_per_plane))
    out = []
    for f in fractions:
        if not 0.0 <= float(f) < 1.0:
            raise GcdError(f"[n] values must lie in [0, 1), got {f}")
        k = int(round(float(f) * atoms_per_plane)) % atoms_per_plane
        if k not in out:
            out.append(k)
    return sorted(out)


@dataclass(frozen=True)
class CandidateTask:
    """Everything one candidate needs (picklable: worker processes get it)."""

    build_index: int
    boundary_index: int
    boundary: str
    candidate: int  # j: the candidate's index within its boundary
    kept: int  # k: atoms kept in grain B's boundary plane, [n] = k / atoms_per_plane
    seed: int
    element: str
    repeat: tuple[int, int, int]
    lattice_a: float  # Å
    cohesive_energy: float  # eV/atom
    bulk_modulus: float  # GPa (the barostat's scale)
    relaxer: Relaxer
    anneal: Anneal
    part: str

    def key(self) -> str:
        """What a reusable part must have been computed with (json)."""
        from datamodules.builders.amorphous_carbon import versions

        return json.dumps(
            {
                "part_version": PART_VERSION,
                "seed": self.seed,
                "element": self.element,
                "boundary": self.boundary,
                "candidate": self.candidate,
                "kept": self.kept,
                "repeat": list(self.repeat),
                "relaxer": asdict(self.relaxer),
                "anneal": asdict(self.anneal),
                "lammps": versions()["lammps"],
            },
            sort_keys=True,
        )


def anneal_commands(
    held_a: np.ndarray,
    held_b: np.ndarray,
    mobile: np.ndarray,
    anneal: Anneal,
    temperature: float,
    steps: int,
    velocity_seed: int,
    bulk_modulus: float,
    fmax: float,
) -> list[str]:
    """LAMMPS commands of the anneal (``Relaxer.relax``'s prelude; atom i is LAMMPS id i + 1)."""
    ids = {
        name: " ".join(str(int(i) + 1) for i in np.nonzero(mask)[0])
        for name, mask in (("held_a", held_a), ("held_b", held_b), ("mobile", mobile))
    }
    dt = anneal.timestep / 1000.0
    bath = f"{anneal.damping!r} {velocity_seed} zero yes"
    commands = [f"group {name} id {text}" for name, text in ids.items()]
    commands += [
        "change_box all ortho",  # the relaxer's box is a prism with zero tilts; press/berendsen needs orthogonal
        f"minimize 0.0 {fmax!r} 1000 10000",  # close contacts of the random shift, before any velocity
        "reset_timestep 0",
        f"timestep {dt!r}",
        f"velocity mobile create {temperature!r} {velocity_seed} mom yes rot no dist gaussian",
        "fix anneal_nve all nve",
        "fix anneal_held held_a setforce 0.0 0.0 0.0",
        "fix anneal_rigid held_b aveforce 0.0 0.0 0.0",
        f"fix anneal_bath mobile langevin {temperature!r} {temperature!r} {bath}",
        f"fix anneal_pz all press/berendsen z 0.0 0.0 {anneal.pressure_damping!r} modulus "
        f"{bulk_modulus * GPA_IN_BAR!r}",
        f"run {steps}",
        "unfix anneal_bath",
        f"fix anneal_bath mobile langevin {temperature!r} {anneal.end_temperature!r} {bath}",
        f"run {anneal.cool_steps}",
    ]
    commands += [f"unfix {fix}" for fix in ("anneal_pz", "anneal_bath", "anneal_rigid", "anneal_held", "anneal_nve")]
    commands.append("velocity all set 0.0 0.0 0.0")  # else box/relax balances the virial against a kinetic pressure
    return commands


def compute_candidate(task: CandidateTask) -> str:
    """Build, anneal and minimise one candidate; write its part atomically; return the part's path."""
    t0 = time.perf_counter()
    spec = BOUNDARIES[task.boundary]
    # two streams, so the start structure does not depend on the anneal settings
    start_stream, md_stream = np.random.SeedSequence([task.seed, task.boundary_index, task.candidate]).spawn(2)
    rng, md_rng = np.random.default_rng(start_stream), np.random.default_rng(md_stream)
    fraction = rng.random(2)
    temperature, steps = task.anneal.draw(md_rng)
    velocity_seed = int(md_rng.integers(1, 900_000_000))  # LAMMPS' Marsaglia generator takes seeds up to 9e8
    perfect = bicrystal(spec, task.element, task.lattice_a, task.repeat)
    lengths = perfect.atoms.cell.lengths()
    shift = np.array([fraction[0] * lengths[0] / task.repeat[0], fraction[1] * lengths[1] / task.repeat[1]])
    per_plane = perfect.atoms_per_plane
    removed = (per_plane - task.kept) % per_plane
    crystal = change_boundary_count(bicrystal(spec, task.element, task.lattice_a, task.repeat, shift), -removed, rng)
    atoms = crystal.atoms
    lz0 = float(atoms.cell.lengths()[2])
    distance = boundary_distance(atoms.positions, crystal.boundary_z, lz0)
    mobile = distance < task.anneal.mobile_width
    held_a, held_b = ~mobile & (crystal.grain == 0), ~mobile & (crystal.grain == 1)
    if not held_a.any() or not held_b.any():
        raise GcdError(
            f"{task.boundary}: no grain core farther than {task.anneal.mobile_width:g} Å from the boundaries; "
            f"lower --mobile-width or thicken the grains (--repeat)"
        )
    commands = anneal_commands(
        held_a, held_b, mobile, task.anneal, temperature, steps, velocity_seed, task.bulk_modulus, task.relaxer.fmax
    )
    error = ""
    try:
        relaxed, energy, relax_steps, left = task.relaxer.relax(atoms, prelude=commands)
        stress_zz = float(relaxed.info["stress_zz"])
    except Exception as exc:  # noqa: BLE001 - a failed candidate is a result, not the end of a search
        relaxed, energy, relax_steps, left, stress_zz = atoms, float("nan"), 0, float("nan"), float("nan")
        error = " ".join(str(exc).split())[:300] or type(exc).__name__
    write_part(
        task.part,
        task.key(),
        positions=relaxed.positions,
        cell=np.asarray(relaxed.cell[:]),
        grain=crystal.grain.astype(np.int8),
        boundary_z=crystal.boundary_z * float(relaxed.cell.lengths()[2]) / lz0,
        n_atoms_perfect=np.int64(crystal.n_perfect),
        atoms_per_plane=np.int64(per_plane),
        removed=np.int64(removed),
        area=np.float64(crystal.area),
        translation=np.array([shift[0], shift[1], 0.0]),
        temperature=np.float64(temperature),
        md_steps=np.int64(steps),
        energy=np.float64(energy),
        relax_steps=np.int64(relax_steps),
        relax_fmax=np.float64(left),
        stress_zz=np.float64(stress_zz),
        seconds=np.float64(time.perf_counter() - t0),
        error=np.array(error),
    )
    return task.part


def _worker_init() -> None:
    from lightning_gcd.engines import preload_mpi

    os.environ["OMP_NUM_THREADS"] = "1"
    preload_mpi()


def grain_boundary_search_records(
    element: str = "W",
    boundaries: Sequence[str] = ("twist100",),
    candidates: int = 100,
    fractions: Sequence[float] | None = None,
    potential: str | None = None,
    repeat: Sequence[int] | None = None,
    anneal: Anneal | dict | None = None,
    fmax: float = 0.01,
    max_steps: int = 5000,
    seed: int = 0,
    workers: int | None = None,
    shard: str | Sequence[int] | None = None,
    parts_dir: str | Path | None = None,
    finished_only: bool = False,
    progress: bool = True,
) -> DatasetRecords:
    """``candidates`` annealed, normal-relaxed bicrystals per boundary (module docstring); ``fractions``: the
    [n] values to sample (None: every k / P); ``anneal``: an ``Anneal`` or its fields (temperatures default to
    ``DEFAULT_TEMPERATURES[element]``); ``parts_dir``: the resumable parts (``build_dataset`` passes
    ``<out>.parts``; None: a temporary folder, no resume); ``finished_only``: compute nothing, write the
    finished candidates."""
    if not boundaries:
        raise GcdError("name at least one boundary")
    for name in boundaries:
        if name not in BOUNDARIES:
            raise GcdError(f"unknown boundary '{name}'; choose from {', '.join(BOUNDARIES)}")
    if candidates < 1:
        raise GcdError("--candidates must be at least 1")
    anneal = anneal_for(element, anneal)
    workers = int(workers) if workers is not None else available_cores()
    if workers < 1:
        raise GcdError("--workers must be at least 1")
    i_shard, n_shard = parse_shard(shard)
    lattice = lattice_of(element)
    relaxer = Relaxer(element, "lammps", potential, fmax, max_steps, "normal")
    a, e_coh = relaxer.bulk_reference(lattice, reference_lattice_constant(element, lattice))
    modulus = relaxer.bulk_modulus(lattice, a)

    with parts_folder(parts_dir, "gcd-gbsearch-parts-") as folder:
        tasks = _plan(
            element, boundaries, candidates, fractions, repeat, a, e_coh, modulus, relaxer, anneal, seed, folder
        )
        tasks = [t for t in tasks if t.build_index % n_shard == i_shard]
        if not tasks:
            raise GcdError(f"--shard {i_shard}/{n_shard} selects no candidate")
        parts = {t.build_index: read_part(t.part, t.key()) for t in tasks}
        if finished_only:
            tasks = [t for t in tasks if parts[t.build_index] is not None]
            if not tasks:
                raise GcdError(f"--finished-only: no finished candidate with these settings in {folder}")
        todo = [t for t in tasks if parts[t.build_index] is None]
        compute_parts(
            compute_candidate,
            todo,
            len(tasks) - len(todo),
            workers,
            desc=f"{element} grain-boundary search",
            unit="candidate",
            progress=progress,
            initializer=_worker_init,
        )
        for task in todo:
            parts[task.build_index] = read_part(task.part, task.key())
            if parts[task.build_index] is None:
                raise GcdError(f"{task.part}: the finished candidate could not be read back")
        return _assemble(
            tasks,
            parts,
            element,
            boundaries,
            candidates,
            fractions,
            relaxer,
            anneal,
            a,
            e_coh,
            seed,
            (i_shard, n_shard),
        )


def anneal_for(element: str, anneal: Anneal | dict | None) -> Anneal:
    """The anneal settings, with the element's default temperatures unless given."""
    fields = asdict(anneal) if isinstance(anneal, Anneal) else dict(anneal or {})
    if fields.get("temperatures") is None:
        if element not in DEFAULT_TEMPERATURES:
            raise GcdError(f"no default anneal temperatures for {element}; pass --temperatures TMIN TMAX")
        fields["temperatures"] = DEFAULT_TEMPERATURES[element]
    fields["temperatures"] = tuple(float(t) for t in fields["temperatures"])
    if "md_steps" in fields:
        fields["md_steps"] = tuple(int(s) for s in fields["md_steps"])
    return replace(Anneal(), **fields)


def _plan(element, boundaries, candidates, fractions, repeat, a, e_coh, modulus, relaxer, anneal, seed, parts_dir):
    """Every candidate of the unsharded search; ``build_index = j × len(boundaries) + boundary_index`` (so a
    larger ``candidates`` keeps the indices and parts of a smaller search)."""
    tasks = []
    for b_index, name in enumerate(boundaries):
        spec = BOUNDARIES[name]
        cell = tuple(int(v) for v in repeat) if repeat is not None else search_repeat(spec, element, a)
        if len(cell) != 3 or min(cell) < 1:
            raise GcdError("--repeat needs three positive integers")
        values = n_counts(fractions, bicrystal(spec, element, a, cell).atoms_per_plane)
        for j in range(candidates):
            block = np.random.default_rng(np.random.SeedSequence([seed, b_index, j // len(values), 1]))
            kept = values[int(block.permutation(len(values))[j % len(values)])]
            tasks.append(
                CandidateTask(
                    j * len(boundaries) + b_index,
                    b_index,
                    name,
                    j,
                    kept,
                    int(seed),
                    element,
                    cell,
                    float(a),
                    float(e_coh),
                    float(modulus),
                    relaxer,
                    anneal,
                    str(parts_dir / f"candidate_{name}_{j:06d}.npz"),
                )
            )
    return sorted(tasks, key=lambda t: t.build_index)


def _assemble(tasks, parts, element, boundaries, candidates, fractions, relaxer, anneal, a, e_coh, seed, shard):
    atoms_list, labels, distances, grains = [], [], [], []
    props: dict[str, list[Any]] = {}
    failed = [t for t in tasks if str(parts[t.build_index]["error"])]
    finished = [t for t in tasks if not str(parts[t.build_index]["error"])]
    if not finished:
        raise GcdError(f"every candidate failed; the first: {str(parts[tasks[0].build_index]['error'])}")
    for task in finished:
        part = parts[task.build_index]
        atoms = Atoms([element] * len(part["positions"]), positions=part["positions"], cell=part["cell"], pbc=True)
        per_plane, removed = int(part["atoms_per_plane"]), int(part["removed"])
        area, energy = float(part["area"]), float(part["energy"])
        e_gb = gb_energy(energy, len(atoms), e_coh, area)
        atoms_list.append(atoms)
        labels.append(f"{element} {BOUNDARIES[task.boundary].label} [n]={task.kept / per_plane:.2f}")
        distances.append(boundary_distance(atoms.positions, part["boundary_z"], float(atoms.cell.lengths()[2])))
        grains.append(part["grain"])
        for name, value in (
            ("energy", energy),
            ("gb_energy", e_gb),
            ("gb_energy_ev_a2", e_gb / EV_PER_A2_IN_J_PER_M2),
            ("cohesive_energy", e_coh),
            ("lattice_a", a),
            ("boundary_index", task.boundary_index),
            ("n_boundary_atoms", len(atoms) - int(part["n_atoms_perfect"])),
            ("n_atoms_perfect", int(part["n_atoms_perfect"])),
            ("atoms_per_plane", per_plane),
            ("plane_fraction", -removed / per_plane),
            ("n_fraction", task.kept / per_plane),
            ("boundary_z", part["boundary_z"]),
            ("boundary_area", area),
            ("translation", part["translation"]),
            ("relax_steps", int(part["relax_steps"])),
            ("relax_fmax", float(part["relax_fmax"])),
            ("stress_zz", float(part["stress_zz"])),
            ("anneal_temperature", float(part["temperature"])),
            ("anneal_steps", int(part["md_steps"])),
            ("build_index", task.build_index),
            ("seconds", float(part["seconds"])),
        ):
            props.setdefault(name, []).append(value)
    ints = {
        "boundary_index",
        "n_boundary_atoms",
        "n_atoms_perfect",
        "atoms_per_plane",
        "relax_steps",
        "anneal_steps",
        "build_index",
    }
    properties = {k: np.asarray(v, dtype=np.int64 if k in ints else np.float64) for k, v in props.items()}
    shard_text = f"{shard[0]}/{shard[1]}"
    labels_b = [BOUNDARIES[b].label for b in boundaries]
    t_min, t_max = anneal.temperatures
    return DatasetRecords(
        atoms=atoms_list,
        labels=labels,
        properties=properties,
        atom_properties={"boundary_distance": np.concatenate(distances), "grain": np.concatenate(grains)},
        description=(
            f"annealed grain-boundary search: {element} (a = {a:.4f} Å) {', '.join(labels_b)}; "
            f"{len(finished)} of {len(tasks)} candidates (shard {shard_text}; {candidates} per boundary in the "
            f"whole search; {len(failed)} failed); [n] over a full boundary plane, random in-plane translations, "
            f"Langevin MD at {t_min:g}-{t_max:g} K for {anneal.md_steps[0]}-{anneal.md_steps[1]} steps of "
            f"{anneal.timestep:g} fs (grain cores held, z barostat), then normal relaxation with "
            f"{relaxer.potential_name} (fmax {relaxer.fmax} eV/Å); gb_energy = (E - N E_coh)/(2A) in J/m²; seed {seed}"
        ),
        metadata={
            "builder": "grain-boundary-search",
            "element": element,
            "lattice": lattice_of(element),
            "boundaries": list(boundaries),
            "boundary_labels": labels_b,
            "calculator": relaxer.calculator,
            "potential": relaxer.potential_name,
            "potential_file": str(relaxer.potential_path()),
            "fmax": float(relaxer.fmax),
            "max_steps": int(relaxer.max_steps),
            "relax_cell": relaxer.cell,
            "candidates": int(candidates),
            "fractions": np.asarray(fractions if fractions is not None else [], dtype=np.float64),
            "anneal": json.dumps(asdict(anneal), sort_keys=True),
            "failed": int(len(failed)),
            "cohesive_energy": float(e_coh),
            "lattice_a": float(a),
            "shard": shard_text,
            "seed": int(seed),
        },
    )
