"""IEBN (docs/variants.md#iebn) and RBN (docs/variants.md#rbn) against hand references of the spec's
formulas, float64.

Parameters are set to random non-initial values and copied into the reference, which is
written with plain tensor ops (`bn_reference`), so autograd through it gives reference
gradients too.
"""

from __future__ import annotations

import math

import pytest
import torch
from bn_reference import RefBN, assert_buffers, c4, gap, inputs
from torch import nn

from normbench.variants import IEBN2d, RepresentativeBatchNorm2d

DT = torch.float64
C = 5
SHAPE = (4, C, 3, 4)


def randomize(layer: nn.Module, seed: int = 3) -> dict[str, torch.Tensor]:
    """Random parameter values, copied into the layer; returned for the reference."""
    g = torch.Generator().manual_seed(seed)
    values = {}
    with torch.no_grad():
        for name, p in layer.named_parameters():
            values[name] = torch.randn(p.shape, generator=g, dtype=DT) * 0.5 + 0.3
            p.copy_(values[name])
    return values


def iebn_reference(p: dict, bn: RefBN, x: torch.Tensor, training: bool) -> torch.Tensor:
    a = torch.sigmoid(c4(p["weight_readjust"]) * gap(x) + c4(p["bias_readjust"]))
    return bn(x, training) * (c4(p["weight"]) * a) + c4(p["bias"])


def rbn_reference(p: dict, bn: RefBN, x: torch.Tensor, training: bool) -> torch.Tensor:
    x_c = x + c4(p["center_weight"]) * gap(x)
    x_hat = bn(x_c, training)
    g = torch.sigmoid(c4(p["scale_weight"]) * gap(x_hat) + c4(p["scale_bias"]))
    if "weight" not in p:
        return g * x_hat
    return c4(p["weight"]) * g * x_hat + c4(p["bias"])


CASES = [
    (IEBN2d, {}, iebn_reference),
    (RepresentativeBatchNorm2d, {}, rbn_reference),
    (RepresentativeBatchNorm2d, {"affine": False}, rbn_reference),
]


@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize(("cls", "options", "reference"), CASES)
def test_matches_reference_over_steps(cls, options, reference, momentum) -> None:
    layer = cls(C, momentum=momentum, dtype=DT, **options)
    params = randomize(layer)
    bn = RefBN(C, momentum=momentum)
    for x in inputs(SHAPE, steps=3):
        torch.testing.assert_close(layer(x), reference(params, bn, x, True))
        # RBN: statistics of x_c, counter as BN (docs/variants.md#iebn, docs/variants.md#rbn)
        assert_buffers(layer, bn)
    x = inputs((2, C, 5, 5), steps=1, seed=1)[0]
    torch.testing.assert_close(layer.eval()(x), reference(params, bn, x, False))


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize(("cls", "options", "reference"), CASES)
def test_gradients_match_reference(cls, options, reference, training) -> None:
    layer = cls(C, dtype=DT, **options)
    randomize(layer)
    layer(inputs(SHAPE, steps=1, seed=5)[0])  # non-trivial running statistics for eval
    bn = RefBN(C)
    bn.running_mean, bn.running_var = layer.running_mean.clone(), layer.running_var.clone()
    layer.train(training)
    params = dict(layer.named_parameters())
    x = inputs(SHAPE, steps=1, seed=2)[0]
    probe = torch.randn(SHAPE, generator=torch.Generator().manual_seed(9), dtype=DT)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    (layer(x1) * probe).sum().backward()
    ref_params = {k: v.detach().clone().requires_grad_() for k, v in params.items()}
    (reference(ref_params, bn, x2, training) * probe).sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad)
    for name, p in params.items():
        torch.testing.assert_close(p.grad, ref_params[name].grad, msg=name)


@pytest.mark.parametrize(
    ("cls", "scale"),
    [(IEBN2d, 1 / (1 + math.exp(1.0))), (RepresentativeBatchNorm2d, 1 / (1 + math.exp(-1.0)))],
)
def test_at_init_equals_scaled_bn(cls, scale: float) -> None:
    """IEBN = sigmoid(−1)·BN ≈ 0.269·BN and RBN = sigmoid(1)·BN ≈ 0.731·BN at init
    (docs/variants.md#tests)."""
    layer, bn = cls(C, dtype=DT), RefBN(C)
    for x in inputs(SHAPE, steps=2):
        torch.testing.assert_close(layer(x), scale * bn(x, True))
    assert_buffers(layer, bn)
    x = inputs(SHAPE, steps=1, seed=1)[0]
    torch.testing.assert_close(layer.eval()(x), scale * bn(x, False))


