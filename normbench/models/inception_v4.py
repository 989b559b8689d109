"""Inception-v4 (Szegedy et al. 2017, "Inception-v4, Inception-ResNet and the Impact of
Residual Connections on Learning", arXiv 1602.07261) as adapted to 32x32 inputs by
weiaicunzai/pytorch-cifar100, the code the UBN paper's CIFAR numbers follow.

Written table-driven: each module is a list of parallel branches whose outputs are
concatenated; a branch is a sequence of conv specs and pools, and may end in a fork of
parallel convs (Inception-C). Every conv is conv (no bias) - norm - ReLU.

The CIFAR adaptation: a stem without strides (32x32 -> 30x30, one unpadded 3x3 conv) of the
paper's three-way concatenations, then 4 x Inception-A (384 ch, 30x30), Reduction-A
(k, l, m, n = 192, 224, 256, 384; -> 1024 ch, 14x14), 7 x Inception-B (1024 ch),
Reduction-B (-> 1536 ch, 7x7), 3 x Inception-C (1536 ch), average pool, dropout 0.2
(keep 0.8), linear. 41.3M parameters with BN, 100 classes.

Deviations that do not change a 32x32 model: adaptive average pooling instead of a fixed 7x7
pool (other input sizes work), and `Dropout` on the pooled vector instead of `Dropout2d` on
the (N, 1536, 1, 1) map, which drops the same channels.
Inception-v4 has no residual blocks: `last_norm_layer` is rejected.
"""

from __future__ import annotations

from typing import Union

import torch
from torch import nn

from normbench.models._common import (
    NO_RELU_AFTER_NORM_ACTIVATION,
    NormLayer,
    activation_after,
    init_convs,
    reject_last_norm,
)

Kernel = int | tuple[int, int]
# ("conv", out, kernel, stride, padding | None = "same"), ("max" | "avg", kernel, stride, padding),
# or a list of parallel branches (a fork whose outputs are concatenated).
Op = Union[tuple, list["Branch"]]  # noqa: UP007 (a recursive alias needs the string form)
Branch = list[Op]


def conv(out: int, k: Kernel, stride: int = 1, pad: int | None = None) -> tuple:
    return ("conv", out, k, stride, pad)


def maxpool(stride: int, pad: int = 0) -> tuple:
    return ("max", 3, stride, pad)


AVG = ("avg", 3, 1, 1)  # 3x3 average pool keeping the size (padding counted, as in PyTorch)
R17, R71, R13, R31 = (1, 7), (7, 1), (1, 3), (3, 1)

STEM: Branch = [
    conv(32, 3, pad=0),  # 32x32 -> 30x30; everything else in the stem keeps 30x30
    conv(32, 3),
    conv(64, 3),
    [[conv(96, 3)], [maxpool(1, 1)]],  # -> 96 + 64 = 160 channels
    [
        [conv(64, 1), conv(64, R71), conv(64, R17), conv(96, 3)],
        [conv(64, 1), conv(96, 3)],
    ],  # -> 192
    [[maxpool(1, 1)], [conv(192, 3)]],  # -> 384
]
INCEPTION_A: list[Branch] = [  # -> 4 x 96 = 384
    [conv(64, 1), conv(96, 3), conv(96, 3)],
    [conv(64, 1), conv(96, 3)],
    [conv(96, 1)],
    [AVG, conv(96, 1)],
]
REDUCTION_A: list[Branch] = [  # k, l, m, n = 192, 224, 256, 384; 30 -> 14; -> 384+256+384
    [conv(192, 1), conv(224, 3), conv(256, 3, 2, 0)],
    [conv(384, 3, 2, 0)],
    [maxpool(2)],
]
INCEPTION_B: list[Branch] = [  # -> 384 + 256 + 256 + 128 = 1024
    [conv(384, 1)],
    [conv(192, 1), conv(224, R17), conv(256, R71)],
    [conv(192, 1), conv(192, R17), conv(224, R71), conv(224, R17), conv(256, R71)],
    [AVG, conv(128, 1)],
]
REDUCTION_B: list[Branch] = [  # 14 -> 7; -> 192 + 320 + 1024 = 1536
    [conv(192, 1), conv(192, 3, 2, 1)],
    [conv(256, 1), conv(256, R17), conv(320, R71), conv(320, 3, 2, 1)],
    [maxpool(2, 1)],
]
INCEPTION_C: list[Branch] = [  # -> 256 + 512 + 512 + 256 = 1536
    [conv(256, 1)],
    [conv(384, 1), [[conv(256, R31)], [conv(256, R13)]]],
    [conv(384, 1), conv(448, R13), conv(512, R31), [[conv(256, R13)], [conv(256, R31)]]],
    [AVG, conv(256, 1)],
]


