"""Tests of the periodic 3D U-Net: shapes, periodicity (shift equivariance, tiling), conditioning."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_gcd.nets import PeriodicUNet3d


def _randomised(net: PeriodicUNet3d, seed: int = 0, std: float = 0.05) -> PeriodicUNet3d:
    """Perturb every parameter: the zero-initialised output and residual convs would make the net output
    zero (and every symmetry test trivially true) straight after construction."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(std * torch.randn(p.shape, generator=g))
    return net.eval()


def _small_net(**kw) -> PeriodicUNet3d:
    args = dict(in_channels=2, base_channels=8, channel_mults=(1, 2, 2), attention=True, attention_heads=2)
    args.update(kw)
    return _randomised(PeriodicUNet3d(**args))


def _close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-5) -> bool:
    """float32 closeness relative to the output's scale (1e-5 absolute for O(1) outputs)."""
    scale = max(1.0, b.abs().max().item())
    return (a - b).abs().max().item() <= tol * scale


def test_every_convolution_is_circular():
    net = PeriodicUNet3d(3, base_channels=8, channel_mults=(1, 2))
    convs = [m for m in net.modules() if isinstance(m, nn.Conv3d)]
    assert convs
    for conv in convs:
        assert conv.padding_mode == "circular" or conv.kernel_size == (1, 1, 1), conv


@pytest.mark.parametrize("axis", [2, 3, 4])
def test_commutes_with_circular_shifts(axis):
    net = _small_net(cond_dim=3)
    f = net.downsampling_factor
    assert f == 4
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 2, 16, 16, 16, generator=g)
    t = torch.tensor([0.1, 0.7])
    cond = torch.randn(2, 3, generator=g)
    with torch.no_grad():
        y = net(x, t, cond)
        assert y.abs().max() > 1e-2  # not the trivial zero output
        for shift in (f, 2 * f, 3 * f):
            y_shifted = net(torch.roll(x, shift, dims=axis), t, cond)
            assert _close(y_shifted, torch.roll(y, shift, dims=axis))


def test_tiled_input_gives_tiled_output():
    """No edges: a 2×1×2 supercell of a periodic grid is the same crystal, so the output must tile too."""
    net = _small_net()
    x = torch.randn(1, 2, 8, 8, 8, generator=torch.Generator().manual_seed(2))
    t = torch.tensor([0.5])
    with torch.no_grad():
        y = net(x, t)
        y_big = net(x.repeat(1, 1, 2, 1, 2), t)
    assert y_big.shape == (1, 2, 16, 8, 16)
    assert _close(y_big, y.repeat(1, 1, 2, 1, 2))


@pytest.mark.parametrize("grid", [(8, 8, 8), (16, 16, 16), (16, 16, 32)])
def test_output_shapes(grid):
    net = _small_net(out_channels=3)
    x = torch.randn(2, 2, *grid)
    with torch.no_grad():
        y = net(x, torch.rand(2))
    assert y.shape == (2, 3, *grid)
    assert y.dtype == torch.float32
    assert torch.isfinite(y).all()


def test_net_for_16_runs_on_larger_grids():
    net = _small_net()
    with torch.no_grad():
        assert net(torch.randn(1, 2, 16, 16, 16), torch.rand(1)).shape == (1, 2, 16, 16, 16)
        assert net(torch.randn(1, 2, 32, 32, 32), torch.rand(1)).shape == (1, 2, 32, 32, 32)


def test_zero_init_output_and_scalar_time():
    net = PeriodicUNet3d(1, base_channels=8, channel_mults=(1, 2), attention=False)
    y = net(torch.randn(2, 1, 8, 8, 8), torch.tensor(0.3))
    assert y.shape == (2, 1, 8, 8, 8)
    assert torch.count_nonzero(y) == 0


def test_grid_not_divisible_raises():
    net = _small_net()
    assert net.downsampling_factor == 4
    with pytest.raises(ValueError, match=r"\(16, 10, 16\).*downsampling factor 4"):
        net(torch.randn(1, 2, 16, 10, 16), torch.rand(1))


