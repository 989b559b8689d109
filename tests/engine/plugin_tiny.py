"""Test plugin (loaded through `TrialSpec.plugins`): a tiny backbone and two instrumented norms.

- `engine_tinynet`: conv-norm-relu-conv-norm-relu-dropout-pool-linear. Dropout draws from the
  global torch RNG, so resume tests check that RNG states are restored.
- `engine_counting_bn`: BatchNorm2d whose `end_epoch()` logs (layer id, training forwards so
  far) into `CALLS`; option `poison_at_epoch` writes NaN into its weight in that epoch's hook.
- `engine_inf_norm`: BatchNorm2d that outputs inf from its `blow_at`-th training forward on.
"""

from __future__ import annotations

import torch
from torch import nn

from normbench.models import register_backbone
from normbench.variants_api import register_variant


@register_variant("engine_counting_bn")
class CountingBN(nn.BatchNorm2d):
    paper = "Test norm: BatchNorm2d with an end_epoch counter (normbench tests, none)"
    batch_dependent = True
    CALLS: list[tuple[int, int]] = []

    def __init__(self, num_features, *, poison_at_epoch=0, eps=1e-5, momentum=0.1,
                 device=None, dtype=None):  # fmt: skip
        super().__init__(num_features, eps=eps, momentum=momentum, device=device, dtype=dtype)
        self.poison_at_epoch = poison_at_epoch
        self.train_forwards = 0
        self.epochs_ended = 0

    def forward(self, x):
        if self.training:
            self.train_forwards += 1
        return super().forward(x)

    def end_epoch(self) -> None:
        self.epochs_ended += 1
        CountingBN.CALLS.append((id(self), self.train_forwards))
        if self.epochs_ended == self.poison_at_epoch:
            with torch.no_grad():
                self.weight[0] = float("nan")


@register_variant("engine_inf_norm")
class InfNorm(nn.BatchNorm2d):
    paper = "Test norm: BatchNorm2d that blows up on request (normbench tests, none)"
    batch_dependent = True

    def __init__(self, num_features, *, blow_at=0, eps=1e-5, momentum=0.1, device=None,
                 dtype=None):  # fmt: skip
        super().__init__(num_features, eps=eps, momentum=momentum, device=device, dtype=dtype)
        self.blow_at = blow_at
        self.train_forwards = 0

    def forward(self, x):
        y = super().forward(x)
        if self.training:
            self.train_forwards += 1
            if self.blow_at and self.train_forwards >= self.blow_at:
                return y * float("inf")
        return y


@register_backbone("engine_tinynet")
def tinynet(num_classes, norm_layer, *, in_channels=3, last_norm_layer=None, width=8):
    if last_norm_layer is not None:
        raise ValueError("engine_tinynet has no residual blocks")
    return nn.Sequential(
        nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
        norm_layer(width),
        nn.ReLU(),
        nn.Conv2d(width, width, 3, padding=1, bias=False),
        norm_layer(width),
        nn.ReLU(),
        nn.Dropout(0.1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(width, num_classes),
    )
