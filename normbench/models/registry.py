"""The backbones' registry: `BACKBONES`, its built-ins, `register_backbone`,
`create_backbone`, and the backbones' option rules (`backbone_rules`, `norm_widths`).

Every backbone is a factory following `normbench.contract.BackboneFactory`:
`fn(num_classes, norm_layer, *, in_channels=3, last_norm_layer=None, **options) -> nn.Module`.
Built-ins (`BUILTIN_BACKBONES`, merged from each family module's `FACTORIES`) register through
the same call a plugin uses (entry-point group `normbench.backbones`, or a plugin file calling
`@register_backbone("name")`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from normbench.errors import UserError, describe_failure
from normbench.models import (
    adain,
    cifar_resnet,
    convnext,
    imagenet,
    inception_v4,
    nas201,
    preact_resnet,
    res2net,
    small_resnet,
    vgg,
)
from normbench.models._common import BackboneOptionError, NormLayer
from normbench.models.std_conv import (
    HARNESS_OPTIONS,
    apply_harness_options,
    split_harness_options,
)
from normbench.options import OptionDoor, OptionProblem, freeze
from normbench.registry import kind_registry

BUILTIN_BACKBONES: dict[str, Callable[..., nn.Module]] = {
    **cifar_resnet.FACTORIES,
    **preact_resnet.FACTORIES,
    **small_resnet.FACTORIES,
    **vgg.FACTORIES,
    **inception_v4.FACTORIES,
    **imagenet.FACTORIES,
    **res2net.FACTORIES,
    **convnext.FACTORIES,
    **adain.FACTORIES,
    **nas201.FACTORIES,
}


def backbone_rules(
    name: str, fn: Any, options: dict[str, Any], build: bool, context: dict[str, Any]
) -> list[OptionProblem]:
    """The backbones' own option rule (normbench.options, step 3): with `build`, the
    backbone is built on the meta device with these options."""
    if not build:
        return []
    try:
        norm_widths(name, freeze(options), bool(context.get("last_in_block")))
    except BaseException as exc:
        return [
            OptionProblem(
                f"backbone {name!r} cannot be built with these options: {describe_failure(exc)}"
            )
        ]
    return []


@functools.cache
def norm_widths(backbone: str, options: tuple[tuple[str, Any], ...], last: bool) -> frozenset[int]:
    """The channel widths the backbone passes to norm_layer (and to last_norm_layer when
    `last`), recorded by building it on the meta device. Raises what the factory raises."""
    seen: set[int] = set()

    def record(c: int) -> nn.Module:
        seen.add(int(c))
        return nn.Identity()

    kwargs: dict[str, Any] = split_harness_options(dict(options))[1]  # convs only: no widths
    if last:
        kwargs["last_norm_layer"] = record
    with torch.device("meta"):
        BACKBONES.get(backbone).obj(10, record, **kwargs)
    return frozenset(seen)


BACKBONES = kind_registry(
    "backbone",
    "normbench.backbones",
    lambda: BUILTIN_BACKBONES,
    door=OptionDoor(
        "backbone",
        skip=2,
        internal=frozenset({"in_channels", "last_norm_layer", "device", "dtype"}),
        common=lambda: dict(HARNESS_OPTIONS),  # every backbone's: applied around the factory
        rules=backbone_rules,
    ),
)


def backbone_conditioning(name: str) -> str | None:
    """What the backbone's norm slots pass besides x (its factory's `norm_conditioning`):
    None for a plain `norm_layer(C)` (every classifier), "style" for a style network's
    (`adain_vgg19`: forward(x, style)). Unknown names: None."""
    if name not in BACKBONES:
        return None
    return getattr(BACKBONES.get(name).obj, "norm_conditioning", None)


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
