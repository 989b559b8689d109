"""BN, IN and GN wrappers (docs/variants.md#bn, docs/variants.md#in, docs/variants.md#gn): equal to
torch's modules and to the formulas, float64."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from bn_reference import RefBN, assert_buffers, c4, inputs
from torch import nn

from normbench.variants import BatchNorm2d, GroupNorm2d, InstanceNorm2d

DT = torch.float64
C = 6


def random_affine(*layers: nn.Module) -> None:
    """The same random γ, β in every layer (so the affine is exercised, not 1 and 0)."""
    g = torch.Generator().manual_seed(7)
    w = torch.rand(layers[0].weight.shape, generator=g, dtype=DT) + 0.5
    b = torch.randn(layers[0].bias.shape, generator=g, dtype=DT)
    with torch.no_grad():
        for layer in layers:
            layer.weight.copy_(w)
            layer.bias.copy_(b)


# -- BN ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("momentum", [0.1, None])
def test_bn_matches_torch_and_formula_over_steps(momentum: float | None) -> None:
    ours = BatchNorm2d(C, momentum=momentum, dtype=DT)
    torch_bn = nn.BatchNorm2d(C, momentum=momentum, dtype=DT)
    random_affine(ours, torch_bn)
    ref = RefBN(C, momentum=momentum)
    for x in inputs((4, C, 3, 5), steps=3):
        y = ours(x)
        torch.testing.assert_close(y, torch_bn(x))
        torch.testing.assert_close(y, ref(x, True) * c4(ours.weight) + c4(ours.bias))
        assert_buffers(ours, ref)
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            torch.testing.assert_close(getattr(ours, name), getattr(torch_bn, name))
    x = inputs((3, C, 4, 4), steps=1, seed=1)[0]
    y = ours.eval()(x)
    torch.testing.assert_close(y, torch_bn.eval()(x))
    torch.testing.assert_close(y, ref(x, False) * c4(ours.weight) + c4(ours.bias))


def test_bn_gradients_match_torch() -> None:
    ours, torch_bn = BatchNorm2d(C, dtype=DT), nn.BatchNorm2d(C, dtype=DT)
    random_affine(ours, torch_bn)
    x = inputs((4, C, 3, 3), steps=1)[0]
    probe = torch.randn(x.shape, dtype=DT)
    grads = []
    for layer in (ours, torch_bn):
        xi = x.clone().requires_grad_()
        (layer(xi) * probe).sum().backward()
        grads.append((xi.grad, layer.weight.grad, layer.bias.grad))
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b)


def test_bn_without_running_stats_uses_batch_statistics_in_eval() -> None:
    layer = BatchNorm2d(C, track_running_stats=False, dtype=DT).eval()
    assert layer.running_mean is None and layer.num_batches_tracked is None
    x = inputs((4, C, 3, 3), steps=1)[0]
    torch.testing.assert_close(layer(x), RefBN(C)(x, True))


def test_bn_tiny_batch_error_names_layer_and_shape() -> None:
    layer = BatchNorm2d(C)
    with pytest.raises(ValueError, match=r"BatchNorm2d.*\(1, 6, 1, 1\)"):
        layer(torch.randn(1, C, 1, 1))
    assert int(layer.num_batches_tracked) == 0 and not layer.running_mean.any()
    layer.eval()(torch.randn(1, C, 1, 1))  # eval uses the running statistics: fine
    layer.train()(torch.randn(1, C, 2, 2))  # a batch of 1 with H·W > 1 trains (docs/variants.md#bn)
    assert int(layer.num_batches_tracked) == 1


@pytest.mark.parametrize(
    "kwargs",
    [{"momentum": 1.5}, {"momentum": -0.1}, {"eps": 0.0}, {"momentum": True}],
)
def test_bn_rejects_bad_options(kwargs: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        BatchNorm2d(C, **kwargs)
    with pytest.raises(ValueError, match="num_features"):
        BatchNorm2d(0)


# -- IN ---------------------------------------------------------------------------------------
def ref_instance_norm(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    mu = x.mean(dim=(2, 3), keepdim=True)
    var = ((x - mu) ** 2).mean(dim=(2, 3), keepdim=True)
    return (x - mu) / torch.sqrt(var + eps)


def test_in_default_flags_and_formula() -> None:
    layer = InstanceNorm2d(C, dtype=DT)
    assert layer.affine and not layer.track_running_stats
    assert layer.weight.shape == (C,) and layer.bias.shape == (C,)
    assert dict(layer.named_buffers()) == {}
    assert "affine=True" in repr(layer) and "track_running_stats=False" in repr(layer)
    random_affine(layer)
    x = inputs((3, C, 4, 5), steps=1)[0]
    expected = ref_instance_norm(x) * c4(layer.weight) + c4(layer.bias)
    torch.testing.assert_close(layer(x), expected)
    torch.testing.assert_close(layer.eval()(x), expected)  # input statistics in both modes


def test_in_without_affine_has_no_parameters() -> None:
    layer = InstanceNorm2d(C, affine=False, dtype=DT)
    assert layer.weight is None and layer.bias is None
    x = inputs((2, C, 3, 3), steps=1)[0]
    torch.testing.assert_close(layer(x), ref_instance_norm(x))


@pytest.mark.parametrize("momentum", [0.1, None])
def test_in_running_stats_follow_the_contract(momentum: float | None) -> None:
    layer = InstanceNorm2d(C, track_running_stats=True, momentum=momentum, dtype=DT)
    mean, var, count = torch.zeros(C, dtype=DT), torch.ones(C, dtype=DT), 0
    xs = inputs((3, C, 4, 4), steps=3)
    for x in xs:
        layer(x)
        # torch's IN leaves the counter at 0; the contract counts (docs/variants.md#contract)
        count += 1
        f = 1.0 / count if momentum is None else momentum
        hw = x.shape[2] * x.shape[3]
        mean = (1 - f) * mean + f * x.mean(dim=(2, 3)).mean(0)
        var = (1 - f) * var + f * x.var(dim=(2, 3), unbiased=False).mean(0) * hw / (hw - 1)
    torch.testing.assert_close(layer.running_mean, mean)
    torch.testing.assert_close(layer.running_var, var)
    assert int(layer.num_batches_tracked) == 3
    x = xs[0]
    # eval: not IN any more (docs/variants.md#in)
    expected = (x - c4(mean)) / torch.sqrt(c4(var) + 1e-5)
    torch.testing.assert_close(layer.eval()(x), expected)


def test_in_one_pixel_maps_raise_in_both_modes() -> None:
    layer = InstanceNorm2d(C)
    for training in (True, False):
        with pytest.raises(ValueError, match=r"InstanceNorm2d.*\(2, 6, 1, 1\)"):
            layer.train(training)(torch.randn(2, C, 1, 1))


def test_in_rejects_unbatched_input() -> None:
    with pytest.raises(ValueError, match="4-D"):
        InstanceNorm2d(C)(torch.randn(C, 4, 4))


# -- GN ---------------------------------------------------------------------------------------
def ref_group_norm(x: torch.Tensor, groups: int, eps: float = 1e-5) -> torch.Tensor:
    n, c, h, w = x.shape
    xg = x.reshape(n, groups, c // groups * h * w)  # (N, G, C/G·H·W)
    mu = xg.mean(dim=2, keepdim=True)
    var = ((xg - mu) ** 2).mean(dim=2, keepdim=True)
    return ((xg - mu) / torch.sqrt(var + eps)).reshape(n, c, h, w)


def test_gn_with_one_channel_per_group_is_affine_instance_norm() -> None:
    layer = GroupNorm2d(C, num_groups=C, dtype=DT)
    random_affine(layer)
    x = inputs((3, C, 4, 4), steps=1)[0]
    expected = F.instance_norm(x, weight=layer.weight, bias=layer.bias, eps=1e-5)
    torch.testing.assert_close(layer(x), expected)
    torch.testing.assert_close(layer(x), ref_instance_norm(x) * c4(layer.weight) + c4(layer.bias))


@pytest.mark.parametrize(
    ("channels", "kwargs", "groups"),
    [
        (16, {}, 16),  # gcd(32, 16): the 16-channel CIFAR stage
        (24, {}, 8),
        (64, {}, 32),
        (12, {"num_groups": 4}, 4),
        (16, {"channels_per_group": 4}, 4),
        (16, {"num_groups": 2, "channels_per_group": 8}, 2),  # channels_per_group wins
    ],
)
def test_gn_groups_fallback_and_channels_per_group(channels: int, kwargs: dict, groups: int):
    layer = GroupNorm2d(channels, **kwargs, dtype=DT)
    assert layer.num_groups == groups
    assert f"num_groups={groups}" in repr(layer)
    random_affine(layer)
    x = inputs((2, channels, 3, 3), steps=1)[0]
    expected = ref_group_norm(x, groups) * c4(layer.weight) + c4(layer.bias)
    torch.testing.assert_close(layer(x), expected)
    torch.testing.assert_close(layer.eval()(x), expected)


@pytest.mark.parametrize(
    "kwargs", [{"channels_per_group": 5}, {"num_groups": 0}, {"channels_per_group": 0}]
)
def test_gn_rejects_bad_grouping(kwargs: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        GroupNorm2d(16, **kwargs)


def test_gn_ignores_momentum_and_one_element_groups_give_beta() -> None:
    layer = GroupNorm2d(C, num_groups=C, momentum=None)
    with torch.no_grad():
        layer.bias.copy_(torch.arange(C, dtype=torch.float32))
    # one value per group: output β, no error (docs/variants.md#gn). x − mean is a rounding
    # residue of a few ulps of x, which the division by sqrt(eps) = 3.2e-3 enlarges ~300x:
    # β up to ~1e-4, not bit for bit (it depended on the unseeded input before).
    gen = torch.Generator().manual_seed(0)
    y = layer(torch.randn(2, C, 1, 1, generator=gen))
    expected = c4(layer.bias.detach()).expand(2, C, 1, 1)
    torch.testing.assert_close(y, expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("cls", [BatchNorm2d, InstanceNorm2d])
@pytest.mark.parametrize("flag", ["affine", "track_running_stats"])
def test_flags_must_be_bools(cls, flag: str) -> None:
    with pytest.raises(ValueError, match=flag):  # bool("false") would silently be True
        cls(C, **{flag: "false"})
