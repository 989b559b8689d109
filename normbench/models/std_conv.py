"""Weight standardization (Qiao, Wang, Liu, Shen & Yuille, "Micro-Batch Training with
Batch-Channel Normalization and Weight Standardization", arXiv 1903.10520): a backbone option
every backbone takes, `weight_standardization: true`, composing with any norm layer (GN+WS is
the standard small-batch baseline; docs/variants.md#weight-standardization).

Each convolution uses, instead of its weight W (C_out, C_in/groups, kh, kw),

    Ŵ[o] = (W[o] − mean(W[o])) / sqrt(var(W[o]) + eps)

with the mean and biased variance over each output filter's C_in/groups · kh · kw values,
eps = 1e-6: timm's `StdConv2d` (the reference; tests/models/test_std_conv.py). The official
code of the paper divides by std + 1e-5 with the unbiased std instead; the difference is a
(fan_in − 1)/fan_in rescaling that the next norm layer removes.

`standardize_convs(model)` turns every `nn.Conv2d` of a built backbone into a `StdConv2d`
in place (stem, blocks, shortcuts; never a convolution inside a norm layer): the parameters,
their initial values and the state_dict keys stay the same, and no random number is drawn,
so a seed gives the same initial weights with and without the option. A conv whose filters
hold one value (fan-in 1: a 1x1 stem on one-channel images, a depthwise 1x1) is left as it
is: standardized, every such filter is 0 (its mean is itself), and the network receives
nothing (found on digits with a patch-1 ConvNeXt stem; timm's StdConv2d zeroes it too).
"""

from __future__ import annotations

from typing import Any, cast

import torch
from torch import nn

WS_EPS = 1e-6  # timm's StdConv2d default
# Options every backbone takes, applied by `create_backbone` around the factory (the
# factory never sees them), with their defaults.
HARNESS_OPTIONS: dict[str, Any] = {"weight_standardization": False}


def standardize_weight(weight: torch.Tensor, eps: float = WS_EPS) -> torch.Tensor:
    """Ŵ: each output filter (dim 0) centred and scaled to unit biased variance."""
    flat = weight.reshape(weight.shape[0], -1)  # (C_out, fan_in)
    var, mean = torch.var_mean(flat, dim=1, correction=0, keepdim=True)
    return ((flat - mean) * torch.rsqrt(var + eps)).reshape_as(weight)


class StdConv2d(nn.Conv2d):
    """`nn.Conv2d` that convolves with its standardized weight (see the module docstring)."""

    eps: float = WS_EPS

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, standardize_weight(self.weight, self.eps), self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, weight_standardization_eps={self.eps}"


def fan_in(conv: nn.Conv2d) -> int:
    """Values per output filter: C_in/groups · kh · kw."""
    return conv.weight[0].numel()


def _is_norm_layer(module: nn.Module) -> bool:
    """A normbench variant (built-in or plugin): the contract's class attributes."""
    return hasattr(type(module), "batch_dependent") and hasattr(type(module), "paper")


def standardize_convs(model: nn.Module, eps: float = WS_EPS) -> int:
    """Make every plain `nn.Conv2d` of `model` with fan-in > 1, outside norm layers, a
    `StdConv2d`; returns how many. The class is swapped in place, as
    `torch.nn.utils.parametrize` does."""
    count = 0
    stack = [model]
    while stack:
        module = stack.pop()
        if _is_norm_layer(module):
            continue
        if type(module) is nn.Conv2d and fan_in(module) > 1:
            module.__class__ = StdConv2d
            cast(StdConv2d, module).eps = eps
            count += 1
        stack.extend(module.children())
    return count


def split_harness_options(options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(harness options with defaults filled in, the factory's own options)."""
    harness = {k: options.get(k, v) for k, v in HARNESS_OPTIONS.items()}
    return harness, {k: v for k, v in options.items() if k not in HARNESS_OPTIONS}


def apply_harness_options(model: nn.Module, harness: dict[str, Any]) -> nn.Module:
    """What the harness options do to a built backbone."""
    if harness["weight_standardization"]:
        standardize_convs(model)
    return model
