"""Pre-activation ResNet (He, Zhang, Ren & Sun, "Identity Mappings in Deep Residual Networks",
ECCV 2016, arXiv 1603.05027) for 32x32 inputs, in the layout of the model SaBN's adversarial
training experiments used (VITA-Group/Sandwich-Batch-Normalization, `Adv/models/network.py`;
the common CIFAR PreActResNet-18).

Layout: a 3x3 stem conv with stride 1 and no norm, four stages of 64/128/256/512 planes with
strides 1/2/2/2 of pre-activation blocks, global average pooling, one linear layer. A block is

    a = relu(norm1(x));  out = conv2(relu(norm2(conv1(a)))) + shortcut

with shortcut x, or a 1x1 conv (no norm) of `a` when the shape changes. There is no norm or
ReLU after the last block (as in that code; the ECCV paper's final BN-ReLU is absent).
PreActResNet-18 has 11,171,146 parameters with BN and 10 classes.

`width` (default 64) sets the first stage's planes, the others 2x, 4x, 8x it (small models for
CPU tests and smoke runs). `norm_layer` goes in every norm slot (norm1, norm2 of every block);
`last_norm_layer` replaces norm2, the last norm of each residual branch; `zero_init_residual`
zeroes norm2's weight, which with its bias at 0 makes each residual branch start at 0. Convs and
the linear layer keep PyTorch's default init, as the official code does. The input
normalisation the official model does inside itself is the data pipeline's here (or the
adversarial task's `PixelModel`).
"""

from __future__ import annotations

import torch
from torch import nn

from normbench.models._common import (
    NO_RELU_AFTER_NORM_ACTIVATION,
    NormLayer,
    activation_after,
    check_bool,
    check_positive_int,
    zero_norm_weight,
)
from normbench.models.cifar_resnet import conv1x1, conv3x3


class PreActBlock(nn.Module):
    """norm-ReLU-conv3x3-norm-ReLU-conv3x3 plus the shortcut; no activation after the sum.
    A normalization-activation layer (EvoNorm, FRN-TLU) replaces each norm-ReLU pair whole
    (`activation_after`).

    The shortcut when the shape changes: a 1x1 conv of the pre-activated input (default), or
    `pad_shortcut`, a parameter-free module applied to x itself (the CIFAR option A)."""

    def __init__(
        self,
        c_in: int,
        planes: int,
        stride: int,
        norm_layer: NormLayer,
        last_norm_layer: NormLayer | None = None,
        *,
        pad_shortcut: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.norm1 = norm_layer(c_in)
        self.act1 = activation_after(self.norm1)
        self.conv1 = conv3x3(c_in, planes, stride)
        self.norm2 = (last_norm_layer or norm_layer)(planes)
        self.act2 = activation_after(self.norm2)
        self.conv2 = conv3x3(planes, planes)
        same = stride == 1 and c_in == planes
        self.shortcut = None if same or pad_shortcut else conv1x1(c_in, planes, stride)
        self.pad_shortcut = None if same else pad_shortcut

    @property
    def last_norm(self) -> nn.Module:
        return self.norm2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.act1(self.norm1(x))
        if self.shortcut is not None:
            shortcut = self.shortcut(a)
        else:
            shortcut = x if self.pad_shortcut is None else self.pad_shortcut(x)
        out = self.conv2(self.act2(self.norm2(self.conv1(a))))
        return out + shortcut


class PreActResNet(nn.Module):
    """Stem conv + four stages of `PreActBlock` + average pool + linear."""

    def __init__(
        self,
        blocks: tuple[int, int, int, int],
        num_classes: int,
        norm_layer: NormLayer,
        *,
        in_channels: int = 3,
        last_norm_layer: NormLayer | None = None,
        zero_init_residual: bool = False,
        width: int = 64,
    ) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_channels, width)  # (N, in, 32, 32) -> (N, width, 32, 32)
        stages, c_in = [], width
        planes_per_stage = (width, 2 * width, 4 * width, 8 * width)
        for planes, n, stride in zip(planes_per_stage, blocks, (1, 2, 2, 2), strict=True):
            layer = []
            for s in [stride] + [1] * (n - 1):
                layer.append(PreActBlock(c_in, planes, s, norm_layer, last_norm_layer))
                c_in = planes
            stages.append(nn.Sequential(*layer))
        # spatial 32 -> 32 -> 16 -> 8 -> 4 for 32x32 inputs
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(c_in, num_classes)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, PreActBlock):
                    zero_norm_weight(m.last_norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.linear(torch.flatten(self.pool(x), 1))  # (N, 8w, 1, 1) -> (N, 8w)


def preact_resnet18(
    num_classes: int,
    norm_layer: NormLayer,
    *,
    in_channels: int = 3,
    last_norm_layer: NormLayer | None = None,
    zero_init_residual: bool = False,
    width: int = 64,
) -> nn.Module:
    """Pre-activation ResNet-18: 2 blocks per stage; 11.17M parameters with BN, 10 classes.
    `width` is the first stage's planes (the paper's 64; stages width, 2x, 4x, 8x)."""
    name = "preact_resnet18"
    return PreActResNet(
        (2, 2, 2, 2),
        num_classes,
        norm_layer,
        in_channels=in_channels,
        last_norm_layer=last_norm_layer,
        zero_init_residual=check_bool(name, "zero_init_residual", zero_init_residual),
        width=check_positive_int(name, "width", width),
    )


FACTORIES = {
    "preact_resnet18": NO_RELU_AFTER_NORM_ACTIVATION(preact_resnet18)
}  # revision 2: why in models/_common.py
