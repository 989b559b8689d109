"""SaBN (docs/variants.md#sabn): BN equivalence, per-sample index against a hand reference, index
precedence (argument > `sabn_index` context > zeros) and index validation, float64."""

from __future__ import annotations

import pytest
import torch
from bn_reference import RefBN, assert_buffers, c4, inputs
from torch import nn

from normbench.variants import SandwichBatchNorm2d, sabn_index

DT = torch.float64
C = 4
N = 6
SHAPE = (N, C, 3, 3)


def make(k: int, seed: int = 0) -> SandwichBatchNorm2d:
    """A SaBN with K branches and random shared and branch affines."""
    layer = SandwichBatchNorm2d(C, num_branches=k, dtype=DT)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        layer.weight.copy_(torch.rand(C, generator=g, dtype=DT) + 0.5)
        layer.bias.copy_(torch.randn(C, generator=g, dtype=DT))
        layer.embed.weight.copy_(torch.randn(k, 2 * C, generator=g, dtype=DT))
    return layer


def reference(layer: SandwichBatchNorm2d, bn: RefBN, x, index, training: bool):
    """h = γ_sa·x̂ + β_sa, out[n] = γ_{k_n}·h[n] + β_{k_n}, with explicit per-sample rows."""
    h = c4(layer.weight.detach()) * bn(x, training) + c4(layer.bias.detach())
    table = layer.embed.weight.detach()
    gamma = torch.stack([table[int(k), :C] for k in index]).reshape(len(index), C, 1, 1)
    beta = torch.stack([table[int(k), C:] for k in index]).reshape(len(index), C, 1, 1)
    return gamma * h + beta


def test_one_branch_with_unit_gamma_equals_bn() -> None:
    layer = make(1)
    with torch.no_grad():
        layer.embed.weight[0, :C] = 1.0
        layer.embed.weight[0, C:] = 0.0
    torch_bn = nn.BatchNorm2d(C, dtype=DT)
    with torch.no_grad():  # `bn.*` of the official module maps to the top level
        torch_bn.weight.copy_(layer.weight)
        torch_bn.bias.copy_(layer.bias)
    for x in inputs(SHAPE, steps=3):
        torch.testing.assert_close(layer(x), torch_bn(x))
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            torch.testing.assert_close(getattr(layer, name), getattr(torch_bn, name))
    x = inputs(SHAPE, steps=1, seed=1)[0]
    torch.testing.assert_close(layer.eval()(x), torch_bn.eval()(x))


@pytest.mark.parametrize("momentum", [0.1, None])
def test_per_sample_index_matches_reference(momentum) -> None:
    layer = make(3)
    layer.momentum = momentum
    bn = RefBN(C, momentum=momentum)
    index = torch.tensor([0, 2, 1, 1, 0, 2])
    for x in inputs(SHAPE, steps=3):
        torch.testing.assert_close(layer(x, index), reference(layer, bn, x, index, True))
    assert_buffers(layer, bn)  # one set of statistics shared by every branch
    x = inputs(SHAPE, steps=1, seed=1)[0]
    torch.testing.assert_close(layer.eval()(x, index), reference(layer, bn, x, index, False))


def test_int_index_equals_a_constant_tensor_index() -> None:
    layer = make(3).eval()
    x = inputs(SHAPE, steps=1)[0]
    torch.testing.assert_close(layer(x, 2), layer(x, torch.full((N,), 2)))


def test_index_precedence_argument_then_context_then_zeros() -> None:
    layer = make(3).eval()
    model = nn.Sequential(nn.Identity(), layer)  # the context reaches submodules
    x = inputs(SHAPE, steps=1)[0]
    expected = {k: layer(x, torch.full((N,), k)) for k in range(3)}
    torch.testing.assert_close(model(x), expected[0])  # nothing set: zeros
    per_sample = torch.tensor([1, 2, 0, 1, 2, 0])
    with sabn_index(model, 2):
        torch.testing.assert_close(model(x), expected[2])
        torch.testing.assert_close(layer(x, 1), expected[1])  # the argument wins
        with sabn_index(model, per_sample):  # nested: inner wins, outer restored after
            torch.testing.assert_close(layer(x), layer(x, per_sample))
        torch.testing.assert_close(model(x), expected[2])
    assert layer.context_index is None
    torch.testing.assert_close(model(x), expected[0])


def test_context_is_cleared_on_exception_and_never_stored() -> None:
    layer = make(2)
    with pytest.raises(RuntimeError, match="boom"), sabn_index(layer, 1):
        assert layer.context_index == 1
        raise RuntimeError("boom")
    assert layer.context_index is None
    with sabn_index(layer, torch.ones(N, dtype=torch.long)):
        assert set(layer.state_dict()) == {
            "weight",
            "bias",
            "running_mean",
            "running_var",
            "num_batches_tracked",
            "embed.weight",
        }


@pytest.mark.parametrize(
    ("index", "match"),
    [
        (torch.zeros(N - 1, dtype=torch.long), rf"\({N},\).*\({N - 1},\)"),  # both sizes
        (torch.zeros(N + 2, dtype=torch.long), rf"\({N},\).*\({N + 2},\)"),
        (torch.zeros(N, 1, dtype=torch.long), rf"\({N},\).*\({N}, 1\)"),
        (torch.zeros(N, dtype=torch.int32), "int64.*torch.int32"),
        (torch.zeros(N), "int64.*torch.float32"),
        (torch.full((N,), 3), r"\[0, 3\)"),
        (3, r"\[0, 3\)"),
        (-1, r"\[0, 3\)"),
        (True, "int"),
        ("0", "int"),
    ],
)
def test_bad_index_raises_value_error(index, match: str) -> None:
    layer = make(3)
    x = inputs(SHAPE, steps=1)[0]
    with pytest.raises(ValueError, match=match):
        layer(x, index)
    assert int(layer.num_batches_tracked) == 0  # rejected before any state changes
    if isinstance(index, torch.Tensor):
        with pytest.raises(ValueError, match=match), sabn_index(layer, index):
            layer(x)


def test_sabn_index_rejects_non_index_values() -> None:
    with pytest.raises(ValueError, match="branch_index"), sabn_index(make(2), 0.5):  # type: ignore[arg-type]
        pass


def test_branch_affine_initialisation() -> None:
    torch.manual_seed(0)
    layer = SandwichBatchNorm2d(256, num_branches=4)
    gamma, beta = layer.embed.weight[:, :256].detach(), layer.embed.weight[:, 256:].detach()
    assert abs(gamma.mean().item() - 1.0) < 0.005 and abs(gamma.std().item() - 0.02) < 0.003
    assert not beta.any()
    assert (layer.weight == 1).all() and not layer.bias.any()
    assert layer.weight.shape == (256,) and layer.embed.weight.shape == (4, 512)
    assert "num_branches=4" in repr(layer)
    with pytest.raises(ValueError, match="num_branches"):
        SandwichBatchNorm2d(C, num_branches=0)


def test_tiny_batch_error_names_layer_and_shape() -> None:
    layer = make(1)
    with pytest.raises(ValueError, match=rf"SandwichBatchNorm2d.*\(1, {C}, 1, 1\)"):
        layer(torch.randn(1, C, 1, 1, dtype=DT))
    assert int(layer.num_batches_tracked) == 0
