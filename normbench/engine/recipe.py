"""Optimiser, learning-rate schedule and loss built from a `Recipe`.

Weight decay. With `no_decay_norm_and_bias` ("four things" #3), every parameter with
`ndim <= 1` (norm scales and shifts, biases, UBN/RBN calibration weights, SaBN's shared
affine) goes to a group with weight decay 0; everything else keeps `recipe.weight_decay`.
The rule is by shape, not by module, so it treats every variant alike (docs/variants.md#contract
point 8 keeps per-channel parameters (C,)). NOTE: BNET's affine kernel is (C, 1, k, k), so it is
*still decayed* under this rule (docs/variants.md#bnet); SaBN's branch embedding (K, 2C) is decayed
too.

Schedule, stepped once per training batch (torch's own schedulers):
- warm-up (`warmup_epochs` > 0): `LinearLR` from lr/W to lr over the first W batches, so
  batch t (0-based, t < W) trains at lr*(t+1)/W and batch W-1 at the full lr;
- then "multistep" (`MultiStepLR`, x`gamma` at each milestone), "cosine"
  (`CosineAnnealingLR`, reaching 0 just after the last batch) or "constant";
- joined by `SequentialLR` at batch W.

Milestones are epochs counted from the start of training (warm-up included) and become batch
counts: a milestone m decays the lr for the first batch of 0-based epoch m, so with
milestones (60, 120, 160) epochs 1-60 (1-based) train at lr, 61-120 at lr*gamma, and so on.
The CIFAR-100 reference code (pytorch-cifar100) calls `scheduler.step(epoch)` with 1-based
epochs before training, which decays one epoch early (its 60th epoch already uses lr*0.2);
we reproduce the intended boundaries instead.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.optim import SGD, Optimizer
from torch.optim.lr_scheduler import (
    ConstantLR,
    CosineAnnealingLR,
    LinearLR,
    LRScheduler,
    MultiStepLR,
    SequentialLR,
)

from normbench.engine.spec import Recipe
from normbench.errors import UserError


class RecipeError(UserError, ValueError):
    """A recipe whose numbers cannot describe a schedule."""


def param_groups(model: nn.Module, recipe: Recipe) -> list[dict]:
    """SGD parameter groups: one decayed group, plus a no-decay group for ndim <= 1 params."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not recipe.no_decay_norm_and_bias:
        return [{"params": params, "weight_decay": recipe.weight_decay}]
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    return [
        {"params": decay, "weight_decay": recipe.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(model: nn.Module, recipe: Recipe) -> Optimizer:
    """SGD with momentum (Nesterov when asked) over `param_groups`."""
    check_recipe(recipe)
    return SGD(
        param_groups(model, recipe),
        lr=recipe.lr,
        momentum=recipe.momentum,
        nesterov=recipe.nesterov,
        weight_decay=recipe.weight_decay,
    )


def check_recipe(recipe: Recipe) -> None:
    """Raise RecipeError for numbers no schedule can follow."""
    if recipe.lr <= 0:
        raise RecipeError(f"recipe: lr must be > 0, but got lr={recipe.lr}")
    if recipe.nesterov and recipe.momentum <= 0:
        raise RecipeError(f"recipe: nesterov needs momentum > 0, got momentum={recipe.momentum}")
    if recipe.warmup_epochs < 0:
        raise RecipeError(f"recipe: warmup_epochs must be >= 0, got {recipe.warmup_epochs}")
    if recipe.schedule not in ("multistep", "cosine", "constant"):
        raise RecipeError(
            f"recipe: schedule must be one of multistep, cosine, constant, "
            f"but got {recipe.schedule!r}"
        )
    if list(recipe.milestones) != sorted(recipe.milestones):
        raise RecipeError(f"recipe: milestones must increase, got {list(recipe.milestones)}")
    if recipe.milestones and min(recipe.milestones) < recipe.warmup_epochs:
        raise RecipeError(
            f"recipe: every milestone must be >= warmup_epochs ({recipe.warmup_epochs}), "
            f"got {list(recipe.milestones)}"
        )


def warmup_batches(recipe: Recipe, batches_per_epoch: int) -> int:
    """Number of warm-up batches W (0 or 1 means no warm-up)."""
    return int(round(recipe.warmup_epochs * batches_per_epoch))


def build_scheduler(
    optimizer: Optimizer, recipe: Recipe, *, epochs: int, batches_per_epoch: int
) -> LRScheduler:
    """The per-batch schedule described in the module docstring."""
    check_recipe(recipe)
    if batches_per_epoch < 1:
        raise RecipeError(f"recipe: an epoch needs at least one batch, got {batches_per_epoch}")
    w = warmup_batches(recipe, batches_per_epoch)
    w = w if w > 1 else 0  # a one-batch warm-up starts at lr/1 = lr: nothing to do
    total = epochs * batches_per_epoch
    if recipe.schedule == "multistep":
        after: LRScheduler = MultiStepLR(
            optimizer, [m * batches_per_epoch - w for m in recipe.milestones], recipe.gamma
        )
    elif recipe.schedule == "cosine":
        after = CosineAnnealingLR(optimizer, T_max=max(total - w, 1), eta_min=0.0)
    else:
        after = ConstantLR(optimizer, factor=1.0, total_iters=0)
    if w == 0:
        return after
    warm = LinearLR(optimizer, start_factor=1.0 / w, end_factor=1.0, total_iters=w - 1)
    return SequentialLR(optimizer, [warm, after], milestones=[w])


def build_criterion(recipe: Recipe) -> nn.Module:
    """Training loss: cross-entropy with the recipe's label smoothing."""
    return nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing)


def current_lr(optimizer: Optimizer) -> float:
    """The lr of the first parameter group (all groups share one schedule)."""
    lr = optimizer.param_groups[0]["lr"]
    return float(lr.item() if isinstance(lr, torch.Tensor) else lr)
