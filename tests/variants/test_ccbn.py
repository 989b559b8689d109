"""CCBN (docs/variants.md#ccbn): per-sample class affine against a hand reference, BN without
affine at one branch, SaBN at an identity shared affine, initial values and the decay targets,
float64."""

from __future__ import annotations

import pytest
import torch
from bn_reference import RefBN, assert_buffers, inputs
from torch import nn

from normbench.variants import CategoricalConditionalBatchNorm2d, SandwichBatchNorm2d
from normbench.variants_api import identity_targets

DT = torch.float64
C = 4
N = 6
SHAPE = (N, C, 3, 3)


def make(k: int, seed: int = 0) -> CategoricalConditionalBatchNorm2d:
    """A CCBN with K branches and a random branch table."""
    layer = CategoricalConditionalBatchNorm2d(C, num_branches=k, dtype=DT)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        layer.embed.weight.copy_(torch.randn(k, 2 * C, generator=g, dtype=DT))
    return layer


def reference(layer: CategoricalConditionalBatchNorm2d, bn: RefBN, x, index, training: bool):
    """out[n] = γ_{k_n}·x̂[n] + β_{k_n}, with explicit per-sample rows of the table."""
    table = layer.embed.weight.detach()
    gamma = torch.stack([table[int(k), :C] for k in index])
    beta = torch.stack([table[int(k), C:] for k in index])
    return gamma.reshape(len(index), C, 1, 1) * bn(x, training) + beta.reshape(len(index), C, 1, 1)


@pytest.mark.parametrize("momentum", [0.1, None])
def test_per_sample_class_affine_matches_reference(momentum) -> None:
    layer = make(3)
    layer.momentum = momentum
    bn = RefBN(C, momentum=momentum)
    index = torch.tensor([0, 2, 1, 1, 0, 2])
    for x in inputs(SHAPE, steps=3):
        torch.testing.assert_close(layer(x, index), reference(layer, bn, x, index, True))
    assert_buffers(layer, bn)  # one set of statistics shared by every class
    x = inputs(SHAPE, steps=1, seed=1)[0]
    torch.testing.assert_close(layer.eval()(x, index), reference(layer, bn, x, index, False))
    torch.testing.assert_close(layer(x, 2), layer(x, torch.full((N,), 2)))  # fused int path


def test_one_branch_at_unit_gamma_is_bn_without_affine() -> None:
    layer = make(1)
    with torch.no_grad():
        layer.embed.weight[0, :C] = 1.0
        layer.embed.weight[0, C:] = 0.0
    torch_bn = nn.BatchNorm2d(C, affine=False, dtype=DT)
    for x in inputs(SHAPE, steps=3):
        torch.testing.assert_close(layer(x), torch_bn(x))
    torch.testing.assert_close(layer.running_var, torch_bn.running_var)


def test_sabn_with_identity_shared_affine_equals_ccbn() -> None:
    """SaBN = CCBN + a shared affine between BNcore and the class affine (the paper's Eq. 2)."""
    ccbn = make(3)
    sabn = SandwichBatchNorm2d(C, num_branches=3, dtype=DT)
    sabn.load_state_dict({**ccbn.state_dict(), "weight": sabn.weight, "bias": sabn.bias})
    index = torch.tensor([2, 0, 1, 2, 1, 0])
    for x in inputs(SHAPE, steps=2):
        torch.testing.assert_close(sabn(x, index), ccbn(x, index))
    with torch.no_grad():
        sabn.weight.mul_(2.0)  # the shared affine now scales every class's output
    x = inputs(SHAPE, steps=1, seed=3)[0]
    sabn.eval(), ccbn.eval()
    torch.testing.assert_close(
        sabn(x, index), 2.0 * ccbn(x, index) - ccbn.embed.weight[index, C:].reshape(N, C, 1, 1)
    )


def test_initial_values_parameters_and_decay_targets() -> None:
    torch.manual_seed(0)
    layer = CategoricalConditionalBatchNorm2d(256, num_branches=10)
    gamma, beta = layer.embed.weight[:, :256].detach(), layer.embed.weight[:, 256:].detach()
    assert abs(gamma.mean().item() - 1.0) < 0.005 and abs(gamma.std().item() - 0.02) < 0.003
    assert not beta.any()
    assert layer.weight is None and layer.bias is None
    assert [n for n, _ in layer.named_parameters()] == ["embed.weight"]
    targets = identity_targets(layer)
    assert set(targets) == {"embed.weight"}
    assert (targets["embed.weight"][:, :256] == 1).all() and not targets["embed.weight"][
        :, 256:
    ].any()
    assert "num_branches=10" in repr(layer)
    with pytest.raises(ValueError, match="num_branches"):
        CategoricalConditionalBatchNorm2d(C, num_branches=0)
