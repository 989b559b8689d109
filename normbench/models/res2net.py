"""Res2Net-50 (26w x 4s) for 224x224 ImageNet, with any norm layer.

Gao, Cheng, Zhao, Zhang, Yang & Torr, "Res2Net: A New Multi-scale Backbone Architecture"
(TPAMI 2021), arXiv 1904.01169, Fig. 2 and Table 1. The ResNet-50 layout (7x7 stem, stages of
3, 4, 6, 3 blocks, 64-512 planes, expansion 4) with the Res2Net bottleneck:

    1x1 conv to s*w channels (w = floor(planes * 26 / 64), s = 4 scales), norm, ReLU
    split into x_1..x_s (w channels each);
    y_1 = K_1(x_1);  y_i = K_i(x_i + y_{i-1}) for 1 < i < s;  y_s = x_s
    (K_i = 3x3 conv, norm, ReLU). In the first block of a stage the split parts are not
    chained (y_i = K_i(x_i), the 3x3s carry the stride) and y_s = 3x3 avg-pool(x_s, stride).
    concat, 1x1 conv to 4*planes, norm; + shortcut (1x1 conv stride s, norm); ReLU.

`norm_layer` goes everywhere a BatchNorm is (stem, every K_i, both 1x1s, the shortcut);
`last_norm_layer` replaces the norm after the last 1x1 of each block. With BN and 1000 classes
the model has 25,699,120 parameters: the paper's 25.70M (and timm's `res2net50_26w_4s`).
"""

from __future__ import annotations

import torch
from torch import nn

from normbench.models._common import (
    NO_RELU_AFTER_NORM_ACTIVATION,
    NormLayer,
    activation_after,
    check_bool,
    zero_norm_weight,
)

BASE_WIDTH = 26
SCALES = 4
EXPANSION = 4


class Bottle2neck(nn.Module):
    """The Res2Net bottleneck (see the module docstring); `first` marks a stage's first block."""

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int,
        first: bool,
        norm_layer: NormLayer,
        last_norm_layer: NormLayer,
    ) -> None:
        super().__init__()
        width = planes * BASE_WIDTH // 64
        self.first = first
        self.conv1 = nn.Conv2d(inplanes, width * SCALES, 1, bias=False)
        self.bn1 = norm_layer(width * SCALES)
        self.convs = nn.ModuleList(
            nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
            for _ in range(SCALES - 1)
        )
        self.bns = nn.ModuleList(norm_layer(width) for _ in range(SCALES - 1))
        # No ReLU after a normalization-activation layer (`activation_after`).
        self.act1 = activation_after(self.bn1)
        self.acts = nn.ModuleList(activation_after(bn) for bn in self.bns)
        self.pool = nn.AvgPool2d(3, stride=stride, padding=1) if first else nn.Identity()
        self.conv3 = nn.Conv2d(width * SCALES, planes * EXPANSION, 1, bias=False)
        self.bn3 = last_norm_layer(planes * EXPANSION)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module = nn.Identity()
        if stride != 1 or inplanes != planes * EXPANSION:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes * EXPANSION, 1, stride=stride, bias=False),
                norm_layer(planes * EXPANSION),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.bn1(self.conv1(x)))
        parts = out.chunk(SCALES, dim=1)  # s x (N, w, H, W)
        ys: list[torch.Tensor] = []
        for i, (conv, bn, act) in enumerate(zip(self.convs, self.bns, self.acts, strict=True)):
            sp = parts[i] if self.first or i == 0 else parts[i] + ys[-1]
            ys.append(act(bn(conv(sp))))
        ys.append(self.pool(parts[-1]))
        out = self.bn3(self.conv3(torch.cat(ys, dim=1)))  # (N, 4*planes, H', W')
        return self.relu(out + self.downsample(x))


def res2net50(
    num_classes: int,
    norm_layer: NormLayer,
    *,
    in_channels: int = 3,
    last_norm_layer: NormLayer | None = None,
    zero_init_residual: bool = False,
) -> nn.Module:
    """Res2Net-50 (26w x 4s), 224x224 ImageNet layout, with any norm layer."""
    zero_init = check_bool("res2net50", "zero_init_residual", zero_init_residual)
    last = last_norm_layer or norm_layer
    stem_norm = norm_layer(64)
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False),
        stem_norm,
        activation_after(stem_norm),
        nn.MaxPool2d(3, stride=2, padding=1),
    ]
    inplanes = 64
    for planes, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
        for b in range(blocks):
            first = b == 0
            layers.append(
                Bottle2neck(inplanes, planes, stride if first else 1, first, norm_layer, last)
            )
            inplanes = planes * EXPANSION
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(inplanes, num_classes)]
    model = nn.Sequential(*layers)
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    if zero_init:
        for m in model.modules():
            if isinstance(m, Bottle2neck):
                zero_norm_weight(m.bn3)
    return model


FACTORIES = {
    "imagenet_res2net50": NO_RELU_AFTER_NORM_ACTIVATION(res2net50)
}  # revision 2: why in models/_common.py
