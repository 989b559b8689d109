"""CIFAR-style ResNet and ResNeXt (He et al. 2016, arXiv 1512.03385; Xie et al. 2017,
arXiv 1611.05431) in the layout of weiaicunzai/pytorch-cifar100, the code the UBN paper's
CIFAR experiments follow.

Layout: 3x3 stem conv with stride 1 and no max-pool (32x32 inputs keep their size until the
second stage), four stages of 64/128/256/512 planes with strides 1/2/2/2, global average
pooling, one linear layer. Shortcuts are identity, or 1x1 conv + norm when the shape changes.

`norm_layer` replaces every BatchNorm (stem, blocks, shortcut projections); `last_norm_layer`
replaces only the last norm of each block's residual branch (BNET's "last-in-block"
placement), never a shortcut's norm.

Deviation kept from pytorch-cifar100 on purpose (it decides the parameter count the UBN numbers
were measured with): its ResNeXt block groups the first 1x1 conv too (32 groups), giving 14.8M
parameters for ResNeXt-50 instead of ~23M. `grouped_reduce=False` gives the paper's block.
Convs use torchvision's Kaiming init (pytorch-cifar100 uses PyTorch's defaults).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from normbench.models._common import (
    NO_RELU_AFTER_NORM_ACTIVATION,
    NormLayer,
    activation_after,
    check_bool,
    init_convs,
    zero_norm_weight,
)


def conv3x3(c_in: int, c_out: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, groups=groups, bias=False)


def conv1x1(c_in: int, c_out: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 1, stride=stride, groups=groups, bias=False)


def projection(c_in: int, c_out: int, stride: int, norm_layer: NormLayer) -> nn.Module:
    """Identity when the shape is kept, else 1x1 conv + norm (He et al.'s option B)."""
    if stride == 1 and c_in == c_out:
        return nn.Identity()
    return nn.Sequential(conv1x1(c_in, c_out, stride), norm_layer(c_out))


class BasicBlock(nn.Module):
    """conv3x3-norm-ReLU-conv3x3-norm, plus shortcut, then ReLU (no ReLU after a
    normalization-activation norm1: `activation_after`)."""

    expansion = 1

    def __init__(
        self,
        c_in: int,
        planes: int,
        stride: int,
        norm_layer: NormLayer,
        last_norm_layer: NormLayer | None = None,
        *,
        shortcut: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.conv1 = conv3x3(c_in, planes, stride)
        self.norm1 = norm_layer(planes)
        self.act1 = activation_after(self.norm1)
        self.conv2 = conv3x3(planes, planes)
        self.norm2 = (last_norm_layer or norm_layer)(planes)
        self.shortcut = shortcut or projection(c_in, planes, stride, norm_layer)
        self.relu = nn.ReLU(inplace=True)  # after the sum

    @property
    def last_norm(self) -> nn.Module:
        return self.norm2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    """1x1 reduce (to `width`) - 3x3 (stride, `groups`) - 1x1 expand (to 4 * planes).

    ResNet: width = planes, groups = 1. ResNeXt 32x4d: width = 2 * planes, groups = 32,
    and pytorch-cifar100 also groups the reducing 1x1 conv (`reduce_groups`).
    """

    expansion = 4

    def __init__(
        self,
        c_in: int,
        planes: int,
        stride: int,
        norm_layer: NormLayer,
        last_norm_layer: NormLayer | None = None,
        *,
        width: int | None = None,
        groups: int = 1,
        reduce_groups: int = 1,
    ) -> None:
        super().__init__()
        width = width or planes
        c_out = planes * self.expansion
        self.conv1 = conv1x1(c_in, width, groups=reduce_groups)
        self.norm1 = norm_layer(width)
        self.act1 = activation_after(self.norm1)
        self.conv2 = conv3x3(width, width, stride, groups=groups)
        self.norm2 = norm_layer(width)
        self.act2 = activation_after(self.norm2)
        self.conv3 = conv1x1(width, c_out)
        self.norm3 = (last_norm_layer or norm_layer)(c_out)
        self.shortcut = projection(c_in, c_out, stride, norm_layer)
        self.relu = nn.ReLU(inplace=True)  # after the sum

    @property
    def last_norm(self) -> nn.Module:
        return self.norm3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.norm1(self.conv1(x)))
        out = self.act2(self.norm2(self.conv2(out)))
        out = self.norm3(self.conv3(out))
        return self.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """Stem + four stages + average pool + linear; `make_block(c_in, planes, stride)` builds
    one residual block with the norm layers already bound."""

    def __init__(
        self,
        make_block: type[BasicBlock] | type[Bottleneck],
        blocks: tuple[int, int, int, int],
        num_classes: int,
        norm_layer: NormLayer,
        *,
        in_channels: int = 3,
        last_norm_layer: NormLayer | None = None,
        zero_init_residual: bool = False,
        **block_options: Any,
    ) -> None:
        super().__init__()
        stem_norm = norm_layer(64)
        self.stem = nn.Sequential(  # (N, in, 32, 32) -> (N, 64, 32, 32)
            conv3x3(in_channels, 64), stem_norm, activation_after(stem_norm)
        )
        stages, c_in = [], 64
        for planes, n, stride in zip((64, 128, 256, 512), blocks, (1, 2, 2, 2), strict=True):
            layer = []
            for i in range(n):
                s = stride if i == 0 else 1
                layer.append(
                    make_block(c_in, planes, s, norm_layer, last_norm_layer, **block_options)
                )
                c_in = planes * make_block.expansion
            stages.append(nn.Sequential(*layer))
        # spatial 32 -> 32 -> 16 -> 8 -> 4 for 32x32 inputs
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, num_classes)
        init_convs(self)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, BasicBlock | Bottleneck):
                    zero_norm_weight(m.last_norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.pool(x), 1))  # (N, C, 1, 1) -> (N, C)


