"""A one-element training statistic gives one clear ValueError naming the layer and the input
shape (docs/variants.md#pitfalls), before any buffer changes; larger statistics and eval still
work."""

from __future__ import annotations

import math
import re

import pytest
import torch

from normbench.variants.bgn import BatchGroupNorm2d
from normbench.variants.fourthings import FourThingsNorm2d
from normbench.variants.ghost_bn import GhostBatchNorm2d
from normbench.variants.ubn import UnifiedBatchNorm2d

ONE_ELEMENT = [
    (BatchGroupNorm2d, {"num_groups": 4}, (1, 4, 1, 1)),
    (BatchGroupNorm2d, {"num_groups": 32, "allow_spatial_groups": True}, (1, 4, 2, 4)),
    (GhostBatchNorm2d, {"ghost_batch_size": 4}, (5, 4, 1, 1)),
    (GhostBatchNorm2d, {"num_splits": 3}, (3, 4, 1, 1)),
    (FourThingsNorm2d, {}, (1, 4, 1, 1)),
    (FourThingsNorm2d, {"examples_per_group": 2}, (3, 4, 1, 1)),
    (UnifiedBatchNorm2d, {}, (1, 4, 1, 1)),
    (UnifiedBatchNorm2d, {"fct": False, "norm_rect": False}, (1, 4, 1, 1)),
]


@pytest.mark.parametrize(("cls", "options", "shape"), ONE_ELEMENT)
def test_one_element_statistic_raises_clearly(cls, options, shape) -> None:
    assert cls.batch_dependent
    layer = cls(4, **options)
    before = {k: v.clone() for k, v in layer.state_dict().items() if k != "condensed"}
    pattern = rf"{cls.__name__}.*{re.escape(str(shape))}"
    with pytest.raises(ValueError, match=pattern):
        layer(torch.randn(shape))
    for k, v in before.items():
        assert torch.equal(layer.state_dict()[k], v), k
    layer.eval()
    assert layer(torch.randn(shape)).shape == shape


@pytest.mark.parametrize(
    ("cls", "options", "shape"),
    [
        (BatchGroupNorm2d, {"num_groups": 2}, (1, 4, 1, 1)),  # 2 channels per statistic
        (GhostBatchNorm2d, {"ghost_batch_size": 4}, (5, 4, 2, 1)),  # last chunk: 1 x 2 values
        (FourThingsNorm2d, {"channels_per_group": 2}, (1, 4, 1, 1)),
        (UnifiedBatchNorm2d, {}, (1, 4, 2, 2)),  # per-image statistics, as nn.BatchNorm2d
    ],
)
def test_two_element_statistics_train(cls, options, shape) -> None:
    y = cls(4, **options)(torch.randn(shape))
    assert torch.isfinite(y).all()


def test_ubn_frozen_branch_needs_no_batch_statistics() -> None:
    layer = UnifiedBatchNorm2d(4, tau=math.inf, decide="step")
    layer(torch.randn(3, 4, 2, 2))  # sets s_hat; tau = inf then freezes every later step
    y = layer(torch.randn(1, 4, 1, 1))
    assert torch.isfinite(y).all() and int(layer.frozen_steps) == 2