def test_bad_inputs_raise():
    net = _small_net()
    with pytest.raises(ValueError, match="input channels"):
        net(torch.randn(1, 3, 8, 8, 8), torch.rand(1))
    with pytest.raises(ValueError, match="unconditional"):
        net(torch.randn(1, 2, 8, 8, 8), torch.rand(1), cond=torch.randn(1, 4))
    with pytest.raises(ValueError, match="attention_heads"):
        PeriodicUNet3d(1, base_channels=6, channel_mults=(1,), attention_heads=4)


def test_cond_keep_false_equals_unconditional():
    net = _small_net(cond_dim=5)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 2, 8, 8, 8, generator=g)
    t = torch.rand(3, generator=g)
    cond = torch.randn(3, 5, generator=g)
    with torch.no_grad():
        y_none = net(x, t, None)
        y_drop = net(x, t, cond, torch.zeros(3, dtype=torch.bool))
        y_cond = net(x, t, cond, torch.ones(3, dtype=torch.bool))
        y_mixed = net(x, t, cond, torch.tensor([True, False, True]))
    assert torch.equal(y_none, y_drop)
    assert not torch.allclose(y_cond, y_none)
    assert torch.allclose(y_mixed[1], y_none[1], atol=1e-6)
    assert torch.allclose(y_mixed[0], y_cond[0], atol=1e-6)


def test_backward_and_time_dependence():
    net = _small_net(attention=False, channel_mults=(1, 2))
    net.train()
    x = torch.randn(2, 2, 8, 8, 8)
    y0 = net(x, torch.zeros(2))
    y1 = net(x, torch.ones(2))
    assert not torch.allclose(y0, y1)
    (y0.square().mean() + y1.square().mean()).backward()
    assert all(p.grad is not None for p in net.parameters() if p.requires_grad)


def test_double_precision_network():
    """A .double() U-Net takes float64 grids (the time features follow the network's dtype)."""
    net = PeriodicUNet3d(2, base_channels=8, channel_mults=(1, 2), attention=False).double()
    x = torch.randn(2, 2, 8, 8, 8, dtype=torch.float64)
    out = net(x, torch.tensor([0.1, 0.9], dtype=torch.float64))
    assert out.dtype == torch.float64 and out.shape == x.shape


def test_geometry_input_is_required_used_and_never_dropped():
    """geometry_dim > 0: every call must pass a (B, geometry_dim) geometry, which changes the output also
    where the condition is dropped (classifier-free guidance drops the spectrum, not the voxel spacing)."""
    net = _small_net(cond_dim=4, geometry_dim=3, attention=False, channel_mults=(1, 2))
    g = torch.Generator().manual_seed(5)
    x, t, cond = torch.randn(2, 2, 8, 8, 8, generator=g), torch.rand(2, generator=g), torch.randn(2, 4, generator=g)
    small, large = torch.zeros(2, 3), torch.ones(2, 3)
    drop = torch.zeros(2, dtype=torch.bool)
    with torch.no_grad():
        assert not torch.allclose(net(x, t, cond, geometry=small), net(x, t, cond, geometry=large))
        assert not torch.allclose(net(x, t, cond, drop, geometry=small), net(x, t, cond, drop, geometry=large))
        assert torch.equal(net(x, t, None, geometry=small), net(x, t, cond, drop, geometry=small))
    with pytest.raises(ValueError, match=r"needs a \(2, 3\) geometry, got None"):
        net(x, t, cond)
    with pytest.raises(ValueError, match=r"got \(2, 2\)"):
        net(x, t, cond, geometry=torch.zeros(2, 2))
    with pytest.raises(ValueError, match="geometry_dim=0"):
        _small_net()(x, t, geometry=small)
    with pytest.raises(ValueError, match="geometry_dim must be >= 0"):
        PeriodicUNet3d(2, geometry_dim=-1)