def _resnet(
    name: str,
    block: type[BasicBlock] | type[Bottleneck],
    blocks: tuple[int, int, int, int],
    num_classes: int,
    norm_layer: NormLayer,
    in_channels: int,
    last_norm_layer: NormLayer | None,
    zero_init_residual: bool,
    **block_options: int,
) -> CifarResNet:
    return CifarResNet(
        block,
        blocks,
        num_classes,
        norm_layer,
        in_channels=in_channels,
        last_norm_layer=last_norm_layer,
        zero_init_residual=check_bool(name, "zero_init_residual", zero_init_residual),
        **block_options,
    )


def _factory(
    name: str,
    block: type[BasicBlock] | type[Bottleneck],
    blocks: tuple[int, int, int, int],
    params: str,
) -> Callable[..., nn.Module]:
    """A registry factory for one ResNet depth, following the backbone factory contract."""

    def build(
        num_classes: int,
        norm_layer: NormLayer,
        *,
        in_channels: int = 3,
        last_norm_layer: NormLayer | None = None,
        zero_init_residual: bool = False,
    ) -> nn.Module:
        args = (num_classes, norm_layer, in_channels, last_norm_layer, zero_init_residual)
        return _resnet(name, block, blocks, *args)

    build.__name__ = build.__qualname__ = name
    build.__doc__ = (
        f"CIFAR {name}: {block.__name__} x {blocks}; {params} parameters with BN, 100 classes."
    )
    return build


resnet18 = _factory("resnet18", BasicBlock, (2, 2, 2, 2), "11.22M")
resnet34 = _factory("resnet34", BasicBlock, (3, 4, 6, 3), "21.33M")
resnet50 = _factory("resnet50", Bottleneck, (3, 4, 6, 3), "23.71M")
resnet101 = _factory("resnet101", Bottleneck, (3, 4, 23, 3), "42.70M")
resnet152 = _factory("resnet152", Bottleneck, (3, 8, 36, 3), "58.34M")


class _ResNeXtBlock(Bottleneck):
    """Bottleneck with width = 2 * planes (32 groups x 4 channels at 64 planes)."""

    def __init__(
        self,
        c_in: int,
        planes: int,
        stride: int,
        norm_layer: NormLayer,
        last_norm_layer: NormLayer | None = None,
        *,
        groups: int = 32,
        reduce_groups: int = 32,
    ) -> None:
        width = groups * (4 * planes // 64)  # 32 groups of 4/8/16/32 channels per stage
        super().__init__(
            c_in,
            planes,
            stride,
            norm_layer,
            last_norm_layer,
            width=width,
            groups=groups,
            reduce_groups=reduce_groups,
        )


def resnext50(
    num_classes: int,
    norm_layer: NormLayer,
    *,
    in_channels: int = 3,
    last_norm_layer: NormLayer | None = None,
    zero_init_residual: bool = False,
    grouped_reduce: bool = True,
) -> nn.Module:
    """CIFAR ResNeXt-50 (32x4d): block widths 128/256/512/1024 in 32 groups, (3, 4, 6, 3)
    blocks. `grouped_reduce=True` (pytorch-cifar100, 14.79M parameters with BN, 100 classes)
    also groups the first 1x1 conv of each block; False gives the paper's block."""
    groups = 32
    reduce_groups = groups if check_bool("resnext50", "grouped_reduce", grouped_reduce) else 1
    args = (num_classes, norm_layer, in_channels, last_norm_layer, zero_init_residual)
    return _resnet(
        "resnext50",
        _ResNeXtBlock,
        (3, 4, 6, 3),
        *args,
        groups=groups,
        reduce_groups=reduce_groups,
    )


FACTORIES = {
    n: NO_RELU_AFTER_NORM_ACTIVATION(f)  # revision 2: why in models/_common.py
    for n, f in {
        "resnet18": resnet18,
        "resnet34": resnet34,
        "resnet50": resnet50,
        "resnet101": resnet101,
        "resnet152": resnet152,
        "resnext50": resnext50,
    }.items()
}