def test_initial_values_and_shapes() -> None:
    iebn = IEBN2d(C)
    assert {k: tuple(v.shape) for k, v in iebn.named_parameters()} == {
        "weight": (C,),
        "bias": (C,),
        "weight_readjust": (C,),
        "bias_readjust": (C,),
    }
    assert (iebn.bias_readjust == -1).all() and (iebn.weight_readjust == 0).all()
    rbn = RepresentativeBatchNorm2d(C)
    assert {k: tuple(v.shape) for k, v in rbn.named_parameters()} == {
        "weight": (C,),
        "bias": (C,),
        "center_weight": (C,),
        "scale_weight": (C,),
        "scale_bias": (C,),
    }
    assert (rbn.scale_bias == 1).all() and (rbn.center_weight == 0).all()
    assert RepresentativeBatchNorm2d(C, affine=False).weight is None
    assert "affine=False" in repr(RepresentativeBatchNorm2d(C, affine=False))


def test_rbn_running_mean_records_the_centred_mean() -> None:
    layer = RepresentativeBatchNorm2d(C, momentum=1.0, dtype=DT)
    w_m = torch.linspace(-0.5, 1.0, C, dtype=DT)
    with torch.no_grad():
        layer.center_weight.copy_(w_m)
    x = inputs(SHAPE, steps=1)[0]
    layer(x)
    # momentum 1: the buffer is this batch's mean of x_c = x + w_m·GAP(x), i.e. (1 + w_m)·μ_c
    torch.testing.assert_close(layer.running_mean, (1 + w_m) * x.mean(dim=(0, 2, 3)))


def test_rbn_does_not_mutate_its_input_and_keeps_autograd_working() -> None:
    """The official `input += ...` breaks both; ours is out of place (docs/variants.md#rbn)."""
    layer = RepresentativeBatchNorm2d(C, dtype=DT)
    randomize(layer)
    z = inputs(SHAPE, steps=1)[0].requires_grad_()
    x = torch.relu(z)  # relu saves its output for backward
    before, version = x.detach().clone(), x._version
    y = layer(x) + x  # x is also the residual shortcut
    y.sum().backward()
    assert torch.equal(x.detach(), before) and x._version == version
    assert z.grad is not None and torch.isfinite(z.grad).all()


@pytest.mark.parametrize("cls", [IEBN2d, RepresentativeBatchNorm2d])
def test_tiny_batch_error_names_layer_and_shape(cls) -> None:
    layer = cls(C)
    with pytest.raises(ValueError, match=rf"{cls.__name__}.*\(1, {C}, 1, 1\)"):
        layer(torch.randn(1, C, 1, 1))
    assert int(layer.num_batches_tracked) == 0
    assert layer.eval()(torch.randn(1, C, 1, 1)).shape == (1, C, 1, 1)


@pytest.mark.parametrize(
    ("cls", "reference"), [(IEBN2d, iebn_reference), (RepresentativeBatchNorm2d, rbn_reference)]
)
@pytest.mark.parametrize(
    ("dtype", "offset", "tol"), [(torch.float32, 1e3, 1e-3), (torch.bfloat16, 0.0, 5e-2)]
)
def test_low_precision_and_large_offsets_stay_accurate(cls, reference, dtype, offset, tol) -> None:
    """Two-pass statistics in fp32 (docs/variants.md#bn, docs/variants.md#pitfalls): no
    E[x²] − E[x]² cancellation at a mean of 1000 in float32, and bf16 input gives bf16 output
    close to the float64 reference."""
    layer = cls(C, dtype=DT)
    params = randomize(layer)
    x64 = inputs(SHAPE, steps=1)[0] + offset
    expected = reference(params, RefBN(C), x64, True)
    y = layer.to(torch.float32)(x64.to(dtype))
    assert y.dtype == dtype
    torch.testing.assert_close(y.double(), expected, atol=tol, rtol=tol)
