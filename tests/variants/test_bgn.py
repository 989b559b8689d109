"""BatchGroupNorm2d (docs/variants.md#bgn): equals BN at G = C, and a hand reference from the
formulas."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from normbench.variants.bgn import BatchGroupNorm2d

DT = torch.float64


def _randomise(layer: nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        layer.weight.copy_(torch.rand(layer.weight.shape, generator=g, dtype=DT) + 0.5)
        layer.bias.copy_(torch.randn(layer.bias.shape, generator=g, dtype=DT))


def test_g_equals_c_is_batchnorm_over_steps() -> None:
    torch.manual_seed(0)
    ours = BatchGroupNorm2d(6, num_groups=6, dtype=DT)
    ref = nn.BatchNorm2d(6, dtype=DT)
    _randomise(ours, 1)
    ref.load_state_dict({**ref.state_dict(), "weight": ours.weight, "bias": ours.bias})
    for _ in range(3):
        x = torch.randn(5, 6, 4, 3, dtype=DT) * 2 + 1
        x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
        w = torch.randn_like(x)
        y1, y2 = ours(x1), ref(x2)
        torch.testing.assert_close(y1, y2)
        (y1 * w).sum().backward()
        (y2 * w).sum().backward()
        torch.testing.assert_close(x1.grad, x2.grad)
    torch.testing.assert_close(ours.weight.grad, ref.weight.grad)
    torch.testing.assert_close(ours.bias.grad, ref.bias.grad)
    torch.testing.assert_close(ours.running_mean, ref.running_mean)
    torch.testing.assert_close(ours.running_var, ref.running_var)
    assert int(ours.num_batches_tracked) == int(ref.num_batches_tracked) == 3
    ours.eval(), ref.eval()
    x = torch.randn(2, 6, 4, 3, dtype=DT)
    torch.testing.assert_close(ours(x), ref(x))


def _reference_train(x, gamma, beta, groups, rm, rv, momentum, eps=1e-5):
    """docs/variants.md#bgn by hand: reshape (N, G, M), mean, biased var, running var unbiased
    (n = N*M)."""
    n, c, h, w = x.shape
    xr = x.reshape(n, groups, -1)
    mu = xr.mean(dim=(0, 2))
    var = ((xr - mu[None, :, None]) ** 2).mean(dim=(0, 2))
    xhat = (xr - mu[None, :, None]) / torch.sqrt(var[None, :, None] + eps)
    y = xhat.reshape(n, c, h, w) * gamma[None, :, None, None] + beta[None, :, None, None]
    count = n * xr.shape[2]
    rm = (1 - momentum) * rm + momentum * mu
    rv = (1 - momentum) * rv + momentum * var * count / (count - 1)
    return y, rm, rv


@pytest.mark.parametrize(
    ("channels", "groups", "hw", "spatial"),
    [(8, 2, (3, 4), False), (8, 4, (2, 2), False), (2, 8, (2, 2), True)],
)
def test_grouped_statistics_match_hand_reference(channels, groups, hw, spatial) -> None:
    torch.manual_seed(2)
    layer = BatchGroupNorm2d(
        channels, num_groups=groups, allow_spatial_groups=spatial, momentum=0.3, dtype=DT
    )
    _randomise(layer, 3)
    rm, rv = torch.zeros(groups, dtype=DT), torch.ones(groups, dtype=DT)
    for _ in range(3):
        x = torch.randn(4, channels, *hw, dtype=DT) * 3 - 1
        y_ref, rm, rv = _reference_train(x, layer.weight, layer.bias, groups, rm, rv, 0.3)
        torch.testing.assert_close(layer(x), y_ref)
    torch.testing.assert_close(layer.running_mean, rm)
    torch.testing.assert_close(layer.running_var, rv)
    assert int(layer.num_batches_tracked) == 3
    layer.eval()
    x = torch.randn(3, channels, *hw, dtype=DT)
    xr = x.reshape(3, groups, -1)
    xhat = (xr - rm[None, :, None]) / torch.sqrt(rv[None, :, None] + 1e-5)
    expected = (
        xhat.reshape(x.shape) * layer.weight[None, :, None, None] + layer.bias[None, :, None, None]
    )
    torch.testing.assert_close(layer(x), expected)


SPATIAL = [  # (C, G, H, W): what a group is
    (3, 6, 4, 3),  # two whole rows of one channel
    (2, 8, 3, 4),  # three positions: splits rows (segments of 3 on rows of 4)
    (3, 4, 2, 4),  # six positions: straddles two channels (segments of 2)
    (2, 3, 2, 3),  # four positions of 6 per channel: straddles, segments of 2 split rows
]


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize(("channels", "groups", "h", "w"), SPATIAL)
def test_spatial_groups_match_hand_reference_in_both_layouts(
    channels, groups, h, w, channels_last
) -> None:
    """Spatial groups of any shape (whole rows, split rows, straddling channels), normalised on
    a view of x (the per-(n, segment) affine); outputs, buffers and every gradient against
    autograd of the hand reference, and the memory format kept."""
    torch.manual_seed(4)
    layer = BatchGroupNorm2d(
        channels, num_groups=groups, allow_spatial_groups=True, momentum=0.3, dtype=DT
    )
    _randomise(layer, 5)
    rm, rv = torch.zeros(groups, dtype=DT), torch.ones(groups, dtype=DT)
    for step in range(2):
        x = torch.randn(5, channels, h, w, dtype=DT) * 2 + 1 + step
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        xs = [x.clone().requires_grad_(), x.clone().requires_grad_()]
        gamma, beta = layer.weight.detach().clone(), layer.bias.detach().clone()
        params = [gamma.requires_grad_(), beta.requires_grad_()]
        y = layer(xs[0])
        y_ref, rm, rv = _reference_train(xs[1], *params, groups, rm, rv, 0.3)
        torch.testing.assert_close(y, y_ref)
        assert y.is_contiguous(memory_format=torch.channels_last) == channels_last
        g = torch.randn(y.shape, dtype=DT)
        got = torch.autograd.grad(y, [xs[0], layer.weight, layer.bias], g)
        want = torch.autograd.grad(y_ref, [xs[1], *params], g)
        for a, b in zip(got, want, strict=True):
            torch.testing.assert_close(a, b)
        torch.testing.assert_close(layer.running_mean, rm.detach())
        torch.testing.assert_close(layer.running_var, rv.detach())
    layer.eval()  # the running statistics per group, on the same view
    xr = x.reshape(5, groups, -1)
    xhat = (xr - rm[None, :, None]) / torch.sqrt(rv[None, :, None] + 1e-5)
    gamma, beta = (p[None, :, None, None] for p in (layer.weight, layer.bias))
    y = layer(x)
    torch.testing.assert_close(y, xhat.reshape(x.shape) * gamma + beta)
    assert y.is_contiguous(memory_format=torch.channels_last) == channels_last


@pytest.mark.parametrize(("training", "offset"), [(True, 0.0), (True, 50.0), (False, 3.0)])
def test_grouped_gradients_match_autograd_of_hand_reference(training, offset) -> None:
    """G < C runs a hand-written backward: compare all gradients with autograd of
    docs/variants.md#bgn."""
    torch.manual_seed(5)
    layer = BatchGroupNorm2d(8, num_groups=2, momentum=0.3, dtype=DT)
    _randomise(layer, 6)
    with torch.no_grad():
        layer.running_mean.copy_(torch.randn(2, dtype=DT))
        layer.running_var.copy_(torch.rand(2, dtype=DT) + 0.5)
    rm, rv = layer.running_mean.clone(), layer.running_var.clone()
    layer.train(training)
    x = (torch.randn(4, 8, 3, 2, dtype=DT) * 2 + offset).requires_grad_()
    gamma = layer.weight.detach().clone().requires_grad_()
    beta = layer.bias.detach().clone().requires_grad_()
    if training:
        y_ref, _, _ = _reference_train(x, gamma, beta, 2, rm, rv, 0.3)
    else:
        xhat = (x.reshape(4, 2, -1) - rm[None, :, None]) / torch.sqrt(rv[None, :, None] + 1e-5)
        y_ref = xhat.reshape(x.shape) * gamma[None, :, None, None] + beta[None, :, None, None]
    w = torch.randn_like(y_ref)
    expected = torch.autograd.grad((y_ref * w).sum(), (x, gamma, beta))
    got = torch.autograd.grad((layer(x) * w).sum(), (x, layer.weight, layer.bias))
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b)


