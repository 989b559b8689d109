"""BNET (docs/variants.md#bnet): BN followed by a per-channel k×k affine, checked against BN and two
references of the depthwise sum (shifted slices, and `F.conv2d`), float64."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from bn_reference import RefBN, assert_buffers, c4, inputs
from torch import nn

from normbench.variants import BNET2d

DT = torch.float64
C = 4
SHAPE = (3, C, 5, 6)


def shifted_sum(x_hat: torch.Tensor, kernel: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """y[n,c,h,w] = b_c + Σ_ij W[c,0,i,j]·x̂[n,c,h+i−p,w+j−p], zero padding, from the formula."""
    k = kernel.shape[-1]
    p = (k - 1) // 2
    h, w = x_hat.shape[2:]
    padded = F.pad(x_hat, (p, p, p, p))
    y = c4(bias).expand_as(x_hat).clone()
    for i in range(k):
        for j in range(k):
            y = y + c4(kernel[:, 0, i, j]) * padded[:, :, i : i + h, j : j + w]
    return y


def conv_reference(x_hat: torch.Tensor, kernel: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    return F.conv2d(x_hat, kernel, bias, padding=kernel.shape[-1] // 2, groups=kernel.shape[0])


def random_kernel(layer: BNET2d, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(layer.weight.shape, generator=g, dtype=DT))
        layer.bias.copy_(torch.randn(layer.bias.shape, generator=g, dtype=DT))


def test_identity_init_equals_bn_output_buffers_and_input_gradient() -> None:
    layer, torch_bn = BNET2d(C, dtype=DT), nn.BatchNorm2d(C, dtype=DT)
    probe = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1), dtype=DT)
    for x in inputs(SHAPE, steps=3):
        x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
        y1, y2 = layer(x1), torch_bn(x2)
        torch.testing.assert_close(y1, y2)
        (y1 * probe).sum().backward()
        (y2 * probe).sum().backward()
        torch.testing.assert_close(x1.grad, x2.grad)
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            torch.testing.assert_close(getattr(layer, name), getattr(torch_bn, name))
    x = inputs(SHAPE, steps=1, seed=3)[0]
    torch.testing.assert_close(layer.eval()(x), torch_bn.eval()(x))


def test_kernel_size_one_equals_bn_with_gamma_from_the_kernel() -> None:
    layer = BNET2d(C, kernel_size=1, dtype=DT)
    random_kernel(layer)
    torch_bn = nn.BatchNorm2d(C, dtype=DT)
    with torch.no_grad():
        torch_bn.weight.copy_(layer.weight[:, 0, 0, 0])
        torch_bn.bias.copy_(layer.bias)
    for x in inputs(SHAPE, steps=2):
        torch.testing.assert_close(layer(x), torch_bn(x))
    x = inputs(SHAPE, steps=1, seed=3)[0]
    torch.testing.assert_close(layer.eval()(x), torch_bn.eval()(x))


@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("kernel_size", [3, 5])
def test_random_kernel_matches_both_references(kernel_size: int, momentum) -> None:
    layer = BNET2d(C, kernel_size=kernel_size, momentum=momentum, dtype=DT)
    random_kernel(layer, seed=kernel_size)
    w, b = layer.weight.detach().clone(), layer.bias.detach().clone()
    bn = RefBN(C, momentum=momentum)
    for x in inputs(SHAPE, steps=3):
        y = layer(x)
        x_hat = bn(x, True)
        torch.testing.assert_close(y, shifted_sum(x_hat, w, b))
        torch.testing.assert_close(y, conv_reference(x_hat, w, b))
    assert_buffers(layer, bn)
    # 1×1 maps: only the centre tap (docs/variants.md#bnet)
    x = inputs((2, C, 1, 1), steps=1, seed=4)[0]
    expected = bn(x, False) * c4(w[:, 0, kernel_size // 2, kernel_size // 2]) + c4(b)
    torch.testing.assert_close(layer.eval()(x), expected)


def test_parameter_gradients_match_the_reference() -> None:
    layer = BNET2d(C, dtype=DT)
    random_kernel(layer)
    w = layer.weight.detach().clone().requires_grad_()
    b = layer.bias.detach().clone().requires_grad_()
    x = inputs(SHAPE, steps=1)[0]
    probe = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1), dtype=DT)
    (layer(x) * probe).sum().backward()
    (shifted_sum(RefBN(C)(x, True), w, b) * probe).sum().backward()
    torch.testing.assert_close(layer.weight.grad, w.grad)
    torch.testing.assert_close(layer.bias.grad, b.grad)


def test_parameters_shapes_and_inits() -> None:
    layer = BNET2d(C, kernel_size=5)
    assert layer.weight.shape == (C, 1, 5, 5) and layer.bias.shape == (C,)
    expected = torch.zeros(C, 1, 5, 5)
    expected[:, 0, 2, 2] = 1
    assert torch.equal(layer.weight.detach(), expected) and not layer.bias.any()
    zero = BNET2d(C, init="zero")
    assert not zero.weight.any() and not zero.bias.any()
    assert not zero(torch.randn(2, C, 3, 3)).any()  # the official last-norm intent
    assert "kernel_size=3" in repr(zero) and "init='zero'" in repr(zero)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"kernel_size": 2}, "odd"),
        ({"kernel_size": 4}, "odd"),
        ({"kernel_size": 0}, "kernel_size"),
        ({"init": "kaiming"}, "init"),
    ],
)
def test_rejects_bad_options(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        BNET2d(C, **kwargs)


def test_tiny_batch_error_names_layer_and_shape() -> None:
    layer = BNET2d(C)
    with pytest.raises(ValueError, match=rf"BNET2d.*\(1, {C}, 1, 1\)"):
        layer(torch.randn(1, C, 1, 1))
    assert int(layer.num_batches_tracked) == 0
