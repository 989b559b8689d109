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
  Dinneen, ICLR 2020, arXiv 1906.03548, Sec 3.3) pulls each norm layer's parameters toward
  the identity affine the layer names (`normbench.variants_api.identity_targets`: its
  `decay_targets()` hook, else a (C,) gamma toward 1): BNET's and UBN's kernels toward the
  centred delta, SaBN's branch gammas (its table's first C columns) toward 1. The gradient
  then gets `norm_weight_decay * (w - I)`, the exact analogue of torch's `weight_decay * w`.
  Other norm parameters still decay toward 0. A layer that cannot name its identity is
  refused at suite validation.
- `no_decay_norm_and_bias=True` is an alias of `norm_weight_decay=0, bias_weight_decay=0`
  (unlike its first version, which chose by `ndim <= 1`, it now also frees BNET/UBN kernels
  and SaBN tables, and it still decays nothing but those two kinds).
Parameters with equal settings share one SGD group, so the default recipe has one group.
`optimizer: adam` takes the same groups into torch's Adam (weight decay as L2 added to the
gradient, as torch's Adam does; decay toward the identity affine is SGD's only).

Schedule, stepped once per training batch (torch's own schedulers):
- warm-up (`warmup_epochs` > 0): `LinearLR` from lr/W to lr over the first W batches, so
  batch t (0-based, t < W) trains at lr*(t+1)/W and batch W-1 at the full lr;
- then "multistep" (`MultiStepLR`, x`gamma` at each milestone), "cosine"
  (`CosineAnnealingLR`, reaching 0 just after the last batch), "constant" or "inverse_time"
  (`LambdaLR`, lr / (1 + `lr_decay`·t) at the t-th batch after warm-up, t from 0: AdaIN's
  `adjust_learning_rate`, called before each iteration with its 0-based count);
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
from torch.optim import SGD, Adam, Optimizer
from torch.optim.lr_scheduler import (
    ConstantLR,
    CosineAnnealingLR,
    LambdaLR,
    LinearLR,
    LRScheduler,
    MultiStepLR,
    SequentialLR,
)

from normbench.errors import UserError
from normbench.spec import Recipe


class RecipeError(UserError, ValueError):
    """A recipe whose numbers cannot describe a schedule."""


class DecayTargetSGD(SGD):
    """torch's SGD, plus groups whose L2 term pulls toward the identity affine.

    A group with `decay_toward="identity"` gets `weight_decay * (w - I)` added to each
    gradient before the ordinary SGD step (with the group's own weight decay switched off for
    that step), where I is `targets[w]`: what the layer named (`variants_api.identity_targets`:
    1 for a gamma, the centred delta for a depthwise kernel).
    """

    def __init__(
        self, params: Any, *, targets: dict[torch.Tensor, torch.Tensor], **kwargs: Any
    ) -> None:
        super().__init__(params, **kwargs)
        self.targets = targets  # rebuilt from the model with the optimizer, never saved

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
                    p.grad.add_(p, alpha=wd).sub_(self.targets[p], alpha=wd)  # += wd * (p - I)
            saved.append((group, wd))
            group["weight_decay"] = 0.0
        try:
            super().step()
        finally:
            for group, wd in saved:
                group["weight_decay"] = wd
        return loss


def is_norm_module(module: nn.Module) -> bool:
    """A normalization layer: a registered variant (built-in or plugin) or a torch norm."""
    from normbench.variants_api import VARIANTS

    types = tuple(e.obj for e in VARIANTS.entries() if isinstance(e.obj, type))
    torch_norms = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)
    return isinstance(module, types + torch_norms)


def decays(recipe: Recipe) -> tuple[float, float, float]:
    """(other, norm, bias) weight decay after the alias and the None defaults."""
    check_recipe(recipe)
    return recipe.decays()


Targets = dict[torch.Tensor, torch.Tensor]


