"""AdaIN and SaAdaIN (variants/adain.py, docs/variants.md#adain) against independent NumPy
float64 computations of their formulas, and their place in the registry.

- SaAdaIN with its shared affine at identity (its initial values) equals AdaIN bit for bit,
  outputs and gradients (the SaBN paper's claim that SaAdaIN only adds a degree of freedom);
- AdaIN's output has the style's per-channel mean and (unbiased) standard deviation;
- both equal σ(s)(γ (x − μ(x))/σ(x) + β) + μ(s) computed by hand, with a moved γ, β;
- the shared affine sits between the normalisation and the style's affine: the output's mean
  is σ(s)·β + μ(s) and its standard deviation σ(s)·|γ|, not γ·σ(s) + β ... after AdaIN.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from normbench.errors import UserError
from normbench.variants import AdaptiveInstanceNorm2d, SandwichAdaptiveInstanceNorm2d, plain_norm
from normbench.variants_api import create_norm, norm_layer

C = 5


def _tensors(seed: int, n: int = 3, style_n: int | None = None) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, C, 6, 7, generator=g) * 2.0 + 1.5
    scale = torch.rand(style_n or n, C, 1, 1, generator=g) * 3 + 0.2
    style = torch.randn(style_n or n, C, 4, 5, generator=g) * scale - 0.7
    return x, style


def _mean_std(a: np.ndarray, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """Per (n, c): mean and sqrt(unbiased variance + eps) over H, W (docs/variants.md#adain)."""
    flat = a.reshape(a.shape[0], a.shape[1], -1)
    return flat.mean(axis=2), np.sqrt(flat.var(axis=2, ddof=1) + eps)


def _reference(x, style, eps, gamma=None, beta=None) -> np.ndarray:
    """σ(s)(γ (x − μ(x))/σ(x) + β) + μ(s), float64, term by term as the paper writes it."""
    x, s = x.double().numpy(), style.double().numpy()
    mx, sx = _mean_std(x, eps)
    ms, ss = _mean_std(s, eps)
    normalised = (x - mx[:, :, None, None]) / sx[:, :, None, None]
    if gamma is not None:
        normalised = gamma.double().numpy()[None, :, None, None] * normalised
        normalised = normalised + beta.double().numpy()[None, :, None, None]
    return ss[:, :, None, None] * normalised + ms[:, :, None, None]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("style_n", [3, 1])
def test_saadain_with_the_shared_affine_at_identity_equals_adain_exactly(dtype, style_n) -> None:
    x, style = (t.to(dtype) for t in _tensors(0, style_n=style_n))
    adain, saadain = AdaptiveInstanceNorm2d(C), SandwichAdaptiveInstanceNorm2d(C).to(dtype)
    assert torch.equal(saadain.weight, torch.ones(C, dtype=dtype))  # the official init
    assert torch.equal(saadain.bias, torch.zeros(C, dtype=dtype))
    grads = []
    for layer in (adain, saadain):
        xx, ss = x.clone().requires_grad_(), style.clone().requires_grad_()
        for training in (True, False):
            y = layer.train(training)(xx, ss)
        probe = torch.linspace(-1, 1, y.numel(), dtype=dtype).reshape(y.shape)
        (y * probe).sum().backward()
        grads.append((y.detach(), xx.grad, ss.grad))
    for a, b in zip(*grads, strict=True):
        assert torch.equal(a, b)


def test_adain_output_has_the_style_mean_and_std() -> None:
    """Checked with NumPy on the output: its per-(n, c) mean is the style's, and its unbiased
    variance is var(x)/(var(x) + eps)·(var(s) + eps), the style's up to eps's share (exactly
    the style's std when eps is negligible)."""
    x, style = (t.double() for t in _tensors(1))

    def flat(a: np.ndarray) -> np.ndarray:
        return a.reshape(a.shape[0], C, -1)

    vx, vs = flat(x.numpy()).var(axis=2, ddof=1), flat(style.numpy()).var(axis=2, ddof=1)
    for eps in (1e-5, 1e-12):
        y = AdaptiveInstanceNorm2d(C, eps=eps)(x, style).numpy()
        np.testing.assert_allclose(
            flat(y).mean(axis=2), flat(style.numpy()).mean(axis=2), atol=1e-12
        )
        np.testing.assert_allclose(
            flat(y).var(axis=2, ddof=1), vx / (vx + eps) * (vs + eps), rtol=1e-10
        )
    np.testing.assert_allclose(np.sqrt(flat(y).var(axis=2, ddof=1)), np.sqrt(vs), rtol=1e-9)


@pytest.mark.parametrize("cls", [AdaptiveInstanceNorm2d, SandwichAdaptiveInstanceNorm2d])
@pytest.mark.parametrize("style_n", [3, 1])
def test_the_formula_by_hand(cls, style_n) -> None:
    x, style = (t.double() for t in _tensors(2, style_n=style_n))
    layer = cls(C).double()
    gamma = beta = None
    if layer.weight is not None:
        with torch.no_grad():
            layer.weight.copy_(torch.linspace(-0.5, 2.0, C))
            layer.bias.copy_(torch.linspace(0.3, -1.2, C))
        gamma, beta = layer.weight.detach(), layer.bias.detach()
    expected = _reference(x, style.expand(3, -1, -1, -1), 1e-5, gamma, beta)
    torch.testing.assert_close(layer(x, style), torch.from_numpy(expected))


def test_the_sandwich_affine_sits_between_the_normalisation_and_the_style_affine() -> None:
    x, style = (t.double() for t in _tensors(3))
    layer = SandwichAdaptiveInstanceNorm2d(C, eps=1e-12).double()
    with torch.no_grad():
        layer.weight.fill_(2.0)
        layer.bias.fill_(0.5)
    y = layer(x, style).detach().numpy()
    ms, ss = _mean_std(style.numpy(), 1e-12)
    my, sy = _mean_std(y, 1e-12)
    np.testing.assert_allclose(my, ss * 0.5 + ms, rtol=1e-9)
    np.testing.assert_allclose(sy, 2.0 * ss, rtol=1e-9)


def test_under_bf16_autocast_statistics_stay_fp32() -> None:
    x, style = _tensors(4)
    layer = AdaptiveInstanceNorm2d(C)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x.bfloat16(), style)
    assert y.dtype == torch.bfloat16
    reference = layer(x.bfloat16().float(), style)
    torch.testing.assert_close(y.float(), reference, atol=2e-2, rtol=1.6e-2)


def test_style_layers_are_not_plain_norm_layers() -> None:
    """`norm_layer` (what backbones call as norm_layer(C)) refuses them in one line;
    `create_norm` builds them (the style transfer task's path)."""
    assert not plain_norm(AdaptiveInstanceNorm2d) and plain_norm(torch.nn.BatchNorm2d)
    for name in ("adain", "saadain"):
        with pytest.raises(UserError) as info:
            norm_layer(name)
        message = str(info.value)
        assert "\n" not in message and f"variant {name!r} takes the style features" in message
        assert isinstance(create_norm(name, 8), AdaptiveInstanceNorm2d)


def test_bad_inputs_raise_naming_the_rule() -> None:
    layer = AdaptiveInstanceNorm2d(C)
    x, style = _tensors(5)
    with pytest.raises(ValueError, match=r"style must have shape \(N, C, Hs, Ws\)"):
        layer(x, style[:2])
    with pytest.raises(ValueError, match="at least 2 values per"):
        layer(x[:, :, :1, :1], style)
    with pytest.raises(ValueError, match="second input"):
        layer(x, 1.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="`eps` must be a finite number > 0"):
        AdaptiveInstanceNorm2d(C, eps=0.0)
