"""The optimiser groups and the per-batch lr schedule, against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from normbench.engine.recipe import (
    RecipeError,
    build_optimizer,
    build_scheduler,
    current_lr,
    param_groups,
)
from normbench.engine.spec import Recipe

CIFAR100 = Recipe(
    lr=0.1, momentum=0.9, weight_decay=5e-4, warmup_epochs=1, milestones=(60, 120, 160), gamma=0.2
)


def lrs_per_batch(recipe: Recipe, epochs: int, batches: int) -> list[float]:
    """The lr each training batch sees: read before the step, then step the scheduler."""
    model = nn.Linear(2, 2)
    opt = build_optimizer(model, recipe)
    sched = build_scheduler(opt, recipe, epochs=epochs, batches_per_epoch=batches)
    seen = []
    for _ in range(epochs * batches):
        seen.append(current_lr(opt))
        opt.step()
        sched.step()
    return seen


def test_cifar100_schedule_matches_hand_computed() -> None:
    b = 3  # batches per epoch
    got = lrs_per_batch(CIFAR100, 200, b)
    for t, lr in enumerate(got):
        epoch = t // b  # 0-based
        if epoch < 1:  # warm-up: lr * (t + 1) / W, W = 3 batches
            want = 0.1 * (t + 1) / b
        else:  # 1-based epochs 1-60: 0.1, 61-120: 0.02, 121-160: 0.004, 161-200: 0.0008
            want = 0.1 * 0.2 ** sum(epoch >= m for m in (60, 120, 160))
        assert lr == pytest.approx(want, rel=1e-9, abs=1e-15), (t, epoch)
    # the intended boundaries: last batch of 1-based epoch 60 still at 0.1, first of 61 at 0.02
    assert got[60 * b - 1] == pytest.approx(0.1)
    assert got[60 * b] == pytest.approx(0.02)


def test_no_warmup_multistep_cifar10() -> None:
    r = Recipe(lr=0.1, milestones=(100, 150), gamma=0.1)
    got = lrs_per_batch(r, 200, 2)
    want = [0.1 * 0.1 ** sum(t // 2 >= m for m in (100, 150)) for t in range(400)]
    assert got == pytest.approx(want, rel=1e-9)


def test_cosine_after_warmup() -> None:
    r = Recipe(lr=0.2, warmup_epochs=1, schedule="cosine")
    epochs, b = 5, 4
    got = lrs_per_batch(r, epochs, b)
    total, w = epochs * b, b
    for t, lr in enumerate(got):
        if t < w:
            want = 0.2 * (t + 1) / w
        else:
            want = 0.1 * (1 + math.cos(math.pi * (t - w) / (total - w)))
        assert lr == pytest.approx(want, rel=1e-9, abs=1e-12)


def test_fractional_warmup_and_constant() -> None:
    r = Recipe(lr=0.4, warmup_epochs=0.5, schedule="constant")
    got = lrs_per_batch(r, 2, 8)  # W = 4 batches
    want = [0.1, 0.2, 0.3, 0.4] + [0.4] * 12
    assert got == pytest.approx(want, rel=1e-9)


def test_bad_recipes_raise_user_errors() -> None:
    with pytest.raises(RecipeError, match="milestone"):
        build_scheduler(
            torch.optim.SGD(nn.Linear(1, 1).parameters(), lr=0.1),
            Recipe(warmup_epochs=5, milestones=(3,)),
            epochs=10,
            batches_per_epoch=2,
        )
    with pytest.raises(RecipeError, match="lr must be > 0"):
        build_optimizer(nn.Linear(1, 1), Recipe(lr=0.0))


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)  # weight 4-D, bias 1-D
        self.bn = nn.BatchNorm2d(4)  # 1-D weight and bias
        self.bnet_kernel = nn.Parameter(torch.zeros(4, 1, 3, 3))  # BNET-like (C,1,k,k)
        self.scalar = nn.Parameter(torch.zeros(()))  # 0-D
        self.fc = nn.Linear(4, 2)
        self.frozen = nn.Parameter(torch.zeros(3), requires_grad=False)


def test_weight_decay_exclusion_by_ndim() -> None:
    net = _Net()
    on = param_groups(net, Recipe(weight_decay=1e-4, no_decay_norm_and_bias=True))
    names = {id(p): n for n, p in net.named_parameters()}
    decayed = {names[id(p)] for p in on[0]["params"]}
    free = {names[id(p)] for p in on[1]["params"]}
    assert decayed == {"conv.weight", "bnet_kernel", "fc.weight"}
    assert free == {"conv.bias", "bn.weight", "bn.bias", "scalar", "fc.bias"}
    assert (on[0]["weight_decay"], on[1]["weight_decay"]) == (1e-4, 0.0)
    off = param_groups(net, Recipe(weight_decay=1e-4))
    assert len(off) == 1 and len(off[0]["params"]) == 8  # every trainable parameter


def test_nesterov_and_momentum_reach_sgd() -> None:
    opt = build_optimizer(nn.Linear(2, 2), Recipe(nesterov=True, momentum=0.8))
    assert opt.param_groups[0]["nesterov"] is True
    assert opt.param_groups[0]["momentum"] == 0.8
