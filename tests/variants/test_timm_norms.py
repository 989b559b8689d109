"""LN2d, RMSNorm2d, GN1, FRN, EvoNorm-B0 and EvoNorm-S0 against timm's layers (the dev extra):
outputs, input and parameter gradients, buffers over three training steps, then eval.

timm computes these statistics with `.float()` (a float64 input is rounded to fp32 for them), so
the comparison runs in fp32, the modules' own dtype. The tolerance asserted is what the pair
reaches (max abs difference about 1e-6 on O(1) values: accumulation order); a float64 check
against a formula written here covers the exact function of the layers without timm.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

from normbench.variants import (
    EvoNormB0,
    EvoNormS0,
    FilterResponseNorm2d,
    GroupNorm1,
    LayerNorm2d,
    RMSNorm2d,
)

timm_layers = pytest.importorskip("timm.layers")

C = 16
TOL = {"atol": 2e-6, "rtol": 2e-5}  # fp32, max |diff| measured ~5e-7 (outputs and gradients)


def _perturbed(layer: nn.Module, seed: int = 3) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g))
    return layer


def _copy_params(src: nn.Module, dst: nn.Module) -> None:
    theirs = dict(dst.named_parameters())
    with torch.no_grad():
        for name, p in src.named_parameters():
            theirs[name].copy_(p.reshape(theirs[name].shape))


def _input(step: int, shape: tuple[int, ...] = (6, C, 5, 4)) -> torch.Tensor:
    g = torch.Generator().manual_seed(50 + step)
    return torch.randn(shape, generator=g) * (1.0 + step) + 0.5 * step


def compare(ours: nn.Module, theirs: nn.Module, *, steps: int = 3, **tol: float) -> None:
    """Train both `steps` times on the same inputs (gradients accumulate), then eval."""
    tol = tol or TOL
    _copy_params(_perturbed(ours), theirs)
    for step in range(steps):
        x = _input(step)
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya, yb = ours(xa), theirs(xb)
        torch.testing.assert_close(ya, yb, **tol)
        probe = torch.randn(x.shape, generator=torch.Generator().manual_seed(step))
        (ya * probe).sum().backward()
        (yb * probe).sum().backward()
        torch.testing.assert_close(xa.grad, xb.grad, **tol)
    params = dict(theirs.named_parameters())
    for name, p in ours.named_parameters():
        assert p.grad is not None, name
        torch.testing.assert_close(p.grad, params[name].grad.reshape(p.shape), **tol, msg=name)
    buffers = dict(theirs.named_buffers())
    for name, b in ours.named_buffers():
        if name in buffers:  # our counter is ours alone (docs/variants.md#evonorm)
            torch.testing.assert_close(b, buffers[name], **tol, msg=name)
    ours.eval(), theirs.eval()
    x = _input(steps)
    torch.testing.assert_close(ours(x), theirs(x), **tol)


CASES: dict[str, tuple[Callable[[], nn.Module], Callable[[], nn.Module]]] = {
    "layernorm2d": (lambda: LayerNorm2d(C), lambda: timm_layers.LayerNorm2d(C)),
    "rmsnorm2d": (lambda: RMSNorm2d(C), lambda: timm_layers.RmsNorm2d(C)),
    "gn1": (lambda: GroupNorm1(C), lambda: timm_layers.GroupNorm1(C)),
    "frn": (
        lambda: FilterResponseNorm2d(C, eps=1e-5),
        lambda: timm_layers.FilterResponseNormTlu2d(C, eps=1e-5),
    ),
    "frn(no TLU)": (
        lambda: FilterResponseNorm2d(C, apply_act=False),
        lambda: timm_layers.FilterResponseNormTlu2d(C, apply_act=False, eps=1e-6),
    ),
    "evonorm_b0": (lambda: EvoNormB0(C), lambda: timm_layers.EvoNorm2dB0(C)),
    "evonorm_b0(eps, momentum)": (
        lambda: EvoNormB0(C, eps=1e-5, momentum=0.3),
        lambda: timm_layers.EvoNorm2dB0(C, eps=1e-5, momentum=0.3),
    ),
    "evonorm_s0": (lambda: EvoNormS0(C, num_groups=4), lambda: timm_layers.EvoNorm2dS0(C, 4)),
    "evonorm_s0(group size)": (
        lambda: EvoNormS0(C, channels_per_group=8),
        lambda: timm_layers.EvoNorm2dS0(C, group_size=8),
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_equals_timm(case: str) -> None:
    make_ours, make_theirs = CASES[case]
    compare(make_ours(), make_theirs())


@pytest.mark.parametrize("case", ["layernorm2d", "rmsnorm2d", "frn", "evonorm_b0", "evonorm_s0"])
def test_equals_timm_on_channels_last_input(case: str) -> None:
    ours, theirs = (make() for make in CASES[case])
    _copy_params(_perturbed(ours), theirs)
    x = _input(1).to(memory_format=torch.channels_last)
    torch.testing.assert_close(ours(x), theirs(x), **TOL)


def test_defaults_are_timms() -> None:
    """eps and initial parameters as timm's (the page's defaults), except FRN's eps (paper)."""
    pairs: list[tuple[nn.Module, nn.Module, dict[str, Any]]] = [
        (LayerNorm2d(C), timm_layers.LayerNorm2d(C), {"eps": 1e-6}),
        (RMSNorm2d(C), timm_layers.RmsNorm2d(C), {"eps": 1e-6}),
        (GroupNorm1(C), timm_layers.GroupNorm1(C), {"eps": 1e-5}),
        (EvoNormB0(C), timm_layers.EvoNorm2dB0(C), {"eps": 1e-3, "momentum": 0.1}),
        (EvoNormS0(C), timm_layers.EvoNorm2dS0(C), {"eps": 1e-5}),
    ]
    for ours, theirs, facts in pairs:
        for key, value in facts.items():
            assert getattr(ours, key) == getattr(theirs, key) == value, (ours, key)
        theirs_params = dict(theirs.named_parameters())
        assert set(dict(ours.named_parameters())) == set(theirs_params), ours
        for name, p in ours.named_parameters():
            assert torch.equal(p, theirs_params[name]), (ours, name)
    assert RMSNorm2d(C).bias is None
    assert FilterResponseNorm2d(C).eps == 1e-6  # the paper's listing; timm uses 1e-5


