"""Backbones: the registry door (`register_backbone`, `create_backbone`) and the built-ins.

Every backbone is a factory following the contract in ARCHITECTURE.md:
`fn(num_classes, norm_layer, *, in_channels=3, last_norm_layer=None, **options) -> nn.Module`.
Built-ins are listed in `BUILTIN_BACKBONES`, which `normbench.registry` registers through the
same call a plugin uses (entry-point group `normbench.backbones`, or a plugin file calling
`@register_backbone("name")`).

Families, one module each:
- `cifar_resnet`: CIFAR ResNet/ResNeXt in the pytorch-cifar100 layout: resnet18, resnet34,
  resnet50, resnet101, resnet152, resnext50.
- `small_resnet`: He et al.'s small CIFAR ResNets: resnet20, resnet32, resnet56.
- `vgg`: VGG with norm layers, CIFAR layout: vgg11, vgg13, vgg16, vgg19.
- `inception_v4`: Inception-v4 for 32x32 inputs: inceptionv4.
- `imagenet`: torchvision's ImageNet ResNets: imagenet_resnet18/34/50/101/152,
  imagenet_resnext50_32x4d, imagenet_res2net50.
- `convnext`: ConvNeXt-style networks for small images: convnext_atto, convnext_tiny.

Every backbone also takes `weight_standardization` (`std_conv`), applied around the factory.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from normbench.errors import UserError
from normbench.models import (
    cifar_resnet,
    convnext,
    imagenet,
    inception_v4,
    res2net,
    small_resnet,
    vgg,
)
from normbench.models._common import BackboneOptionError, NormLayer
from normbench.registry import BACKBONES

BUILTIN_BACKBONES: dict[str, Callable[..., nn.Module]] = {
    **cifar_resnet.FACTORIES,
    **small_resnet.FACTORIES,
    **vgg.FACTORIES,
    **inception_v4.FACTORIES,
    **imagenet.FACTORIES,
    **res2net.FACTORIES,
    **convnext.FACTORIES,
}


def register_backbone(name: str | None = None) -> Callable[[Any], Any]:
    """Decorator for a backbone factory: `@register_backbone("mynet")`. Raises on a
    duplicate name."""
    return BACKBONES.decorator(name)


def list_backbones() -> list[str]:
    return BACKBONES.names()


def backbone_options(fn: Callable[..., nn.Module]) -> dict[str, Any] | None:
    """The factory's keyword options and defaults; None when it takes any `**options`."""
    return BACKBONES.door.options(fn)


def create_backbone(
    name: str, num_classes: int, norm_layer: NormLayer, **options: Any
) -> nn.Module:
    """Build a registered backbone: `create_backbone("resnet18", 100, nn.BatchNorm2d)`.

    `weight_standardization=True` (an option of every backbone,
    `normbench.models.std_conv`) makes every convolution a weight-standardized one.
    Unknown names and options raise `UnknownNameError` (options are checked by the registry,
    the same check suite validation runs); a ValueError while building (a bad
    option value, or a norm layer that does not fit a layer's width) becomes a `UserError`
    naming the backbone.
    """
    from normbench.models.std_conv import apply_harness_options, split_harness_options

    entry = BACKBONES.get(name)
    internal = BACKBONES.door.internal  # in_channels, last_norm_layer: the harness's own
    BACKBONES.require_options(entry.name, {k: v for k, v in options.items() if k not in internal})
    harness, options = split_harness_options(options)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise BackboneOptionError(
            f"backbone {entry.name!r}: num_classes must be an integer >= 1, but got {num_classes!r}"
        )
    try:
        return apply_harness_options(entry.obj(num_classes, norm_layer, **options), harness)
    except UserError:
        raise
    except ValueError as exc:  # e.g. a norm option that does not fit a layer's width
        raise UserError(
            f"building backbone {entry.name!r} with options {options} failed: {exc}"
        ) from exc


__all__ = [
    "BUILTIN_BACKBONES",
    "BackboneOptionError",
    "backbone_options",
    "create_backbone",
    "list_backbones",
    "register_backbone",
]
