"""DyT (docs/variants.md#dyt) against the official `dynamic_tanh.py` (jiachenzhu/DyT at commit
aab5dde0bc1bdd4410f687dad404c87b31808f90, class `DynamicTanh`, `channels_last=False`): its
parameters (alpha of shape (1,) at alpha_init_value = 0.5, weight 1 and bias 0 of shape (C,))
and its forward y = tanh(alpha * x) * weight[:, None, None] + bias[:, None, None], written here
in float64 from that formula (not copied), with the gradients derived by hand.
"""

from __future__ import annotations

import pytest
import torch

from normbench.variants import DynamicTanh2d

DT = torch.float64
C = 6


def _x(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(4, C, 5, 3, generator=g, dtype=DT) * 2.0 + 0.5


def _layer(alpha: float = 0.5) -> DynamicTanh2d:
    layer = DynamicTanh2d(C, alpha_init=alpha, dtype=DT)
    g = torch.Generator().manual_seed(9)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(C, generator=g, dtype=DT))
        layer.bias.copy_(torch.randn(C, generator=g, dtype=DT))
    return layer


def test_parameters_as_the_official_module() -> None:
    layer = DynamicTanh2d(C)
    assert layer.alpha.shape == (1,) and layer.alpha.item() == 0.5
    assert torch.equal(layer.weight, torch.ones(C)) and torch.equal(layer.bias, torch.zeros(C))
    assert {n for n, _ in layer.named_parameters()} == {"alpha", "weight", "bias"}
    assert not list(layer.buffers())


@pytest.mark.parametrize("alpha", [0.5, 0.1, 2.0])
def test_forward_equals_the_official_formula(alpha: float) -> None:
    layer = _layer(alpha)
    x = _x()
    expected = torch.tanh(alpha * x) * layer.weight[:, None, None] + layer.bias[:, None, None]
    for training in (True, False):
        # addcmul rounds once where the official mul + add round twice: 1 ulp (4.4e-16 at |y| ~ 2)
        torch.testing.assert_close(layer.train(training)(x), expected, atol=1e-15, rtol=0.0)
    # channels_last input: the same numbers
    torch.testing.assert_close(layer(x.to(memory_format=torch.channels_last)), expected)


def test_gradients_alpha_included() -> None:
    """dL/dα = Σ g·γ_c·x·(1 − tanh²(αx)), dL/dγ_c = Σ g·tanh(αx), dL/dβ_c = Σ g,
    dL/dx = g·γ_c·α·(1 − tanh²(αx)); α's gradient also against finite differences."""
    layer = _layer(0.7)
    x = _x(1).requires_grad_()
    g = torch.randn(x.shape, generator=torch.Generator().manual_seed(2), dtype=DT)
    (layer(x) * g).sum().backward()
    a = 0.7
    t = torch.tanh(a * x.detach())
    gamma = layer.weight.detach()[None, :, None, None]
    sech2 = 1.0 - t**2
    assert layer.alpha.grad is not None and layer.alpha.grad.shape == (1,)
    torch.testing.assert_close(layer.alpha.grad, (g * gamma * x.detach() * sech2).sum()[None])
    torch.testing.assert_close(layer.weight.grad, (g * t).sum(dim=(0, 2, 3)))
    torch.testing.assert_close(layer.bias.grad, g.sum(dim=(0, 2, 3)))
    torch.testing.assert_close(x.grad, g * gamma * a * sech2)

    def loss(alpha: float) -> float:
        with torch.no_grad():
            layer.alpha.fill_(alpha)
            return float((layer(x.detach()) * g).sum())

    h = 1e-6
    numeric = (loss(a + h) - loss(a - h)) / (2 * h)
    assert abs(numeric - float(layer.alpha.grad)) <= 1e-6 * max(1.0, abs(numeric))


def test_alpha_learns_with_sgd() -> None:
    """One SGD step moves α by −lr·dL/dα (α is an ordinary parameter of the layer)."""
    layer = _layer(0.5)
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    x = _x(3)
    (layer(x) ** 2).mean().backward()
    grad = float(layer.alpha.grad)
    opt.step()
    assert grad != 0.0
    assert layer.alpha.item() == pytest.approx(0.5 - 0.1 * grad, rel=1e-12)


def test_bad_alpha_init_is_refused() -> None:
    with pytest.raises(ValueError, match="alpha_init"):
        DynamicTanh2d(C, alpha_init=float("nan"))