# -- the same functions, float64, from the formulas of docs/variants.md ----------------------
def _c(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(1, -1, 1, 1)


def test_formulas_float64() -> None:
    dt = torch.float64
    x = _input(2).to(dt)
    w, b, v = (
        torch.randn(C, dtype=dt, generator=torch.Generator().manual_seed(i)) for i in range(3)
    )
    mean_c = x.mean(dim=1, keepdim=True)
    var_c = ((x - mean_c) ** 2).mean(dim=1, keepdim=True)
    expected = {
        "layernorm2d": (x - mean_c) / torch.sqrt(var_c + 1e-6) * _c(w) + _c(b),
        "rmsnorm2d": x / torch.sqrt((x**2).mean(dim=1, keepdim=True) + 1e-6) * _c(w),
    }
    nu2 = (x**2).mean(dim=(2, 3), keepdim=True)
    expected["frn"] = torch.maximum(x / torch.sqrt(nu2 + 1e-6) * _c(w) + _c(b), _c(v))
    groups = x.reshape(x.shape[0], 4, -1)
    gvar = ((groups - groups.mean(dim=2, keepdim=True)) ** 2).mean(dim=2, keepdim=True)
    gstd = torch.sqrt(gvar + 1e-5).expand_as(groups).reshape(x.shape)
    expected["evonorm_s0"] = x * torch.sigmoid(x * _c(v)) / gstd * _c(w) + _c(b)
    batch_var = ((x - x.mean(dim=(0, 2, 3), keepdim=True)) ** 2).mean(dim=(0, 2, 3), keepdim=True)
    inst_var = ((x - x.mean(dim=(2, 3), keepdim=True)) ** 2).mean(dim=(2, 3), keepdim=True)
    den = torch.maximum(torch.sqrt(batch_var + 1e-3), x * _c(v) + torch.sqrt(inst_var + 1e-3))
    expected["evonorm_b0"] = x / den * _c(w) + _c(b)
    layers = {
        "layernorm2d": LayerNorm2d(C, dtype=dt),
        "rmsnorm2d": RMSNorm2d(C, dtype=dt),
        "frn": FilterResponseNorm2d(C, dtype=dt),
        "evonorm_s0": EvoNormS0(C, num_groups=4, dtype=dt),
        "evonorm_b0": EvoNormB0(C, dtype=dt),
    }
    for name, layer in layers.items():
        with torch.no_grad():
            layer.weight.copy_(w)
            if layer.bias is not None:
                layer.bias.copy_(b)
            extra = getattr(layer, "v", getattr(layer, "tau", None))
            if extra is not None:
                extra.copy_(v)
        torch.testing.assert_close(layer(x), expected[name], atol=1e-13, rtol=1e-12, msg=name)


def test_frn_learnable_eps() -> None:
    """ε = eps + |ε_l|: the learned part gets the gradient of the formula, and a negative ε_l
    is used by its magnitude (ε never drops below eps)."""
    dt = torch.float64
    layer = FilterResponseNorm2d(C, learnable_eps=True, apply_act=False, dtype=dt)
    assert layer.eps_learned is not None and torch.all(layer.eps_learned == 1e-4)
    with torch.no_grad():
        layer.eps_learned.copy_(torch.linspace(-0.5, 0.5, C, dtype=dt))
    x = _input(0, (3, C, 1, 1)).to(dt)  # 1x1 maps: where the paper learns eps
    y = layer(x)
    eps = 1e-6 + layer.eps_learned.detach().abs()
    torch.testing.assert_close(y, x / torch.sqrt(x**2 + _c(eps)), atol=1e-14, rtol=1e-13)
    y.sum().backward()
    sign = torch.sign(layer.eps_learned.detach())
    grad = (-0.5 * x * (x**2 + _c(eps)) ** -1.5).sum(dim=(0, 2, 3)) * sign
    torch.testing.assert_close(layer.eps_learned.grad, grad, atol=1e-12, rtol=1e-10)
    assert copy.deepcopy(FilterResponseNorm2d(C)).eps_learned is None  # off by default


def test_evonorm_s0_groups_fall_back_like_gn() -> None:
    assert EvoNormS0(16).num_groups == 16  # gcd(32, 16)
    assert EvoNormS0(96).num_groups == 32
    assert EvoNormS0(48, channels_per_group=16).num_groups == 3
    with pytest.raises(ValueError, match="EvoNormS0"):
        EvoNormS0(48, channels_per_group=5)
    problems = EvoNormS0.check_options({"num_groups": 32}, widths=frozenset({16, 64}))
    assert "num_groups" in problems


def test_frn_tlu_tie_sends_the_gradient_to_y_eager_and_compiled() -> None:
    """Zeros in x with β = τ = 0 (initialisation, a blank image region through a bias-free conv)
    give y = β = τ exactly; the TLU sends their whole gradient to y, the same in eager and in
    compiled code (`torch.maximum` split it in eager mode only: `normbench bench gpu` saw 0.78
    relative difference). Reference: float64, y = γ·x/sqrt(ν² + ε) written here, where(y ≥ τ)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4, C, 6, 6, generator=gen).relu()  # half the entries exactly 0
    g = torch.randn(x.shape, generator=gen)
    layer = FilterResponseNorm2d(C)
    compiled = torch.compile(copy.deepcopy(layer), backend="aot_eager", fullgraph=True)
    x64 = x.double().requires_grad_()
    y64 = x64 / torch.sqrt((x64**2).mean(dim=(2, 3), keepdim=True) + 1e-6)
    ref = torch.autograd.grad(torch.where(y64 >= 0, y64, 0.0), x64, g.double())[0]
    assert (ref[x == 0] != 0).all()  # the tied positions carry gradient
    for module in (layer, compiled):
        xi = x.clone().requires_grad_()
        module(xi).backward(g)
        torch.testing.assert_close(xi.grad.double(), ref, atol=1e-5, rtol=1e-5)