def _classify(model: nn.Module, identity: bool) -> tuple[dict[str, list[nn.Parameter]], Targets]:
    """Trainable parameters by kind ("norm_weight": those a norm layer pulls toward its
    identity affine, with `identity`; "norm", "bias", "other"), and the identity targets."""
    from normbench.variants_api import identity_targets

    kinds: dict[str, list[nn.Parameter]] = {k: [] for k in ("norm_weight", "norm", "bias", "other")}
    targets: Targets = {}
    seen: set[int] = set()
    for mod_name, module in model.named_modules():
        if not is_norm_module(module):
            continue
        try:
            named = identity_targets(module) if identity else {}
        except ValueError as exc:
            raise RecipeError(
                f"recipe: norm_decay_toward='identity' needs each norm layer to name its "
                f"identity affine, but {mod_name or 'the model'} ({type(module).__name__}): {exc}"
            ) from None
        for name, p in module.named_parameters():
            if id(p) in seen or not p.requires_grad:
                continue
            seen.add(id(p))
            kinds["norm_weight" if name in named else "norm"].append(p)
            if name in named:
                targets[p] = named[name].detach().to(p.device, p.dtype)
    for name, p in model.named_parameters():
        if id(p) in seen or not p.requires_grad:
            continue
        seen.add(id(p))
        kinds["bias" if name.rsplit(".", 1)[-1] == "bias" else "other"].append(p)
    return kinds, targets


def param_groups(model: nn.Module, recipe: Recipe) -> tuple[list[dict[str, Any]], Targets]:
    """SGD parameter groups (see the module docstring), equal settings sharing one group, and
    the identity targets of the "identity" group's parameters.

    Raises RecipeError when `norm_decay_toward="identity"` meets a norm layer that cannot name
    its identity affine (`normbench.variants_api.identity_targets`)."""
    wd, norm, bias = decays(recipe)
    toward = recipe.decay_toward
    kinds, targets = _classify(model, toward == "identity")
    settings = {
        "other": (wd, "zero"),
        "bias": (bias, "zero"),
        "norm": (norm, "zero"),
        "norm_weight": (norm, toward),
    }
    groups: dict[tuple[float, str], list[nn.Parameter]] = {}
    for kind in ("other", "norm_weight", "norm", "bias"):
        if kinds[kind]:
            groups.setdefault(settings[kind], []).extend(kinds[kind])
    out = [{"params": ps, "weight_decay": d, "decay_toward": t} for (d, t), ps in groups.items()]
    return out, targets


def build_optimizer(model: nn.Module, recipe: Recipe, *, fused: bool = False) -> Optimizer:
    """SGD with momentum (Nesterov when asked), or Adam, over `param_groups`. `fused`:
    torch's fused kernel, which can skip a step on the device (`found_inf`;
    normbench.engine.loop)."""
    check_recipe(recipe)
    groups, targets = param_groups(model, recipe)
    if recipe.optimizer == "adam":
        return Adam(groups, lr=recipe.lr, weight_decay=recipe.weight_decay, fused=fused or None)
    return DecayTargetSGD(
        groups,
        targets=targets,
        lr=recipe.lr,
        momentum=recipe.momentum,
        nesterov=recipe.nesterov,
        weight_decay=recipe.weight_decay,
        fused=fused or None,
    )


def check_recipe(recipe: Recipe) -> None:
    """Raise RecipeError for combinations no optimiser or schedule can follow. A `Recipe`
    checks its single numbers on construction (lr > 0, weight_decay and warmup_epochs >= 0,
    a known schedule, increasing milestones, the declared bounds of normbench.spec); these
    are the rules across its fields it leaves to us."""
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
    if recipe.optimizer == "adam" and (recipe.nesterov or recipe.decay_toward == "identity"):
        raise RecipeError(
            "recipe: optimizer adam takes neither nesterov nor norm_decay_toward identity "
            "(SGD's); drop them or use optimizer sgd"
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
    elif recipe.schedule == "inverse_time":
        decay = recipe.lr_decay
        after = LambdaLR(optimizer, lambda t: 1.0 / (1.0 + decay * t))
    else:
        after = ConstantLR(optimizer, factor=1.0, total_iters=0)
    if w == 0:
        return after
    warm = LinearLR(optimizer, start_factor=1.0 / w, end_factor=1.0, total_iters=w - 1)
    return SequentialLR(optimizer, [warm, after], milestones=[w])


def current_lr(optimizer: Optimizer) -> float:
    """The lr of the first parameter group (all groups share one schedule)."""
    lr = optimizer.param_groups[0]["lr"]
    return float(lr.item() if isinstance(lr, torch.Tensor) else lr)