def test_momentum_none_is_cumulative_average() -> None:
    layer = BatchGroupNorm2d(4, num_groups=2, momentum=None, dtype=DT)
    means = []
    for seed in range(3):
        x = torch.randn(3, 4, 2, 2, dtype=DT, generator=torch.Generator().manual_seed(seed))
        means.append(x.reshape(3, 2, -1).mean(dim=(0, 2)))
        layer(x)
    torch.testing.assert_close(layer.running_mean, torch.stack(means).mean(0))


def test_gcd_fallback_and_repr() -> None:
    layer = BatchGroupNorm2d(6, num_groups=4)
    assert layer.num_groups == 2
    assert "num_groups=2" in repr(layer)
    assert layer.running_mean.shape == (2,)
    assert BatchGroupNorm2d(6, num_groups=32).num_groups == 2
    assert BatchGroupNorm2d(6, num_groups=12, allow_spatial_groups=True).num_groups == 12


def test_spatial_groups_need_divisible_positions() -> None:
    layer = BatchGroupNorm2d(2, num_groups=8, allow_spatial_groups=True)
    with pytest.raises(ValueError, match=r"BatchGroupNorm2d.*\(4, 2, 3, 3\)"):
        layer(torch.randn(4, 2, 3, 3))


@pytest.mark.parametrize(
    "options",
    [{"num_groups": 0}, {"num_groups": 2.0}, {"momentum": 1.5}, {"eps": 0.0}, {"num_groups": True}],
)
def test_invalid_options_raise(options) -> None:
    with pytest.raises(ValueError, match="BatchGroupNorm2d"):
        BatchGroupNorm2d(8, **options)


def test_channels_last_matches_contiguous() -> None:
    torch.manual_seed(4)
    a, b = BatchGroupNorm2d(8, num_groups=4), BatchGroupNorm2d(8, num_groups=4)
    x = torch.randn(3, 8, 5, 5)
    torch.testing.assert_close(a(x), b(x.contiguous(memory_format=torch.channels_last)))
    torch.testing.assert_close(a.running_var, b.running_var)


def test_eval_changes_nothing() -> None:
    layer = BatchGroupNorm2d(8, num_groups=4)
    layer(torch.randn(4, 8, 3, 3))
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    layer.eval()
    layer(torch.randn(1, 8, 1, 1))
    for k, v in layer.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_half_input_with_fp32_parameters_keeps_dtype() -> None:
    layer = BatchGroupNorm2d(8, num_groups=4)
    x = torch.randn(4, 8, 3, 3)
    y = layer(x.to(torch.bfloat16))
    assert y.dtype == torch.bfloat16 and layer.running_mean.dtype == torch.float32
    torch.testing.assert_close(
        y.float(), BatchGroupNorm2d(8, num_groups=4)(x), rtol=0.05, atol=0.05
    )
