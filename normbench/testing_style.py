"""The conformance kit for style-conditioned layers (`conditioning = "style"`, forward(x, style):
AdaIN, SaAdaIN, a plugin of that kind; docs/variants.md#adain).

    from normbench.testing_style import StyleConformance

    class TestMyAdaIN(StyleConformance):
        variant = MyAdaIN     # the class, or a registry name string
        options = {}

It runs every check of `normbench.testing.VariantConformance` on the layer bound to a fixed
style (`WithStyle`: a module called as forward(x), holding a (1, C, 4, 4) style that follows
`.to()`, built on the layer's device and dtype): construction, modes, state, gradients (input
and parameters), channels_last, bad input, fullgraph compile, double backward, torch.func, fx,
the accelerator path and bf16 autocast, each with the same meaning. One style for the whole
batch keeps the per-sample checks (vmap over samples, batch independence, a zeroed `.weight`
giving a per-channel constant) meaningful. Two checks change:

* the torchvision ResNet check becomes: a backbone cannot take the layer as its
  `norm_layer(C)` (the registry refuses the name in one line), and a small encoder, the
  layer and a decoder train one step with gradients reaching the encoder through both the
  content and the style path;
* the style itself: a wrong style (rank, channels, batch, device) raises ValueError, and the
  gradient with respect to the style passes float64 gradcheck.
"""

from __future__ import annotations

import functools
from typing import Any, ClassVar

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from normbench.testing import VariantConformance

STYLE_SIDE = 4  # the bound style's (Hs, Ws): not the input's, as AdaIN allows


def fixed_style(
    channels: int,
    *,
    batch: int = 1,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """A deterministic style (batch, C, 4, 4) whose channels differ in mean and spread, made
    without a generator (so it can be built on any default device, FakeTensors of CUDA too)."""
    n = batch * channels * STYLE_SIDE * STYLE_SIDE
    t = torch.arange(n, device=device, dtype=dtype or torch.get_default_dtype())
    t = t.reshape(batch, channels, STYLE_SIDE, STYLE_SIDE)
    c = torch.arange(channels, device=device, dtype=t.dtype).reshape(1, channels, 1, 1)
    return torch.sin(0.7 * t) * (0.5 + 0.25 * c) + 0.3 * c - 1.0


class WithStyle(nn.Module):
    """`layer(x, style)` as a module called with x alone; `style` (1, C, 4, 4) is an attribute
    (not a buffer: the layer's state is the layer's) that `.to()` converts with the layer."""

    def __init__(self, layer: nn.Module, style: torch.Tensor) -> None:
        super().__init__()
        self.layer = layer
        self.style = style

    @property
    def weight(self) -> Any:
        return self.layer.weight

    @property
    def bias(self) -> Any:
        return self.layer.bias

    def _apply(self, fn: Any, recurse: bool = True) -> WithStyle:
        self.style = fn(self.style)
        return super()._apply(fn, recurse)

    def decay_targets(self) -> dict[str, torch.Tensor]:
        """The layer's, under this module's parameter names."""
        from normbench.variants_api import identity_targets

        return {f"layer.{k}": v for k, v in identity_targets(self.layer).items()}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x, self.style)


class StyleConformance(VariantConformance):
    """Subclass as `TestSomething` and set `variant` (and `options`); see the module doc."""

    # the bound style is one (1, C, 4, 4) tensor; the layer has no running statistics to move
    updates_buffers_in_training: ClassVar[bool | None] = None

    def build_layer(self, num_features: int | None = None, **extra: Any) -> nn.Module:
        """The layer itself, `partial(Variant, **options)(C)`."""
        factory = functools.partial(self.variant_class(), **self.options, **extra)
        return factory(self.input_shape[1] if num_features is None else num_features)

    def build(self, num_features: int | None = None, **extra: Any) -> nn.Module:
        layer = self.build_layer(num_features, **extra)
        c = self.input_shape[1] if num_features is None else num_features
        style = fixed_style(c, device=extra.get("device"), dtype=extra.get("dtype"))
        return WithStyle(layer, style)

    def check_conditioning(self, cls: Any) -> None:
        if getattr(cls, "conditioning", None) != "style":
            raise TypeError(
                f"{type(self).__name__}: {cls.__name__} is not style-conditioned "
                "(conditioning = 'style'); run normbench.testing.VariantConformance on it"
            )

    # -- replaces the torchvision ResNet check -----------------------------------------------
    def test_torchvision_resnet18(self) -> None:
        """Not a backbone's norm layer (the registry says so in one line); in a small
        encoder-decoder it trains, and gradients reach the encoder through content and style."""
        cls = self.variant_class()
        assert getattr(cls, "conditioning", None) == "style", "conditioning must be 'style'"
        if isinstance(self.variant, str):
            from normbench.errors import UserError
            from normbench.variants_api import norm_layer

            with pytest.raises(UserError, match="norm_layer") as info:
                norm_layer(self.variant, **self.options)
            assert "\n" not in str(info.value)
        c = self.input_shape[1]
        encoder, decoder = nn.Conv2d(3, c, 3, padding=1), nn.Conv2d(c, 3, 3, padding=1)
        layer = self.perturb(self.build_layer()).train()
        content = self.make_input((2, 3, 8, 8), seed=1)
        style = self.make_input((2, 3, 6, 6), seed=2)
        out = decoder(layer(encoder(content), encoder(style)))
        F.mse_loss(out, content).backward()
        assert encoder.weight.grad is not None and torch.isfinite(encoder.weight.grad).all()
        for name, p in layer.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
        # the style path alone reaches the encoder too
        encoder.zero_grad()
        fc = encoder(content).detach()
        layer(fc, encoder(style)).pow(2).mean().backward()
        assert encoder.weight.grad is not None and encoder.weight.grad.abs().sum() > 0

    # -- the style input ----------------------------------------------------------------------
    def test_bad_style_raises(self) -> None:
        layer = self.build_layer()
        n, c, h, w = self.input_shape
        x = self.make_input()
        for shape in [(n, c, 4), (n, c + 1, 4, 4), (n + 1, c, 4, 4), (n, c, 1, 1)]:
            with pytest.raises(ValueError):
                layer(x, self.make_input(shape, seed=2))
        with pytest.raises((ValueError, TypeError)):
            layer(x, None)
        with pytest.raises(ValueError):
            layer(x, torch.zeros(n, c, 4, 4, device="meta"))

    def test_gradcheck_float64_style(self) -> None:
        """float64 gradcheck with respect to the style (a per-sample style batch)."""
        shape = self.gradcheck_shape
        layer = self.perturb(self.build_layer(shape[1]).to(torch.float64)).train()
        x = self.make_input(shape, dtype=torch.float64)
        style = self.make_input((shape[0], shape[1], 3, 2), seed=5, dtype=torch.float64)
        assert torch.autograd.gradcheck(
            lambda s: layer(x, s), (style.requires_grad_(),), eps=1e-6, atol=1e-5, rtol=1e-3
        )