class Concat(nn.Module):
    """Parallel branches on the same input, concatenated along channels."""

    def __init__(self, branches: list[nn.Module]) -> None:
        super().__init__()
        self.branches = nn.ModuleList(branches)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([b(x) for b in self.branches], dim=1)


def build_branch(ops: Branch, c_in: int, norm_layer: NormLayer) -> tuple[nn.Sequential, int]:
    """The modules of one branch and its output channel count."""
    layers: list[nn.Module] = []
    for op in ops:
        if isinstance(op, list):  # a fork
            fork, c_in = build_concat(op, c_in, norm_layer)
            layers.append(fork)
        elif op[0] == "conv":
            _, out, k, stride, pad = op
            if pad is None:  # "same" padding for odd kernels at stride 1
                pad = (k // 2) if isinstance(k, int) else (k[0] // 2, k[1] // 2)
            conv2d = nn.Conv2d(c_in, out, k, stride=stride, padding=pad, bias=False)
            norm = norm_layer(out)
            layers += [conv2d, norm, activation_after(norm)]
            c_in = out
        else:
            kind, k, stride, pad = op
            pool = nn.MaxPool2d if kind == "max" else nn.AvgPool2d
            layers.append(pool(k, stride=stride, padding=pad))
    return nn.Sequential(*layers), c_in


def build_concat(branches: list[Branch], c_in: int, norm_layer: NormLayer) -> tuple[Concat, int]:
    built = [build_branch(b, c_in, norm_layer) for b in branches]
    return Concat([m for m, _ in built]), sum(c for _, c in built)


class InceptionV4(nn.Module):
    def __init__(
        self,
        num_classes: int,
        norm_layer: NormLayer,
        in_channels: int = 3,
        blocks: tuple[int, int, int] = (4, 7, 3),
    ) -> None:
        super().__init__()
        self.stem, c = build_branch(STEM, in_channels, norm_layer)  # (N, 384, 30, 30)
        stages: list[nn.Module] = []
        for table, repeat, reduction in zip(
            (INCEPTION_A, INCEPTION_B, INCEPTION_C),
            blocks,
            (REDUCTION_A, REDUCTION_B, None),
            strict=True,
        ):
            for _ in range(repeat):
                module, c = build_concat(table, c, norm_layer)
                stages.append(module)
            if reduction is not None:
                module, c = build_concat(reduction, c, norm_layer)
                stages.append(module)
        self.features = nn.Sequential(*stages)  # (N, 384, 30, 30) -> (N, 1536, 7, 7)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(0.2)
        self.fc = nn.Linear(c, num_classes)
        init_convs(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(self.stem(x)))
        return self.fc(self.dropout(torch.flatten(x, 1)))  # (N, 1536, 1, 1) -> (N, 1536)


def inceptionv4(
    num_classes: int,
    norm_layer: NormLayer,
    *,
    in_channels: int = 3,
    last_norm_layer: NormLayer | None = None,
) -> nn.Module:
    """Inception-v4 for 32x32 inputs (pytorch-cifar100 layout); 41.3M parameters with BN."""
    reject_last_norm("inceptionv4", last_norm_layer)
    return InceptionV4(num_classes, norm_layer, in_channels)


FACTORIES = {
    "inceptionv4": NO_RELU_AFTER_NORM_ACTIVATION(inceptionv4)
}  # revision 2: why in models/_common.py
