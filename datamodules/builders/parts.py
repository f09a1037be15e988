"""Resumable, shardable builds: one finished item per file, reused on a rerun, split over cluster jobs.

The long builders (``amorphous_carbon``, ``gb_search``) share this design:

* every finished item (a structure, a search candidate) is written at once, atomically
  (``lightning_gcd.io.atomic_path``), to its own ``.npz`` file in ``<out>.parts/``, with a ``key``: the JSON
  text of every setting the item was computed with (``write_part``);
* a rerun reads a part back only when its key equals the key of the item it would compute now
  (``read_part``); a missing, damaged or differently computed part is recomputed, so a killed build loses
  only the items in flight and a build with changed settings recomputes everything;
* ``--shard I/N`` (``parse_shard``) builds only the items whose index is I mod N; the shard files are joined
  with ``gcd data merge`` (``--sort-by build_index`` restores the unsharded order);
* ``parts_folder`` opens the folder (a temporary one when the caller keeps none) and ``compute_parts``
  computes the missing items, in this process for one worker or over fresh (spawned) processes
  (``run_pool``), with a progress bar.
"""

from __future__ import annotations

import multiprocessing
import os
import re
import tempfile
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from lightning_gcd.errors import GcdError
from lightning_gcd.io import atomic_path


def available_cores() -> int:
    """Cores this process may run on (the CPU affinity, e.g. a SLURM allocation), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def parse_shard(shard: str | Sequence[int] | None) -> tuple[int, int]:
    """``"i/n"`` (or ``(i, n)``) -> (i, n) with 0 <= i < n; None -> (0, 1)."""
    if shard is None:
        return 0, 1
    if isinstance(shard, str):
        try:
            i_text, n_text = shard.split("/")
            i, n = int(i_text), int(n_text)
        except ValueError:
            raise GcdError(f"--shard expects I/N (e.g. 0/4), got '{shard}'") from None
    else:
        i, n = (int(v) for v in shard)
    if n < 1 or not 0 <= i < n:
        raise GcdError(f"--shard {i}/{n}: need 0 <= I < N")
    return i, n


def write_part(path: str | Path, key: str, **arrays: Any) -> Path:
    """``arrays`` and ``key`` (the settings, as text) to the ``.npz`` file ``path``, atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:  # the temporary name ends in .npz, so np.savez adds no suffix
        np.savez(tmp, key=np.array(key), **arrays)
    return path


def remove_stale_temporaries(parts_dir: str | Path) -> int:
    """Delete the half-written temporaries (``.<name>.tmp<pid>.npz``) that a build killed mid-write left in
    ``parts_dir``, those of processes no longer running; returns how many. A live process's are kept."""
    removed = 0
    for tmp in Path(parts_dir).glob(".*.tmp*"):
        match = re.search(r"\.tmp(\d+)", tmp.name)
        if match is None or _alive(int(match.group(1))):
            continue
        tmp.unlink(missing_ok=True)
        removed += 1
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def read_part(path: str | Path, key: str) -> dict[str, Any] | None:
    """The arrays of the part ``path`` when it exists and was computed with settings ``key``, else None
    (also for a damaged file: it is recomputed)."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        with np.load(path) as data:
            if str(data["key"]) != key:
                return None
            return {name: data[name] for name in data.files}
    except Exception:  # noqa: BLE001 - a damaged part is recomputed
        return None


def run_pool(
    function: Callable[[Any], Any],
    tasks: Sequence[Any],
    workers: int,
    on_done: Callable[[Any], None],
    initializer: Callable[[], None] | None = None,
) -> None:
    """``function(task)`` for every task over ``workers`` fresh (spawned) processes, ``on_done(result)`` in this
    process as each finishes; the first failure stops the build.

    Spawned, not forked: no MPI or HDF5 state crosses a fork. ``function`` and ``initializer`` must be
    module-level functions. A worker that dies (killed, out of memory) raises ``GcdError`` instead of hanging.
    Scripts that call a builder with several workers need the usual ``if __name__ == "__main__":`` guard, as
    any spawn-based multiprocessing does.
    """
    context = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=initializer)
    try:
        futures = [pool.submit(function, task) for task in tasks]
        for future in as_completed(futures):
            on_done(future.result())
    except BrokenProcessPool:
        raise GcdError(
            "a build worker process died (killed or out of memory); finished items are kept, rerun to resume"
        ) from None
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


@contextmanager
def parts_folder(parts_dir: str | Path | None, prefix: str) -> Iterator[Path]:
    """The folder of a build's finished parts: ``parts_dir`` (created, a killed build's half-written part
    removed) or, when None, a temporary folder named ``prefix…`` that is removed on exit (no resume)."""
    if parts_dir is None:
        with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
            yield Path(tmp)
        return
    folder = Path(parts_dir)
    folder.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(folder)
    yield folder


@contextmanager
def _one_openmp_thread() -> Iterator[None]:
    """``OMP_NUM_THREADS=1`` while inside, as in the pool's workers: one item per core, not one per machine."""
    saved = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = saved


def compute_parts(
    compute: Callable[[Any], Any],
    todo: Sequence[Any],
    done: int,
    workers: int,
    *,
    desc: str,
    unit: str,
    progress: bool = True,
    initializer: Callable[[], None] | None = None,
) -> None:
    """``compute(task)`` (which writes the task's part) for every task of ``todo`` under a progress bar that
    starts at ``done`` items already finished: in this process when one worker suffices, otherwise over
    ``min(workers, len(todo))`` spawned processes (``run_pool``, with ``initializer``)."""
    workers = min(int(workers), len(todo))
    with tqdm(
        total=done + len(todo), initial=done, desc=desc, unit=unit, disable=not progress, dynamic_ncols=True
    ) as bar:
        if workers == 1:
            with _one_openmp_thread():
                for task in todo:
                    compute(task)
                    bar.update(1)
        elif workers > 1:
            run_pool(compute, todo, workers, lambda _: bar.update(1), initializer=initializer)
