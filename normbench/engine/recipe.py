"""Optimiser, learning-rate schedule and loss built from a `Recipe`.

Weight decay (L2, added to the gradient inside SGD as torch does) has one switch per kind of
parameter, each with one meaning:
- `norm_weight_decay`: every parameter of a normalization layer, found by module type (a
  registered variant, or a torch `_NormBase`/`GroupNorm`/`LayerNorm`), whatever its shape:
  gamma and beta, BNET's and UBN's depthwise affine kernels, RBN/UBN calibration weights and
  SaBN's branch tables;
- `bias_weight_decay`: the `bias` of every other module (convolutions, linear layers);
- `weight_decay`: everything else. Either switch left at None takes `weight_decay`.
- `norm_decay_toward="identity"` ("four things" #3: L2 on beta and on gamma - 1, Summers &
  Dinneen, ICLR 2020, arXiv 1906.03548, Sec 3.3) pulls each norm layer's `.weight` toward
  the identity affine instead of 0: a (C,) gamma toward 1, a depthwise (C, 1, k, k) kernel
  toward the centred delta kernel, SaBN's branch gammas (its table's first C columns)
  toward 1. The gradient then gets `norm_weight_decay * (w - I)`, the
  exact analogue of torch's `weight_decay * w`. Other norm parameters still decay toward 0.
- `no_decay_norm_and_bias=True` is an alias of `norm_weight_decay=0, bias_weight_decay=0`
  (unlike its first version, which chose by `ndim <= 1`, it now also frees BNET/UBN kernels
  and SaBN tables, and it still decays nothing but those two kinds).
Parameters with equal settings share one SGD group, so the default recipe has one group.

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

from typing import Any

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


class DecayTargetSGD(SGD):
    """torch's SGD, plus groups whose L2 term pulls toward the identity affine.

    A group with `decay_toward="identity"` gets `weight_decay * (w - I)` added to each
    gradient before the ordinary SGD step (with the group's own weight decay switched off for
    that step), where I is 1 for a (C,) gamma and the centred delta for a (C, 1, k, k) kernel.
    """

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        saved = []
        for group in self.param_groups:
            wd = group["weight_decay"]
            if group.get("decay_toward") != "identity" or wd == 0:
                continue
            for p in group["params"]:
                if p.grad is not None:
                    p.grad.add_(p, alpha=wd)
                    _identity_view(p.grad).sub_(wd)  # grad += wd * (p - I)
            saved.append((group, wd))
            group["weight_decay"] = 0.0
        try:
            super().step()
        finally:
            for group, wd in saved:
                group["weight_decay"] = wd
        return loss


def _identity_view(t: torch.Tensor) -> torch.Tensor:
    """The entries of `t` that are 1 in the identity affine: all of a (C,) gamma, the gamma
    columns [0, C) of a SaBN (K, 2C) branch table, the centre tap of each channel of a
    depthwise (C, 1, k, k) kernel."""
    if t.ndim == 1:
        return t
    if t.ndim == 2:
        return t[:, : t.shape[1] // 2]
    k = t.shape[-1]
    return t[:, 0, k // 2, k // 2]


def _has_identity(name: str, p: torch.Tensor) -> bool:
    if p.ndim == 1:
        return True
    if p.ndim == 2:  # only SaBN's branch table (K, 2C)
        return name.endswith("embed.weight") and p.shape[1] % 2 == 0
    return p.ndim == 4 and p.shape[1] == 1 and p.shape[2] == p.shape[3] and p.shape[3] % 2 == 1


# Norm-layer parameters that hold a scale gamma: `.weight` (gamma or a BNET/UBN kernel) and
# SaBN's branch table `embed.weight` (gamma_k in columns [0, C), beta_k in [C, 2C)).
_SCALES = ("weight", "embed.weight")


def is_norm_module(module: nn.Module) -> bool:
    """A normalization layer: a registered variant (built-in or plugin) or a torch norm."""
    from normbench.registry import VARIANTS

    types = tuple(e.obj for e in VARIANTS.entries() if isinstance(e.obj, type))
    torch_norms = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)
    return isinstance(module, types + torch_norms)


def decays(recipe: Recipe) -> tuple[float, float, float]:
    """(other, norm, bias) weight decay after the alias and the None defaults."""
    check_recipe(recipe)
    wd = recipe.weight_decay
    if recipe.no_decay_norm_and_bias:
        return wd, 0.0, 0.0
    norm = wd if recipe.norm_weight_decay is None else recipe.norm_weight_decay
    bias = wd if recipe.bias_weight_decay is None else recipe.bias_weight_decay
    return wd, norm, bias


def _classify(model: nn.Module) -> dict[str, list[tuple[str, nn.Parameter]]]:
    """Trainable parameters by kind: "norm_weight", "norm", "bias", "other"."""
    kinds: dict[str, list[tuple[str, nn.Parameter]]] = {
        k: [] for k in ("norm_weight", "norm", "bias", "other")
    }
    seen: set[int] = set()
    for mod_name, module in model.named_modules():
        if not is_norm_module(module):
            continue
        for name, p in module.named_parameters():
            if id(p) in seen or not p.requires_grad:
                continue
            seen.add(id(p))
            kind = "norm_weight" if name in _SCALES else "norm"
            kinds[kind].append((f"{mod_name}.{name}".lstrip("."), p))
    for name, p in model.named_parameters():
        if id(p) in seen or not p.requires_grad:
            continue
        seen.add(id(p))
        kinds["bias" if name.rsplit(".", 1)[-1] == "bias" else "other"].append((name, p))
    return kinds


def param_groups(model: nn.Module, recipe: Recipe) -> list[dict[str, Any]]:
    """SGD parameter groups (see the module docstring); equal settings share one group.

    Raises RecipeError when `norm_decay_toward="identity"` meets a norm `.weight` with no
    identity value (neither (C,) nor a depthwise (C, 1, k, k) kernel with odd k).
    """
    wd, norm, bias = decays(recipe)
    kinds = _classify(model)
    toward = recipe.norm_decay_toward if norm != 0 else "zero"
    if toward == "identity":
        bad = [f"{n} {tuple(p.shape)}" for n, p in kinds["norm_weight"] if not _has_identity(n, p)]
        if bad:
            raise RecipeError(
                "recipe: norm_decay_toward='identity' needs each norm layer's .weight to be "
                f"(C,) or a depthwise (C, 1, k, k) kernel with odd k, but got {', '.join(bad)}"
            )
    settings = {
        "other": (wd, "zero"),
        "bias": (bias, "zero"),
        "norm": (norm, "zero"),
        "norm_weight": (norm, toward),
    }
    groups: dict[tuple[float, str], list[nn.Parameter]] = {}
    for kind in ("other", "norm_weight", "norm", "bias"):
        if kinds[kind]:
            groups.setdefault(settings[kind], []).extend(p for _, p in kinds[kind])
    return [{"params": ps, "weight_decay": d, "decay_toward": t} for (d, t), ps in groups.items()]


def build_optimizer(model: nn.Module, recipe: Recipe, *, fused: bool = False) -> Optimizer:
    """SGD with momentum (Nesterov when asked) over `param_groups`. `fused`: torch's fused
    kernel, which can skip a step on the device (`found_inf`; normbench.engine.loop)."""
    check_recipe(recipe)
    return DecayTargetSGD(
        param_groups(model, recipe),
        lr=recipe.lr,
        momentum=recipe.momentum,
        nesterov=recipe.nesterov,
        weight_decay=recipe.weight_decay,
        fused=fused or None,
    )


def check_recipe(recipe: Recipe) -> None:
    """Raise RecipeError for combinations no optimiser or schedule can follow. A `Recipe`
    checks its single numbers on construction (lr > 0, weight_decay and warmup_epochs >= 0,
    a known schedule, increasing milestones); these are the rules it leaves to us."""
    for name in ("norm_weight_decay", "bias_weight_decay"):
        value = getattr(recipe, name)
        if value is not None and value < 0:
            raise RecipeError(f"recipe: {name} must be >= 0, but got {name}={value}")
    if recipe.norm_decay_toward not in ("zero", "identity"):
        raise RecipeError(
            "recipe: norm_decay_toward must be one of zero, identity, "
            f"but got {recipe.norm_decay_toward!r}"
        )
    explicit = {
        k: v
        for k in ("norm_weight_decay", "bias_weight_decay")
        if (v := getattr(recipe, k)) not in (None, 0, 0.0)
    }
    if recipe.no_decay_norm_and_bias and explicit:
        given = ", ".join(f"{k}={v}" for k, v in explicit.items())
        raise RecipeError(
            "recipe: no_decay_norm_and_bias=true means norm_weight_decay=0 and "
            f"bias_weight_decay=0, but {given} is also set; drop one of the two"
        )
    if recipe.nesterov and recipe.momentum <= 0:
        raise RecipeError(f"recipe: nesterov needs momentum > 0, got momentum={recipe.momentum}")
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
