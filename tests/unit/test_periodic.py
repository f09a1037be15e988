"""Periodic neighbour search against ASE and a brute-force search, including small and triclinic cells."""

from __future__ import annotations

import itertools
from collections import Counter

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.neighborlist import neighbor_list

from lightning_gcd import periodic_vesin
from lightning_gcd.periodic import (
    minimum_image,
    neighbor_pairs,
    neighbor_search,
    perpendicular_widths,
    radius_graph,
)

needs_vesin = pytest.mark.skipif(not periodic_vesin.available(), reason="the vesin extra is not installed")
METHODS = ["dense", "cell_list", "compiled", pytest.param("vesin", marks=needs_vesin)]


def random_cell(rng: np.random.Generator, kind: str, scale: tuple[float, float]) -> np.ndarray:
    lengths = rng.uniform(*scale, size=3)
    cell = np.diag(lengths)
    if kind == "triclinic":
        # strong shear: off-diagonal tilts up to ~60% of the lengths
        cell[1, 0] = rng.uniform(-0.6, 0.6) * lengths[0]
        cell[2, 0] = rng.uniform(-0.6, 0.6) * lengths[0]
        cell[2, 1] = rng.uniform(-0.6, 0.6) * lengths[1]
    return cell


def ase_pairs(pos: np.ndarray, cell: np.ndarray, cutoff: float):
    atoms = Atoms(numbers=np.full(len(pos), 6), positions=pos, cell=cell, pbc=True)
    return neighbor_list("ijdDS", atoms, cutoff, self_interaction=False)


def brute_force(frac: np.ndarray, cell: np.ndarray, cutoff: float):
    """All (i, j, S) with |r_j + S cell - r_i| < cutoff, over a generous range of shifts."""
    widths = perpendicular_widths(torch.as_tensor(cell)[None])[0].numpy()
    reach = np.ceil(cutoff / widths).astype(int) + 2  # frac may lie in [-0.5, 1.5)
    pos = frac @ cell
    out = []
    ranges = [range(-r, r + 1) for r in reach]
    for s in itertools.product(*ranges):
        vec = pos[None, :, :] + np.array(s) @ cell - pos[:, None, :]
        d = np.linalg.norm(vec, axis=-1)
        for i, j in zip(*np.nonzero(d < cutoff), strict=True):
            if i == j and s == (0, 0, 0):
                continue
            out.append((int(i), int(j), tuple(int(x) for x in s)))
    return Counter(out)


def as_counter(i, j, s) -> Counter:
    return Counter(
        zip(np.asarray(i).tolist(), np.asarray(j).tolist(), [tuple(x) for x in np.asarray(s).tolist()], strict=True)
    )


CASES = [
    # (kind, cell length range, n atoms, cutoff): small cells have cutoff > half (or > whole) width
    ("orthorhombic", (6.0, 10.0), 30, 3.0),
    ("triclinic", (6.0, 10.0), 30, 3.0),
    ("orthorhombic", (2.5, 4.0), 5, 3.0),
    ("triclinic", (2.5, 4.0), 5, 3.0),
    ("orthorhombic", (1.5, 2.5), 2, 4.0),
    ("triclinic", (1.8, 3.0), 3, 4.5),
    ("orthorhombic", (11.0, 13.0), 120, 3.5),  # several bins per axis in the cell list
    ("triclinic", (12.0, 14.0), 120, 3.0),
]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("case", range(len(CASES)))
def test_neighbor_pairs_match_ase_and_brute_force(case: int, method: str) -> None:
    kind, scale, n, cutoff = CASES[case]
    rng = np.random.default_rng(100 + case)
    cell = random_cell(rng, kind, scale)
    frac = rng.uniform(-0.5, 1.5, size=(n, 3))  # unwrapped on purpose: shifts are relative to input
    pos = frac @ cell
    i_a, j_a, d_a, d_vec_a, s_a = ase_pairs(pos, cell, cutoff)
    i, j, d, vec, s = neighbor_pairs(pos, cell, cutoff, method=method, return_shifts=True)
    assert isinstance(i, np.ndarray) and i.dtype == np.int64 and d.dtype == np.float64
    assert as_counter(i, j, s) == as_counter(i_a, j_a, s_a)
    if n <= 30:
        assert as_counter(i, j, s) == brute_force(frac, cell, cutoff)
    np.testing.assert_allclose(np.sort(d), np.sort(d_a), atol=1e-9)
    np.testing.assert_allclose(vec, pos[j] + s @ cell - pos[i], atol=1e-9)
    np.testing.assert_allclose(d, np.linalg.norm(vec, axis=1), atol=1e-12)
    assert np.all(np.diff(i) >= 0)  # sorted by i
    if scale[1] < 2 * cutoff:
        # small cell: some pair must appear with several different shifts
        assert max(Counter(zip(i.tolist(), j.tolist(), strict=True)).values()) > 1


