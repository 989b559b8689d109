"""The backbone door: built-ins in the registry, the factory contract, name and option errors,
and plugin registration through `register_backbone`."""

from __future__ import annotations

import inspect

import pytest
import torch
from torch import nn

from normbench.errors import DuplicateNameError, UnknownNameError, UserError
from normbench.models import (
    BACKBONES,
    BUILTIN_BACKBONES,
    backbone_options,
    create_backbone,
    list_backbones,
    register_backbone,
)
from normbench.registry import BUILTIN

EXPECTED = {
    *("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50"),
    *("resnet20", "resnet32", "resnet56", "preact_resnet18"),
    *("vgg11", "vgg13", "vgg16", "vgg19", "inceptionv4"),
    *(f"imagenet_resnet{d}" for d in (18, 34, 50, 101, 152)),
    "imagenet_resnext50_32x4d",
    "imagenet_res2net50",
    "convnext_atto",
    "convnext_tiny",
    "adain_vgg19",  # AdaIN's style transfer network (its one norm slot passes the style)
    "nas201",
}


def test_builtins_are_registered() -> None:
    assert set(BUILTIN_BACKBONES) == EXPECTED
    assert EXPECTED <= set(list_backbones())
    for name in EXPECTED:
        entry = BACKBONES.get(name)
        assert entry.obj is BUILTIN_BACKBONES[name] and entry.source == BUILTIN


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_factory_contract(name: str) -> None:
    params = list(inspect.signature(BUILTIN_BACKBONES[name]).parameters.values())
    assert [p.name for p in params[:2]] == ["num_classes", "norm_layer"]
    options = backbone_options(BUILTIN_BACKBONES[name])
    assert options is not None
    defaults = {p.name: p.default for p in params}
    assert defaults["in_channels"] == 3 and defaults["last_norm_layer"] is None
    # filled in by the harness, never a suite option
    assert "in_channels" not in options and "last_norm_layer" not in options
    has_blocks = not name.startswith(("vgg", "inception", "adain"))
    assert ("zero_init_residual" in options) == has_blocks


def test_unknown_backbone_suggests_the_closest_name() -> None:
    with pytest.raises(UnknownNameError) as info:
        create_backbone("resnxt50", 10, nn.BatchNorm2d)
    message = str(info.value)
    assert "unknown backbone 'resnxt50'" in message
    assert "(did you mean 'resnext50'?)" in message
    assert "available:" in message and "vgg11" in message


def test_names_are_case_insensitive() -> None:
    model = create_backbone("ResNet20", 10, nn.BatchNorm2d)
    assert model.fc.out_features == 10


def test_unknown_option_names_the_option_and_the_valid_ones() -> None:
    with pytest.raises(UnknownNameError) as info:
        create_backbone("resnet20", 10, nn.BatchNorm2d, widht=32)
    message = str(info.value)
    assert "backbone 'resnet20' has no option 'widht'" in message
    assert "did you mean 'width'" in message
    for option in ("zero_init_residual=False", "shortcut='A'", "width=16"):
        assert option in message
    with pytest.raises(UnknownNameError, match="'zero_init_residual'"):
        create_backbone("vgg11", 10, nn.BatchNorm2d, zero_init_residual=True)


@pytest.mark.parametrize(
    ("name", "options", "pattern"),
    [
        ("resnet18", {"zero_init_residual": "yes"}, "expects a bool like .* but got 'yes'"),
        ("resnet20", {"width": 0}, "'width' must be an integer >= 1, but got 0"),
        ("resnet20", {"shortcut": "C"}, "'shortcut' must be 'A'.*but got 'C'"),
        ("resnext50", {"grouped_reduce": 1}, "'grouped_reduce' expects a bool"),
        ("resnet18", {"last_norm_layer": None, "in_channels": 3}, None),
    ],
)
def test_bad_option_values_are_user_errors(name: str, options: dict, pattern: str | None) -> None:
    if pattern is None:  # the explicit defaults are accepted
        assert isinstance(create_backbone(name, 10, nn.BatchNorm2d, **options), nn.Module)
        return
    with pytest.raises(UserError, match=pattern):
        create_backbone(name, 10, nn.BatchNorm2d, **options)


def test_last_norm_layer_on_vgg_is_a_user_error_naming_it() -> None:
    with pytest.raises(UserError, match="'vgg13' has no residual blocks"):
        create_backbone("vgg13", 10, nn.BatchNorm2d, last_norm_layer=nn.BatchNorm2d)


@pytest.mark.parametrize("num_classes", [0, 2.5, True])
def test_bad_num_classes(num_classes: object) -> None:
    with pytest.raises(UserError, match="num_classes must be an integer >= 1"):
        create_backbone("resnet20", num_classes, nn.BatchNorm2d)  # type: ignore[arg-type]


def test_norm_layer_value_error_becomes_a_user_error() -> None:
    def gn6(c: int) -> nn.Module:
        return nn.GroupNorm(6, c)  # 6 groups do not divide 16 channels: ValueError

    with pytest.raises(UserError, match="building backbone 'resnet20'.*divisible"):
        create_backbone("resnet20", 10, gn6)


def test_register_backbone_plugin() -> None:
    @register_backbone("tiny_test_net")
    def tiny(
        num_classes: int, norm_layer, *, in_channels: int = 3, last_norm_layer=None, depth: int = 1
    ) -> nn.Module:
        return nn.Sequential(
            nn.Conv2d(in_channels, 4, 3, padding=1),
            norm_layer(4),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(4, num_classes),
        )

    try:
        assert BACKBONES.get("tiny_test_net").obj is tiny
        model = create_backbone("tiny_test_net", 3, nn.BatchNorm2d, depth=2)
        assert model(torch.randn(2, 3, 8, 8)).shape == (2, 3)
        with pytest.raises(UnknownNameError, match="no option 'width'.*depth=1"):
            create_backbone("tiny_test_net", 3, nn.BatchNorm2d, width=2)
        with pytest.raises(DuplicateNameError, match="'tiny_test_net' is already registered"):
            register_backbone("tiny_test_net")(lambda num_classes, norm_layer: nn.Identity())
    finally:
        BACKBONES.unregister("tiny_test_net")
    assert "tiny_test_net" not in BACKBONES


def test_plugin_with_var_keyword_options_gets_them_unchecked() -> None:
    seen: dict = {}

    def loose(num_classes: int, norm_layer, **options) -> nn.Module:
        seen.update(options)
        return nn.Linear(1, num_classes)

    BACKBONES.register("loose_test_net", loose)
    try:
        create_backbone("loose_test_net", 2, nn.BatchNorm2d, anything=1)
        assert seen == {"anything": 1}
    finally:
        BACKBONES.unregister("loose_test_net")


@pytest.mark.parametrize("name", ["resnet20", "resnext50", "vgg11", "imagenet_resnet18"])
def test_builds_on_the_meta_device(name: str) -> None:
    # normbench.suite validates a suite by building backbones on the meta device.
    with torch.device("meta"):
        model = BUILTIN_BACKBONES[name](10, lambda c: nn.Identity())
    assert all(p.is_meta for p in model.parameters())
