"""Where norm layers go, and that every backbone runs: forward shapes, norm placement
(everywhere / last-in-block), zero-init of residual branches, norm init left to the layer,
grayscale inputs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from normbench.models import BUILTIN_BACKBONES, create_backbone
from normbench.models.registry import backbone_conditioning

# the classifiers: backbones whose norm slots take a plain norm_layer(C) (the style network
# adain_vgg19 has one slot, called with the style: tests/models/test_adain_net.py)
CLASSIFIERS = sorted(n for n in BUILTIN_BACKBONES if backbone_conditioning(n) is None)
CIFAR = [n for n in CLASSIFIERS if not n.startswith("imagenet_")]
IMAGENET = [n for n in CLASSIFIERS if n.startswith("imagenet_")]
NO_BLOCKS = ["vgg11", "vgg13", "vgg16", "vgg19", "inceptionv4"]
RESIDUAL = [n for n in CLASSIFIERS if n not in NO_BLOCKS]


class OneGroupNorm(nn.GroupNorm):
    """A non-BatchNorm layer honouring the `norm_layer(C)` contract."""

    def __init__(self, num_features: int, affine: bool = True) -> None:
        super().__init__(1, num_features, affine=affine)


class LastNorm(OneGroupNorm):
    """Marks the norms built through `last_norm_layer`."""


class NoAffineNorm(OneGroupNorm):
    def __init__(self, num_features: int) -> None:
        super().__init__(num_features, affine=False)


class HalfBN(nn.BatchNorm2d):
    """A BatchNorm2d subclass with its own initial weight: no model init loop may reset it."""

    def __init__(self, num_features: int) -> None:
        super().__init__(num_features)
        nn.init.constant_(self.weight, 0.5)


class NoAffineBN(nn.BatchNorm2d):
    """A BatchNorm2d subclass with weight None (torchvision's own init loop would crash)."""

    def __init__(self, num_features: int) -> None:
        super().__init__(num_features, affine=False)


class Recorder:
    """A norm_layer factory that records the widths it was asked for."""

    def __init__(self, cls: type[nn.Module] = OneGroupNorm) -> None:
        self.widths: list[int] = []
        self.cls = cls

    def __call__(self, c: int) -> nn.Module:
        self.widths.append(c)
        return self.cls(c)


def input_for(name: str, channels: int = 3) -> torch.Tensor:
    size = 64 if name.startswith("imagenet_") else 32
    return torch.randn(2, channels, size, size)


def widths(model: nn.Module, cls: type[nn.Module]) -> list[int]:
    return sorted(
        m.num_features if hasattr(m, "num_features") else m.num_channels
        for m in model.modules()
        if isinstance(m, cls)
    )


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_norm_layer_goes_everywhere_bn_went(name: str) -> None:
    with_bn = widths(create_backbone(name, 10, nn.BatchNorm2d), nn.BatchNorm2d)
    rec = Recorder()
    model = create_backbone(name, 10, rec)
    assert sorted(rec.widths) == with_bn
    assert widths(model, OneGroupNorm) == with_bn  # every layer built is in the model
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    if name == "inceptionv4":
        return  # its one (slow) forward is in test_inceptionv4_shapes
    model.eval()
    with torch.no_grad():
        out = model(input_for(name))
    assert out.shape == (2, 10)
    assert torch.isfinite(out).all()


BLOCKS = {  # name: (blocks per stage, last-norm attribute of a block)
    "resnet18": ((2, 2, 2, 2), "norm2"),
    "resnet34": ((3, 4, 6, 3), "norm2"),
    "resnet50": ((3, 4, 6, 3), "norm3"),
    "resnet101": ((3, 4, 23, 3), "norm3"),
    "resnet152": ((3, 8, 36, 3), "norm3"),
    "resnext50": ((3, 4, 6, 3), "norm3"),
    "preact_resnet18": ((2, 2, 2, 2), "norm2"),
    "resnet20": ((3, 3, 3), "norm2"),
    "resnet32": ((5, 5, 5), "norm2"),
    "resnet56": ((9, 9, 9), "norm2"),
    "imagenet_resnet18": ((2, 2, 2, 2), "bn2"),
    "imagenet_resnet34": ((3, 4, 6, 3), "bn2"),
    "imagenet_resnet50": ((3, 4, 6, 3), "bn3"),
    "imagenet_resnet101": ((3, 4, 23, 3), "bn3"),
    "imagenet_resnet152": ((3, 8, 36, 3), "bn3"),
    "imagenet_resnext50_32x4d": ((3, 4, 6, 3), "bn3"),
}


def last_norm_names(name: str) -> set[str]:
    blocks, attr = BLOCKS[name]
    return {f"layer{s}.{j}.{attr}" for s, n in enumerate(blocks, 1) for j in range(n)}


# Backbones whose blocks are not `layer{s}.{j}`: Res2Net is one flat Sequential (stem modules
# 0-3, then one module per block); ConvNeXt's blocks sit in `stages.{s}.blocks.{j}` and have
# one norm each. The NAS-Bench-201 network: its residual blocks are the two reductions after 5
# cells each.
FLAT_LAST_NORMS = {
    "imagenet_res2net50": {f"{i}.bn3" for i in range(4, 4 + 3 + 4 + 6 + 3)},
    **{
        name: {f"stages.{s}.blocks.{j}.norm" for s, n in enumerate(depths) for j in range(n)}
        for name, depths in (("convnext_atto", (2, 2, 6, 2)), ("convnext_tiny", (3, 3, 9, 3)))
    },
    "nas201": {"cells.5.conv_b.2", "cells.11.conv_b.2"},
}


def test_blocks_table_covers_every_residual_backbone() -> None:
    assert sorted([*BLOCKS, *FLAT_LAST_NORMS]) == sorted(RESIDUAL)


@pytest.mark.parametrize("name", sorted(FLAT_LAST_NORMS))
def test_last_norm_layer_in_flat_backbones(name: str) -> None:
    model = create_backbone(name, 10, OneGroupNorm, last_norm_layer=LastNorm)
    got = {n for n, m in model.named_modules() if isinstance(m, LastNorm)}
    assert got == FLAT_LAST_NORMS[name]


def forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """One inference forward (no autograd: keeps the deep models fast on a CPU)."""
    model.eval()
    with torch.no_grad():
        return model(x)


@pytest.mark.parametrize(
    "name",
    ["resnet18", "resnet50", "resnext50", "resnet20", "imagenet_resnet18", "imagenet_resnet50"],
)
def test_last_norm_layer_is_the_last_norm_of_each_block(name: str) -> None:
    model = create_backbone(name, 10, OneGroupNorm, last_norm_layer=LastNorm)
    got = {n for n, m in model.named_modules() if isinstance(m, LastNorm)}
    assert got == last_norm_names(name)  # never a shortcut's or the stem's norm
    everywhere = widths(create_backbone(name, 10, OneGroupNorm), OneGroupNorm)
    assert widths(model, OneGroupNorm) == everywhere  # same norms in total, LastNorm included
    if name in ("resnet18", "resnet20", "imagenet_resnet18"):
        assert forward(model, input_for(name)).shape == (2, 10)


@pytest.mark.parametrize("name", NO_BLOCKS)
def test_last_norm_layer_rejected_without_blocks(name: str) -> None:
    with pytest.raises(ValueError, match=name):
        BUILTIN_BACKBONES[name](10, nn.BatchNorm2d, last_norm_layer=LastNorm)


@pytest.mark.parametrize(
    "name", ["resnet18", "resnet50", "resnet20", "imagenet_resnet50", "preact_resnet18"]
)
def test_zero_init_residual(name: str) -> None:
    model = create_backbone(name, 10, OneGroupNorm, zero_init_residual=True)
    lasts = last_norm_names(name)
    for n, m in model.named_modules():
        if isinstance(m, OneGroupNorm):
            expected = 0.0 if n in lasts else 1.0  # the others keep the layer's own init
            assert torch.all(m.weight == expected), n
    if name == "resnet18":
        # Stage 1 has identity shortcuts only, so each block returns relu(x) = x for the
        # post-ReLU stem output: the residual branches contribute exactly zero.
        h = forward(model.stem, torch.randn(2, 3, 8, 8))
        assert torch.equal(forward(model.layer1, h), h)


@pytest.mark.parametrize("name", ["resnet18", "resnext50", "resnet56", "imagenet_resnet18"])
def test_zero_init_residual_with_weightless_norm(name: str) -> None:
    model = create_backbone(name, 10, NoAffineNorm, zero_init_residual=True)
    assert all(m.weight is None for m in model.modules() if isinstance(m, NoAffineNorm))
    if name != "resnext50":
        assert forward(model, input_for(name)).shape == (2, 10)


@pytest.mark.parametrize(
    "name", ["resnet18", "resnet20", "vgg11", "inceptionv4", "imagenet_resnet18"]
)
def test_norm_init_is_left_to_the_norm_layer(name: str) -> None:
    model = create_backbone(name, 10, HalfBN)
    weights = [m.weight for m in model.modules() if isinstance(m, HalfBN)]
    assert weights and all(torch.all(w == 0.5) for w in weights)
    model = create_backbone(name, 10, NoAffineBN)  # torchvision's init loop would crash here
    assert all(m.weight is None for m in model.modules() if isinstance(m, nn.BatchNorm2d))


@pytest.mark.parametrize("name", ["resnet18", "resnet20", "vgg11", "imagenet_resnet18"])
def test_grayscale_input(name: str) -> None:
    model = create_backbone(name, 10, nn.BatchNorm2d, in_channels=1)
    assert forward(model, input_for(name, channels=1)).shape == (2, 10)


@pytest.mark.parametrize("name", ["vgg11", "resnet20"])
def test_28x28_digits(name: str) -> None:
    # MNIST-size inputs: VGG's ceil-mode pools and the adaptive pools make them fit.
    model = create_backbone(name, 10, nn.BatchNorm2d, in_channels=1)
    assert forward(model, torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_inceptionv4_shapes() -> None:
    """The one forward of Inception-v4 (slow on a CPU): stem, stages, logits, grayscale."""
    model = create_backbone("inceptionv4", 10, nn.BatchNorm2d)
    h = forward(model.stem, torch.randn(2, 3, 32, 32))
    assert h.shape == (2, 384, 30, 30)  # one unpadded 3x3 conv: 32 -> 30
    h = forward(model.features, h)
    assert h.shape == (2, 1536, 7, 7)  # reductions: 30 -> 14 -> 7
    assert forward(nn.Sequential(model.pool, nn.Flatten(), model.fc), h).shape == (2, 10)
    gray = create_backbone("inceptionv4", 10, nn.BatchNorm2d, in_channels=1)
    assert forward(gray.stem, torch.randn(2, 1, 32, 32)).shape == (2, 384, 30, 30)
