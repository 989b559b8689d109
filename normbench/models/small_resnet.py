"""The small CIFAR ResNets of He et al. 2016 ("Deep Residual Learning for Image Recognition",
arXiv 1512.03385, Sec. 4.2): ResNet-(6n+2) with a 3x3 stem conv of 16 channels, three stages
of n BasicBlocks with 16/32/64 channels (strides 1/2/2), global average pooling, one linear
layer. ResNet-20/32/56 have n = 3/5/9 (0.27M/0.46M/0.85M parameters).

Shortcuts when the shape changes: option "A" (default, the paper's CIFAR choice): identity
on every other pixel with the new channels zero-padded, parameter-free and norm-free; option
"B": 1x1 conv + norm projection. `width` scales the stage widths (16 -> width, default 16).

`preact=True` builds the pre-activation form (He, Zhang, Ren & Sun, "Identity Mappings in Deep
Residual Networks", ECCV 2016, arXiv 1603.05027): a stem conv without norm, blocks
norm-ReLU-conv-norm-ReLU-conv plus the shortcut with nothing after the sum
(`normbench.models.preact_resnet.PreActBlock`; option A pads x itself, option B is a 1x1 conv
of the pre-activated input, without norm), and a final norm-ReLU before the pooling. It is the
only ResNet form EvoNorm's official code builds (tensorflow/tpu
`models/official/resnet/resnet_model.py`: "Evonorms require the pre-activation form"), and
timm's EvoNorm and FRN ResNets (`resnetv2_50d_evos`, `resnetv2_50d_frn`) are pre-activation
ones too (docs/variants.md#normalization-activation-layers).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from normbench.models._common import (
    NO_RELU_AFTER_NORM_ACTIVATION,
    BackboneOptionError,
    NormLayer,
    activation_after,
    check_bool,
    check_positive_int,
    init_convs,
    zero_norm_weight,
)
from normbench.models.cifar_resnet import BasicBlock, conv3x3, projection
from normbench.models.preact_resnet import PreActBlock


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
        preact: bool = False,
    ) -> None:
        super().__init__()
        stem: list[nn.Module] = [conv3x3(in_channels, width)]  # (N, in, 32, 32) -> (N, w, ..)
        if not preact:  # the pre-activation form's first norm is the first block's norm1
            norm = norm_layer(width)
            stem += [norm, activation_after(norm)]
        self.stem = nn.Sequential(*stem)
        stages, c_in = [], width
        for c_out, stride in ((width, 1), (2 * width, 2), (4 * width, 2)):
            blocks = []
            for i in range(n):
                s = stride if i == 0 else 1
                blocks.append(_block(preact, shortcut, c_in, c_out, s, norm_layer, last_norm_layer))
                c_in = c_out
            stages.append(nn.Sequential(*blocks))
        # spatial 32 -> 32 -> 16 -> 8 for 32x32 inputs
        self.layer1, self.layer2, self.layer3 = stages
        self.final: nn.Module = nn.Identity()
        if preact:  # the pre-activation form's last norm-ReLU
            norm = norm_layer(c_in)
            self.final = nn.Sequential(norm, activation_after(norm))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, num_classes)
        init_convs(self)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, BasicBlock | PreActBlock):
                    zero_norm_weight(m.last_norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.final(self.layer3(self.layer2(self.layer1(self.stem(x)))))
        return self.fc(torch.flatten(self.pool(x), 1))  # (N, C, 1, 1) -> (N, C)


def _block(
    preact: bool,
    shortcut: str,
    c_in: int,
    c_out: int,
    stride: int,
    norm_layer: NormLayer,
    last_norm_layer: NormLayer | None,
) -> nn.Module:
    if preact:
        pad = PadShortcut(c_in, c_out, stride) if shortcut == "A" else None
        return PreActBlock(c_in, c_out, stride, norm_layer, last_norm_layer, pad_shortcut=pad)
    short = _shortcut(shortcut, c_in, c_out, stride, norm_layer)
    return BasicBlock(c_in, c_out, stride, norm_layer, last_norm_layer, shortcut=short)


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
        preact: bool = False,
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
            preact=check_bool(name, "preact", preact),
        )

    build.__name__ = build.__qualname__ = name
    build.__doc__ = f"He et al.'s CIFAR {name}: 3 stages of {n} BasicBlocks; {params} parameters."
    return build


resnet20 = _factory("resnet20", 3, "0.27M")
resnet32 = _factory("resnet32", 5, "0.46M")
resnet56 = _factory("resnet56", 9, "0.85M")

FACTORIES = {
    n: NO_RELU_AFTER_NORM_ACTIVATION(f)  # revision 2: why in models/_common.py
    for n, f in {"resnet20": resnet20, "resnet32": resnet32, "resnet56": resnet56}.items()
}
