"""The small CIFAR ResNets of He et al. 2016 ("Deep Residual Learning for Image Recognition",
arXiv 1512.03385, Sec. 4.2): ResNet-(6n+2) with a 3x3 stem conv of 16 channels, three stages
of n BasicBlocks with 16/32/64 channels (strides 1/2/2), global average pooling, one linear
layer. ResNet-20/32/56 have n = 3/5/9 (0.27M/0.46M/0.85M parameters).

Shortcuts when the shape changes: option "A" (default, the paper's CIFAR choice): identity
on every other pixel with the new channels zero-padded, parameter-free and norm-free; option
"B": 1x1 conv + norm projection. `width` scales the stage widths (16 -> width, default 16).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from normbench.models._common import (
    BackboneOptionError,
    NormLayer,
    check_bool,
    check_positive_int,
    init_convs,
    zero_norm_weight,
)
from normbench.models.cifar_resnet import BasicBlock, conv3x3, projection


class PadShortcut(nn.Module):
    """Option A shortcut: subsample by `stride`, append zero channels up to `c_out`."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.extra, self.stride = c_out - c_in, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]  # (N, C, H, W) -> (N, C, H/s, W/s)
        return F.pad(x, (0, 0, 0, 0, 0, self.extra))  # zero channels after the C real ones


class SmallResNet(nn.Module):
    def __init__(
        self,
        n: int,
        num_classes: int,
        norm_layer: NormLayer,
        *,
        in_channels: int = 3,
        last_norm_layer: NormLayer | None = None,
        zero_init_residual: bool = False,
        shortcut: str = "A",
        width: int = 16,
    ) -> None:
        super().__init__()
        self.stem = nn.Sequential(  # (N, in, 32, 32) -> (N, w, 32, 32)
            conv3x3(in_channels, width), norm_layer(width), nn.ReLU(inplace=True)
        )
        stages, c_in = [], width
        for c_out, stride in ((width, 1), (2 * width, 2), (4 * width, 2)):
            blocks = []
            for i in range(n):
                s = stride if i == 0 else 1
                short = _shortcut(shortcut, c_in, c_out, s, norm_layer)
                blocks.append(
                    BasicBlock(c_in, c_out, s, norm_layer, last_norm_layer, shortcut=short)
                )
                c_in = c_out
            stages.append(nn.Sequential(*blocks))
        # spatial 32 -> 32 -> 16 -> 8 for 32x32 inputs
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, num_classes)
        init_convs(self)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, BasicBlock):
                    zero_norm_weight(m.last_norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.fc(torch.flatten(self.pool(x), 1))  # (N, C, 1, 1) -> (N, C)


def _shortcut(kind: str, c_in: int, c_out: int, stride: int, norm_layer: NormLayer) -> nn.Module:
    if stride == 1 and c_in == c_out:
        return nn.Identity()
    if kind == "A":
        return PadShortcut(c_in, c_out, stride)
    return projection(c_in, c_out, stride, norm_layer)


def _factory(name: str, n: int, params: str) -> Callable[..., nn.Module]:
    """A registry factory for ResNet-(6n+2), following the backbone factory contract."""

    def build(
        num_classes: int,
        norm_layer: NormLayer,
        *,
        in_channels: int = 3,
        last_norm_layer: NormLayer | None = None,
        zero_init_residual: bool = False,
        shortcut: str = "A",
        width: int = 16,
    ) -> nn.Module:
        if shortcut not in ("A", "B"):
            raise BackboneOptionError(
                f"backbone {name!r}: option 'shortcut' must be 'A' (zero-padding identity) "
                f"or 'B' (1x1 conv + norm projection), but got {shortcut!r}"
            )
        return SmallResNet(
            n,
            num_classes,
            norm_layer,
            in_channels=in_channels,
            last_norm_layer=last_norm_layer,
            zero_init_residual=check_bool(name, "zero_init_residual", zero_init_residual),
            shortcut=shortcut,
            width=check_positive_int(name, "width", width),
        )

    build.__name__ = build.__qualname__ = name
    build.__doc__ = f"He et al.'s CIFAR {name}: 3 stages of {n} BasicBlocks; {params} parameters."
    return build


resnet20 = _factory("resnet20", 3, "0.27M")
resnet32 = _factory("resnet32", 5, "0.46M")
resnet56 = _factory("resnet56", 9, "0.85M")

FACTORIES = {"resnet20": resnet20, "resnet32": resnet32, "resnet56": resnet56}