def test_single_atom_sees_its_own_images() -> None:
    cell = np.eye(3) * 2.0
    i, j, d, _ = neighbor_pairs(np.zeros((1, 3)), cell, 3.0)
    assert np.all(i == 0) and np.all(j == 0)
    assert len(d) == 6 + 12  # 6 at 2 Å, 12 at 2.83 Å; 8 at 3.46 Å are beyond the cutoff
    np.testing.assert_allclose(np.sort(d)[:6], 2.0)


@pytest.mark.parametrize("method", METHODS)
def test_radius_graph_padded_batch(method: str) -> None:
    rng = np.random.default_rng(7)
    specs = [
        ("orthorhombic", (7.0, 9.0), 20),
        ("triclinic", (2.5, 3.5), 3),
        ("triclinic", (8.0, 10.0), 37),
        ("orthorhombic", (4.0, 5.0), 0),
    ]
    n_max = 40
    b = len(specs)
    frac = torch.zeros(b, n_max, 3, dtype=torch.float64)
    mask = torch.zeros(b, n_max, dtype=torch.bool)
    cell = torch.zeros(b, 3, 3, dtype=torch.float64)
    for k, (kind, scale, n) in enumerate(specs):
        cell[k] = torch.as_tensor(random_cell(rng, kind, scale))
        frac[k, :n] = torch.as_tensor(rng.uniform(0, 1, size=(n, 3)))
        # padding slots carry garbage coordinates that must be ignored
        frac[k, n:] = torch.as_tensor(rng.uniform(0, 1, size=(n_max - n, 3)))
        mask[k, :n] = True
    cutoff = 3.2
    g = radius_graph(frac, cell, mask, cutoff, method=method)
    assert torch.all(mask.reshape(-1)[g.src]) and torch.all(mask.reshape(-1)[g.dst])
    assert torch.equal(g.batch, g.src // n_max) and torch.equal(g.batch, g.dst // n_max)
    assert torch.all(g.distances < cutoff)
    key = g.src * b * n_max + g.dst
    assert torch.all(key[1:] >= key[:-1])  # sorted by (src, dst)
    for k, (_, _, n) in enumerate(specs):
        sel = g.batch == k
        pos = (frac[k, :n] @ cell[k]).numpy()
        i_a, j_a, _, _, s_a = ase_pairs(pos, cell[k].numpy(), cutoff) if n else ([], [], [], [], np.zeros((0, 3)))
        got = as_counter((g.src[sel] - k * n_max).numpy(), (g.dst[sel] - k * n_max).numpy(), g.shifts[sel].numpy())
        assert got == as_counter(i_a, j_a, s_a)


def test_methods_agree_float32_and_auto() -> None:
    torch.manual_seed(0)
    b, n = 3, 80
    frac = torch.rand(b, n, 3)
    cell = torch.diag_embed(torch.full((b, 3), 10.0)) + 0.8 * torch.randn(b, 3, 3)
    mask = torch.rand(b, n) > 0.2
    graphs = [radius_graph(frac, cell, mask, 3.0, method=m) for m in ("dense", "cell_list", "auto")]
    for g in graphs[1:]:
        assert torch.equal(g.src, graphs[0].src) and torch.equal(g.dst, graphs[0].dst)
        assert torch.equal(g.shifts, graphs[0].shifts)  # same order, shifts included
        assert torch.allclose(g.distances, graphs[0].distances, atol=1e-5)


def test_cell_list_sparse_huge_cell_is_cheap() -> None:
    # 5 atoms in a 1000 Å box: bins are capped at the atom count, not (1000/3)^3
    frac = torch.rand(1, 5, 3, dtype=torch.float64) * 0.004
    cell = torch.eye(3, dtype=torch.float64)[None] * 1000.0
    g = radius_graph(frac, cell, None, 3.0, method="cell_list")
    ref = radius_graph(frac, cell, None, 3.0, method="dense")
    assert as_counter(g.src, g.dst, g.shifts) == as_counter(ref.src, ref.dst, ref.shifts)


@pytest.mark.parametrize("method", METHODS)
def test_gradients_flow(method: str) -> None:
    torch.manual_seed(1)
    frac = torch.rand(2, 6, 3, dtype=torch.float64, requires_grad=True)
    cell = (torch.eye(3, dtype=torch.float64) * 3.0 + 0.3 * torch.randn(3, 3, dtype=torch.float64))[None].repeat(
        2, 1, 1
    )
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[1, 4:] = False

    def f(x):
        g = radius_graph(x, cell, mask, 2.9, method=method)
        return g.distances, g.vectors

    torch.autograd.gradcheck(f, (frac,))
    # neighbor_pairs with torch positions is differentiable too
    pos = (frac.detach()[0] @ cell[0]).requires_grad_(True)
    _, _, d, _ = neighbor_pairs(pos, cell[0], 2.9, method=method)
    d.sum().backward()
    assert pos.grad is not None and torch.isfinite(pos.grad).all() and pos.grad.abs().sum() > 0


def test_minimum_image() -> None:
    cell = torch.diag(torch.tensor([4.0, 5.0, 6.0]))
    dfrac = torch.tensor([[0.9, -0.7, 0.2], [0.5, -0.5, 0.0]])
    out = minimum_image(dfrac, cell)
    torch.testing.assert_close(out, torch.tensor([[-0.4, 1.5, 1.2], [-2.0, -2.5, 0.0]]))
    # batched cell broadcasting
    out_b = minimum_image(dfrac[None], cell[None, None])
    torch.testing.assert_close(out_b[0], out)


def test_bad_inputs() -> None:
    with pytest.raises(ValueError):
        radius_graph(torch.rand(1, 3, 3), torch.eye(3)[None], None, 3.0, method="octree")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        radius_graph(torch.rand(1, 3, 3), torch.zeros(1, 3, 3), None, 3.0)
    with pytest.raises(ValueError):
        radius_graph(torch.rand(1, 3, 3), torch.eye(3)[None], None, -1.0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu() -> None:
    torch.manual_seed(0)
    frac = torch.rand(2, 100, 3)
    cell = torch.eye(3)[None].repeat(2, 1, 1) * 9.0
    cell[1, 2, 0] = 2.0
    mask = torch.ones(2, 100, dtype=torch.bool)
    for method in [
        m for m in ("dense", "cell_list", "compiled", "vesin") if m != "vesin" or periodic_vesin.available()
    ]:
        g_cpu = radius_graph(frac, cell, mask, 3.0, method=method)
        g_gpu = radius_graph(frac.cuda(), cell.cuda(), mask.cuda(), 3.0, method=method)
        assert as_counter(g_cpu.src, g_cpu.dst, g_cpu.shifts) == as_counter(
            g_gpu.src.cpu(), g_gpu.dst.cpu(), g_gpu.shifts.cpu()
        )


# --------------------------------------------------------------------------------------------------
# The neighbour search behind the metrics' speed: half lists, the column sweep with trimmed windows,
# unsorted output.
def _ase_counter(pos: np.ndarray, cell: np.ndarray, cutoff: float):
    from collections import Counter

    from ase import Atoms
    from ase.neighborlist import neighbor_list

    i, j, s = neighbor_list(
        "ijS", Atoms(numbers=np.full(len(pos), 6), positions=pos, cell=cell, pbc=True), cutoff, self_interaction=False
    )
    return Counter(zip(i.tolist(), j.tolist(), map(tuple, s.tolist()), strict=True))


@pytest.mark.parametrize("trim", [False, True])
def test_half_lists_and_sweep_match_ase(trim: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    from collections import Counter

    import torch

    import lightning_gcd.periodic as periodic

    if trim:  # trim every window to the cutoff sphere (by default only long windows are trimmed)
        monkeypatch.setattr(periodic, "_SWEEP_TRIM_MIN_WINDOW", 0.0)
    rng = np.random.default_rng(11)
    used_sweep = 0
    for case in range(20):
        lengths = rng.uniform(4.0, 15.0, 3)
        if case % 4 == 1:
            lengths[case % 3] = rng.uniform(1.5, 2.5)  # an axis thinner than the cutoff
        cell = np.diag(lengths)
        if case % 2:  # strongly sheared
            cell[1, 0], cell[2, 0], cell[2, 1] = rng.uniform(-0.6, 0.6, 3) * lengths[[0, 0, 1]]
        n = int(rng.integers(1, 70))
        cutoff = float(rng.uniform(1.0, 4.0))
        frac = rng.uniform(-0.5, 1.5, (n, 3))  # unwrapped: shifts are relative to the input
        if case % 5 == 0:
            frac[: n // 2, 0] = 0.0  # on a face
        pos = frac @ cell
        ref = _ase_counter(pos, cell, cutoff)
        ft, ct = torch.as_tensor(frac)[None], torch.as_tensor(cell)[None]
        used_sweep += int(periodic._sweep_applicable(periodic.perpendicular_widths(ct), cutoff)[0])
        for method in ["cell_list", "dense", "compiled"] + (["vesin"] if periodic_vesin.available() else []):
            found = periodic.neighbor_search(ft, ct, None, cutoff, method=method, half=True, distances=True)
            half = Counter(zip(found.src.tolist(), found.dst.tolist(), map(tuple, found.shifts.tolist()), strict=True))
            mirror = Counter(
                zip(found.dst.tolist(), found.src.tolist(), map(tuple, (-found.shifts).tolist()), strict=True)
            )
            assert max(half.values(), default=1) == 1 and half + mirror == ref, (case, method)
            vec = torch.as_tensor(pos)[found.dst] + found.shifts.double() @ ct[0] - torch.as_tensor(pos)[found.src]
            torch.testing.assert_close(found.distances, vec.norm(dim=1), rtol=0, atol=1e-9)
            full = periodic.radius_graph(ft, ct, None, cutoff, method=method, sort=False)
            assert (
                Counter(zip(full.src.tolist(), full.dst.tolist(), map(tuple, full.shifts.tolist()), strict=True)) == ref
            )
    assert used_sweep >= 10


def test_sweep_padded_mixed_batch_equals_dense() -> None:
    import torch

    from lightning_gcd.periodic import neighbor_search, radius_graph

    torch.manual_seed(3)
    b, n = 5, 70
    frac = torch.rand(b, n, 3, dtype=torch.float64)
    cell = torch.diag_embed(
        torch.tensor(
            [[12.0, 9.0, 8.0], [3.0, 3.5, 4.0], [10.0, 10.0, 10.0], [14.0, 2.0, 9.0], [9.0, 9.0, 9.0]],
            dtype=torch.float64,
        )
    )
    cell[2, 1, 0] = 3.0  # one sheared cell
    mask = torch.rand(b, n) > 0.25
    mask[4] = False  # an empty structure
    for dtype in (torch.float64, torch.float32):
        sweep = radius_graph(frac.to(dtype), cell.to(dtype), mask, 3.3, method="cell_list")
        dense = radius_graph(frac.to(dtype), cell.to(dtype), mask, 3.3, method="dense")
        auto = radius_graph(frac.to(dtype), cell.to(dtype), mask, 3.3)  # sweep + dense on the small cells only
        for found in (sweep, auto):
            assert torch.equal(found.src, dense.src) and torch.equal(found.dst, dense.dst)
            assert torch.equal(found.shifts, dense.shifts)
    half = neighbor_search(frac, cell, mask, 3.3, half=True, shifts=False, distances=True)
    assert half.shifts is None and 2 * half.src.numel() == dense.src.numel()


def test_sweep_candidates_stay_close_to_pairs() -> None:
    """Guards the speed of g(r)/coordination: the sweep evaluates few candidates per pair found."""
    from ase.build import bulk

    import lightning_gcd.periodic as periodic
    from lightning_gcd.metrics._pairs import as_batch

    atoms = bulk("Cu", "fcc", a=3.61, cubic=True) * (8, 8, 8)  # 2048 atoms
    atoms.rattle(0.05, seed=0)
    batch = as_batch(atoms)
    for cutoff, max_ratio in ((6.0, 5.0), (3.0, 5.0)):
        periodic._SWEEP_STATS = {}
        try:
            pairs = periodic.neighbor_search(
                batch.frac_coords,
                batch.cell,
                batch.mask,
                cutoff,
                method="cell_list",
                half=True,
                shifts=False,
                distances=True,
            )
            stats = dict(periodic._SWEEP_STATS)
        finally:
            periodic._SWEEP_STATS = None
        assert stats["evaluated"] < max_ratio * pairs.distances.numel(), stats


@pytest.mark.parametrize("half", [False, True])
def test_compiled_search_random_batches_equal_dense(half: bool) -> None:
    """The compiled (numba) search, ``auto``'s choice on the CPU, against the dense search on padded batches of
    random triclinic cells, from much thinner than the cutoff to several bins wide."""
    _random_batches_equal_dense("compiled", half)


@needs_vesin
@pytest.mark.parametrize("half", [False, True])
def test_vesin_random_batches_equal_dense(half: bool) -> None:
    """vesin (``method="vesin"``) against the dense search on the same random batches."""
    _random_batches_equal_dense("vesin", half)


def _random_batches_equal_dense(method: str, half: bool) -> None:
    rng = np.random.default_rng(5)
    for trial in range(12):
        b, n = int(rng.integers(1, 4)), int(rng.integers(1, 40))
        cells = np.stack(
            [
                random_cell(
                    rng, "triclinic" if trial % 2 else "orthorhombic", (1.5, 4.0) if trial % 3 == 0 else (5.0, 12.0)
                )
                for _ in range(b)
            ]
        )
        frac = torch.as_tensor(rng.uniform(-1.5, 2.5, (b, n, 3)))
        cell = torch.as_tensor(cells)
        mask = torch.as_tensor(rng.random((b, n)) < 0.8)
        cutoff = float(rng.uniform(1.0, 5.0))
        got = neighbor_search(frac, cell, mask, cutoff, method=method, half=half, distances=True)
        ref = neighbor_search(frac, cell, mask, cutoff, method="dense", half=False, distances=True)
        edges = Counter(zip(got.src.tolist(), got.dst.tolist(), map(tuple, got.shifts.tolist()), strict=True))
        if half:  # each pair once: with its mirror image it is the full list
            assert max(edges.values(), default=1) == 1
            edges = edges + Counter(
                zip(got.dst.tolist(), got.src.tolist(), map(tuple, (-got.shifts).tolist()), strict=True)
            )
        assert edges == Counter(
            zip(ref.src.tolist(), ref.dst.tolist(), map(tuple, ref.shifts.tolist()), strict=True)
        ), trial
        pos = torch.bmm(frac, cell).reshape(-1, 3)
        vec = pos[got.dst] + (got.shifts.double()[:, None, :] @ cell[got.src // n])[:, 0] - pos[got.src]
        torch.testing.assert_close(got.distances, vec.norm(dim=1), rtol=0, atol=1e-9)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("half", [False, True])
def test_one_atom_cell_far_smaller_than_the_cutoff(method: str, half: bool) -> None:
    """1 atom in a 1.6 Å sc cell at 5.5 Å: the cutoff reaches three images each way along every axis; each
    pair is the atom with an image of itself, so each half-list shift must stand for its mirror image too."""
    frac = torch.full((1, 1, 3), 0.3, dtype=torch.float64)
    cell = torch.eye(3, dtype=torch.float64)[None] * 1.6
    found = neighbor_search(frac, cell, None, 5.5, method=method, half=half, distances=True)
    edges = as_counter(found.src, found.dst, found.shifts)
    if half:
        assert max(edges.values()) == 1
        edges = edges + as_counter(found.dst, found.src, -found.shifts)
    assert edges == brute_force(frac[0].numpy(), cell[0].numpy(), 5.5)
    assert max(abs(s) for key in edges for s in key[2]) == 3  # |S| up to ceil(5.5 / 1.6) - 1 images
    torch.testing.assert_close(found.distances, found.shifts.double().norm(dim=1) * 1.6, rtol=0, atol=1e-12)


@needs_vesin
def test_vesin_empty_and_padded_structures() -> None:
    """vesin takes one structure per call: structures without atoms are skipped, padding slots map back to
    the flat indices ``b * N + slot`` of the real atoms around them."""
    frac = torch.rand(3, 5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    cell = torch.eye(3, dtype=torch.float64)[None].repeat(3, 1, 1) * 3.0
    mask = torch.tensor([[False] * 5, [True, False, True, False, True], [False] * 5])
    got = neighbor_search(frac, cell, mask, 3.5, method="vesin", distances=True)
    ref = neighbor_search(frac, cell, mask, 3.5, method="dense", distances=True)
    assert as_counter(got.src, got.dst, got.shifts) == as_counter(ref.src, ref.dst, ref.shifts)
    assert set(got.src.tolist()) == {5, 7, 9}
    nothing = neighbor_search(frac, cell, torch.zeros(3, 5, dtype=torch.bool), 3.5, method="vesin", distances=True)
    assert nothing.src.numel() == 0 and nothing.shifts.shape == (0, 3) and nothing.distances.shape == (0,)


@needs_vesin
@pytest.mark.parametrize("half", [False, True])
def test_vesin_torch_path_equals_the_numpy_path(half: bool) -> None:
    """The vesin-torch path (what ``method="vesin"`` runs on GPUs) on CPU tensors: the same pairs, shifts and
    distances as the vesin path that CPU tensors take, padding and small cells included."""
    rng = np.random.default_rng(9)
    cell = torch.as_tensor(np.stack([random_cell(rng, "triclinic", (2.5, 7.0)) for _ in range(3)]))
    frac = torch.as_tensor(rng.uniform(0, 1, (3, 12, 3)))
    mask = torch.as_tensor(rng.random((3, 12)) < 0.7)
    mask[1] = False
    positions = torch.einsum("bni,bij->bnj", frac, cell)
    by_torch = periodic_vesin._search_torch(positions, cell, mask, 4.0, half, "ijSd")
    by_numpy = periodic_vesin._search_cpu(positions, cell, mask, 4.0, half, "ijSd")
    assert len(by_torch) == len(by_numpy) == 2  # the empty structure is skipped
    for got, ref in zip(by_torch, by_numpy, strict=True):
        assert got[0].dtype == got[1].dtype == got[2].dtype == torch.int64
        assert as_counter(got[0], got[1], got[2]) == as_counter(*ref[:3])
        np.testing.assert_allclose(np.sort(got[3].numpy()), np.sort(ref[3]), rtol=0, atol=1e-12)
