"""Symmetries of the periodic message-passing denoiser."""

from __future__ import annotations

import pytest
import torch

from lightning_gcd import periodic_vesin
from lightning_gcd.nets.mpnn import PeriodicMPNN, mlp, pair_mlp


def random_rotation(gen: torch.Generator) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(3, 3, generator=gen, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))[None, :]
    if torch.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


@pytest.fixture(scope="module")
def setup():
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    net = PeriodicMPNN(hidden=24, layers=2, cutoff=3.0, num_rbf=8, cond_dim=4).double().eval()
    b, n = 3, 10
    frac = torch.rand(b, n, 3, generator=gen, dtype=torch.float64)
    numbers = torch.randint(1, 30, (b, n), generator=gen)
    mask = torch.ones(b, n, dtype=torch.bool)
    mask[1, 7:] = False
    mask[2, 3:] = False  # a small structure in a small cell
    numbers = numbers * mask
    cell = torch.stack(
        [
            torch.diag(torch.tensor([5.0, 5.5, 6.0])),
            torch.tensor([[5.0, 0.0, 0.0], [1.5, 4.5, 0.0], [-1.0, 1.2, 5.0]]),  # triclinic
            torch.tensor([[2.8, 0.0, 0.0], [0.5, 2.6, 0.0], [0.3, 0.4, 3.0]]),  # cutoff > half width
        ]
    ).double()
    t = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    cond = torch.randn(b, 4, generator=gen, dtype=torch.float64)
    return net, frac, numbers, mask, cell, t, cond


def run(net, frac, numbers, mask, cell, t, cond):
    with torch.no_grad():
        return net(frac, numbers, mask, cell, t, cond=cond)


def test_shape_nonzero_and_zero_at_padding(setup) -> None:
    net, frac, numbers, mask, cell, t, cond = setup
    out = run(net, frac, numbers, mask, cell, t, cond)
    assert out.shape == frac.shape and torch.isfinite(out).all()
    assert torch.all(out[~mask] == 0)
    assert out[mask].abs().max() > 1e-6
    # garbage coordinates at padding do not leak into real atoms
    frac2 = frac.clone()
    frac2[~mask] = torch.rand(int((~mask).sum()), 3, dtype=torch.float64)
    torch.testing.assert_close(run(net, frac2, numbers, mask, cell, t, cond), out)


def test_translation_invariance_with_wraparound(setup) -> None:
    net, frac, numbers, mask, cell, t, cond = setup
    out = run(net, frac, numbers, mask, cell, t, cond)
    shift = torch.tensor([0.37, -0.81, 0.55], dtype=torch.float64)
    moved = torch.remainder(frac + shift, 1.0)
    assert ((frac + shift >= 1) | (frac + shift < 0))[mask].any()  # some atoms crossed the boundary
    torch.testing.assert_close(run(net, moved, numbers, mask, cell, t, cond), out, atol=1e-10, rtol=1e-8)
    # unwrapped coordinates give the same result too
    torch.testing.assert_close(run(net, frac + shift, numbers, mask, cell, t, cond), out, atol=1e-10, rtol=1e-8)


def test_permutation_equivariance(setup) -> None:
    net, frac, numbers, mask, cell, t, cond = setup
    out = run(net, frac, numbers, mask, cell, t, cond)
    perm = torch.randperm(frac.shape[1], generator=torch.Generator().manual_seed(3))
    out_p = run(net, frac[:, perm], numbers[:, perm], mask[:, perm], cell, t, cond)
    torch.testing.assert_close(out_p, out[:, perm], atol=1e-10, rtol=1e-8)


def test_rotation_equivariance(setup) -> None:
    net, frac, numbers, mask, cell, t, cond = setup
    out = run(net, frac, numbers, mask, cell, t, cond)
    rot = random_rotation(torch.Generator().manual_seed(5))
    # rotating positions and lattice vectors (rows) leaves fractional coordinates unchanged
    cell_r = cell @ rot.T
    out_r = run(net, frac, numbers, mask, cell_r, t, cond)
    torch.testing.assert_close(out_r, out @ rot.T, atol=1e-10, rtol=1e-8)


def test_lattice_basis_invariance(setup) -> None:
    net, frac, numbers, mask, cell, t, cond = setup
    out = run(net, frac, numbers, mask, cell, t, cond)
    # same lattice, different basis: a' = a + b (unimodular transform M); frac' = frac @ M^-1
    m = torch.tensor([[1.0, 1.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    cell2 = m @ cell
    frac2 = frac @ torch.linalg.inv(m)
    torch.testing.assert_close(run(net, frac2, numbers, mask, cell2, t, cond), out, atol=1e-10, rtol=1e-8)


def test_condition_and_gradients(setup) -> None:
    net, frac, numbers, mask, cell, t, cond = setup
    out_c = run(net, frac, numbers, mask, cell, t, cond)
    out_u = run(net, frac, numbers, mask, cell, t, None)
    keep = torch.tensor([False, False, False])
    with torch.no_grad():
        out_dropped = net(frac, numbers, mask, cell, t, cond=cond, cond_keep=keep)
    torch.testing.assert_close(out_dropped, out_u)
    assert not torch.allclose(out_c, out_u)
    x = frac.clone().requires_grad_(True)
    net(x, numbers, mask, cell, t, cond=cond).pow(2).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    unconditional = PeriodicMPNN(hidden=8, layers=1, num_rbf=4)
    with pytest.raises(ValueError):
        unconditional(frac.float(), numbers, mask, cell.float(), t.float(), cond=cond.float())


@pytest.mark.skipif(not periodic_vesin.available(), reason="the vesin extra is not installed")
def test_vesin_graph_gives_the_same_output(setup) -> None:
    """``graph_method="vesin"`` builds the same radius graph (sorted the same way) as ``auto``, so the network's
    output agrees to rounding, padding and the cell narrower than twice the cutoff included."""
    net, frac, numbers, mask, cell, t, cond = setup
    expected = run(net, frac, numbers, mask, cell, t, cond)
    net.graph_method = "vesin"
    try:
        got = run(net, frac, numbers, mask, cell, t, cond)
    finally:
        net.graph_method = "auto"
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)


def test_split_first_layer_edge_mlp_equals_the_mlp_of_concatenated_edge_inputs() -> None:
    """pair_mlp computes the first linear layer per atom, not per edge: the same function of the same weights."""
    gen = torch.Generator().manual_seed(3)
    torch.manual_seed(3)
    net = mlp(2 * 16 + 8, 16, 5).double()
    h = torch.randn(12, 16, generator=gen, dtype=torch.float64)
    src, dst = torch.randint(0, 12, (40,), generator=gen), torch.randint(0, 12, (40,), generator=gen)
    rbf = torch.rand(40, 8, generator=gen, dtype=torch.float64)
    expected = net(torch.cat([h[src], h[dst], rbf], dim=-1))
    torch.testing.assert_close(pair_mlp(net, h, src, dst, rbf), expected, rtol=1e-12, atol=1e-12)
