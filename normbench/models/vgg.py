"""VGG-11/13/16/19 with a norm layer after every conv (Simonyan & Zisserman 2015, arXiv
1409.1556), in the CIFAR layout of weiaicunzai/pytorch-cifar100 ("vgg*_bn" there).

torchvision's VGG hard-codes BatchNorm2d, so this builder takes `norm_layer` itself.
Features: [conv3x3 (with bias, as in the reference) - norm - ReLU] and 2x2 max-pools per the
configuration tables; five pools bring 32x32 to 1x1x512. Classifier: 512 -> 4096 -> 4096 ->
classes, ReLU and dropout 0.5 after each hidden layer.

Deviations, neither of which changes a 32x32 model: the pools use `ceil_mode=True` (so 28x28
inputs reach 1x1 instead of failing), and an adaptive average pool to 1x1 precedes the
classifier (so larger inputs work; the reference needs exactly 32x32).
VGG has no residual blocks: `last_norm_layer` is rejected.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from normbench.models._common import (
    NO_RELU_AFTER_NORM_ACTIVATION,
    NormLayer,
    activation_after,
    init_convs,
    reject_last_norm,
)

M = 0  # marks a 2x2 max-pool in a configuration
CONFIGS: dict[str, tuple[int, ...]] = {
    "vgg11": (64, M, 128, M, 256, 256, M, 512, 512, M, 512, 512, M),
    "vgg13": (64, 64, M, 128, 128, M, 256, 256, M, 512, 512, M, 512, 512, M),
    "vgg16": (64, 64, M, 128, 128, M, 256, 256, 256, M, 512, 512, 512, M, 512, 512, 512, M),
    "vgg19": (
        *(64, 64, M, 128, 128, M, 256, 256, 256, 256, M),
        *(512, 512, 512, 512, M, 512, 512, 512, 512, M),
    ),
}


class VGG(nn.Module):
    def __init__(
        self, config: tuple[int, ...], num_classes: int, norm_layer: NormLayer, in_channels: int
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = in_channels
        for c in config:
            if c == M:
                layers.append(nn.MaxPool2d(2, 2, ceil_mode=True))
            else:
                norm = norm_layer(c)
                layers += [nn.Conv2d(c_in, c, 3, padding=1), norm, activation_after(norm)]
                c_in = c
        self.features = nn.Sequential(*layers)  # (N, in, 32, 32) -> (N, 512, 1, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Linear(c_in, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(),
            nn.Linear(4096, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(),
            nn.Linear(4096, num_classes),
        )
        init_convs(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(x))
        return self.classifier(torch.flatten(x, 1))  # (N, 512, 1, 1) -> (N, 512)


def _factory(name: str) -> Callable[..., nn.Module]:
    """A registry factory for one VGG depth, following the backbone factory contract."""

    def build(
        num_classes: int,
        norm_layer: NormLayer,
        *,
        in_channels: int = 3,
        last_norm_layer: NormLayer | None = None,
    ) -> nn.Module:
        reject_last_norm(name, last_norm_layer)
        return VGG(CONFIGS[name], num_classes, norm_layer, in_channels)

    build.__name__ = build.__qualname__ = name
    convs = sum(c != M for c in CONFIGS[name])
    build.__doc__ = f"CIFAR {name}: {convs} conv-norm-ReLU layers, 5 max-pools, 3 linear layers."
    return build


# revision 2: why in models/_common.py
FACTORIES = {name: NO_RELU_AFTER_NORM_ACTIVATION(_factory(name)) for name in CONFIGS}
