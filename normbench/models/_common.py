"""Helpers shared by the backbone families: option checks, conv init, residual zero-init.

Norm layers are never initialised here: a variant may have `weight=None`, a weight of another
shape, or its own initial values, so each norm layer initialises itself (unlike torchvision's
ResNet, whose init loop sets every BatchNorm2d/GroupNorm weight to 1).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from normbench.contract import Revision
from normbench.errors import UserError
from normbench.variants_api import is_norm_activation

NormLayer = Callable[[int], nn.Module]


class BackboneOptionError(UserError, ValueError):
    """A backbone option with a bad value (a user mistake, and a ValueError per the contract)."""


def check_bool(backbone: str, option: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise BackboneOptionError(
            f"backbone {backbone!r}: option {option!r} must be true or false, but got {value!r}"
        )
    return value


def check_positive_int(backbone: str, option: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BackboneOptionError(
            f"backbone {backbone!r}: option {option!r} must be an integer >= 1, but got {value!r}"
        )
    return value


def reject_last_norm(backbone: str, last_norm_layer: NormLayer | None) -> None:
    """Backbones without residual blocks have no "last norm of a block" to replace."""
    if last_norm_layer is not None:
        raise BackboneOptionError(
            f"backbone {backbone!r} has no residual blocks, so last_norm_layer "
            "(placement 'last-in-block') does not apply; use placement 'everywhere'"
        )


def init_convs(model: nn.Module) -> None:
    """torchvision's conv init: Kaiming normal, fan_out, ReLU gain; conv biases zero.

    Linear layers keep PyTorch's default init (as in the pytorch-cifar100 models).
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def activation_after(norm: nn.Module) -> nn.Module:
    """The ReLU a backbone puts after `norm`, or `nn.Identity()` when `norm` is a
    normalization-activation layer (`is_norm_activation`)."""
    if is_norm_activation(norm):
        return nn.Identity()
    return nn.ReLU(inplace=True)


# Revision 2 of every backbone whose ReLUs after a norm go through `activation_after`: the
# trials of normalization-activation layers changed (0caff98: resnet18-152, resnext50,
# preact_resnet18, resnet20/32/56; 238961d: vgg11-19, inceptionv4; 7e4f716:
# imagenet_res2net50; this change: imagenet_resnet18-152, imagenet_resnext50_32x4d, nas201);
# a backbone that gains `activation_after` declares it too.
NO_RELU_AFTER_NORM_ACTIVATION = Revision(
    2, "no ReLU after normalization-activation layers", when="norm_activation"
)


def zero_norm_weight(norm: nn.Module) -> None:
    """Zero a norm layer's `.weight` when it has one, so its residual branch starts at 0
    (Goyal et al. 2017); a norm without an affine weight is left as it is."""
    weight = getattr(norm, "weight", None)
    if isinstance(weight, torch.Tensor):
        with torch.no_grad():
            weight.zero_()
