"""The task `adversarial`: adversarial training with clean and adversarial branches, scored by
standard and robust accuracy per branch, as SaBN Sec 4.3
(docs/recipes.md#adversarial-training-with-auxiliary-branches-sabn; the contract:
docs/tasks.md).

- **Model.** The trial's backbone (the variant in every norm) inside a `PixelModel`: it takes
  pixels in [0, 1] and normalises them with the data set's mean and std, so the attack's ε is
  in grey levels. The loader's normalised batches are mapped back to pixels first.
- **Step.** `training.adversarial_step`: PGD (`train_steps` steps) through the adversarial
  branch in training mode, then the clean and the adversarial batch through their branches;
  loss = the mean of the two cross-entropies. Train metrics: the top-1 of each pass.
- **Evaluation.** `evaluate.robust_accuracy`: SA and PGD-10/PGD-20 RA through each branch, in
  eval mode, with the training attack's ε, step and random start; `adv_pgd20_ra` is the
  headline.

Options (keyword-only, the SaBN scripts' values as defaults): `eps` and `step_size` in grey
levels (x/255, as the scripts' `--train_eps 8 --train_gamma 2`), `train_steps`, `random_start`,
and `joint_batch` (one batch of both halves with a per-sample branch index, AdvProp's form,
instead of the official two passes). Every branch-indexed layer needs 2 branches.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from normbench.contract import Metric, Scoring, TaskCost
from normbench.tasks.adversarial.attack import PGDAttack, PixelModel
from normbench.tasks.adversarial.evaluate import EVAL_ATTACKS, HEADLINE, robust_accuracy
from normbench.tasks.adversarial.training import (
    adversarial_step,
    branch_problem,
    check_branches,
    has_branches,
)
from normbench.tasks.base import Batch, EvalContext, ModelContext, Step
from normbench.variants_api import norm_layer

_BRANCH_WORDS = {"clean": "clean branch", "adv": "adversarial branch"}


def _scoring() -> Scoring:
    evaluated = []
    for prefix, words in _BRANCH_WORDS.items():
        evaluated.append(
            Metric(f"{prefix}_sa", f"{prefix} SA", "%", True, ("val", "test"),
                   f"top-1 on clean images through the {words}")
        )  # fmt: skip
        for attack in EVAL_ATTACKS:
            evaluated.append(
                Metric(f"{prefix}_{attack.name}_ra", f"{prefix} PGD-{attack.steps} RA", "%",
                       True, ("val", "test"),
                       f"top-1 on PGD-{attack.steps} examples against the {words}")
            )  # fmt: skip
    return Scoring(
        metrics=(
            Metric("loss", "loss", "nats", False, ("train",),
                   "mean of the clean and the adversarial cross-entropy"),
            Metric("clean_top1", "clean top-1", "%", True, ("train",),
                   "training images through the clean branch (batch statistics)"),
            Metric("adv_top1", "adv. top-1", "%", True, ("train",),
                   "PGD training examples through the adversarial branch"),
            *evaluated,
        ),
        headline=HEADLINE,
        shown=("adv_sa", "adv_pgd10_ra", "clean_sa"),
    )  # fmt: skip


class AdversarialTraining:
    """SaBN's adversarial training (clean and adversarial branches), scored by SA and RA."""

    scoring = _scoring()

    def __init__(
        self,
        *,
        eps: float = 8.0,
        step_size: float = 2.0,
        train_steps: int = 7,
        random_start: bool = True,
        joint_batch: bool = False,
    ) -> None:
        def attack(steps: int) -> PGDAttack:
            return PGDAttack(eps / 255, step_size / 255, steps, random_start)

        self.train_attack = attack(train_steps)
        self.eval_attacks = tuple(attack(a.steps) for a in EVAL_ATTACKS)
        self.joint_batch = joint_batch
        self.model: PixelModel | None = None  # set by build_model

    @classmethod
    def cost(
        cls,
        options: dict[str, Any],
        *,
        variant: str | None = None,
        variant_options: dict[str, Any] | None = None,
    ) -> TaskCost:
        """In backbone forwards per image: a PGD step is a forward and a backward to the
        input only (~2); training runs `train_steps` of them, then the clean and the
        adversarial batch forward and backward (~3 each); evaluation runs, per branch (2,
        or 1 for a layer without branches, as `robust_accuracy` does), a forward for SA and,
        per evaluation attack, its steps and a forward of the result."""
        task = cls(**options)
        branches = 2
        if variant is not None:
            with contextlib.suppress(Exception):  # validation reports a layer that fails
                branches = (
                    2 if has_branches(norm_layer(variant, **(variant_options or {}))(8)) else 1
                )
        train = 2.0 * task.train_attack.steps + 6.0
        per_branch = 1.0 + sum(2.0 * a.steps + 1.0 for a in task.eval_attacks)
        steps = "/".join(str(a.steps) for a in task.eval_attacks)
        return TaskCost(
            train,
            branches * per_branch,
            f"PGD-{task.train_attack.steps} training; SA and PGD-{steps} through "
            f"{branches} branch{'es' if branches > 1 else ''}",
        )

    @classmethod
    def check_options(
        cls,
        options: dict[str, Any],
        *,
        variant: str | None = None,
        variant_options: dict[str, Any] | None = None,
    ) -> dict[str, str]:
        """{option: why} for attack settings PGD refuses (ε or step outside [0, 255] grey
        levels, a negative step count); {"variant": why} for a branch-indexed variant with
        fewer than 2 branches (suite validation names each variant)."""
        try:
            cls(**options)
        except ValueError as exc:
            bad = [k for k in ("eps", "step_size", "train_steps") if k in options]
            return {(bad[0] if bad else "eps"): str(exc).replace("[0, 1]", "[0, 255] grey levels")}
        if variant is None:
            return {}
        try:  # a layer of 8 channels tells its branches
            layer = norm_layer(variant, **(variant_options or {}))(8)
        except Exception:  # noqa: BLE001 (the variant's own check reports bad options)
            return {}
        problem = branch_problem(layer, f"variant {variant!r}")
        return {} if problem is None else {"variant": problem}

    def build_model(self, ctx: ModelContext) -> nn.Module:
        backbone = ctx.backbone(ctx.num_classes, in_channels=ctx.in_channels)
        check_branches(backbone)
        # the mean and std the loader normalised with ([0, 1] units, per channel)
        self.model = PixelModel(backbone, tuple(ctx.info["mean"]), tuple(ctx.info["std"]))
        return self.model

    def pixels(self, x: torch.Tensor) -> torch.Tensor:
        """The loader's normalised images (N, C, H, W) as pixels in [0, 1] (to float
        rounding), through the built model's mean and std (on the model's device)."""
        if self.model is None:
            raise RuntimeError("adversarial: build_model runs before the first batch")
        return self.model.to_pixels(x)

    def training_step(self, forward: Callable[..., Any], batch: Batch) -> Step:
        x, y = batch
        model: Any = forward  # an nn.Module: the model, compiled or wrapped for DDP
        out = adversarial_step(
            model, self.pixels(x), y, self.train_attack, joint_batch=self.joint_batch
        )
        sums = {
            "clean_top1": 100.0 * (out.clean_logits.argmax(dim=1) == y).sum().double(),
            "adv_top1": 100.0 * (out.adv_logits.argmax(dim=1) == y).sum().double(),
        }
        return Step(out.loss, sums)

    def evaluate(
        self, forward: Callable[..., Any], batches: Iterable[Batch], ctx: EvalContext
    ) -> dict[str, float | None]:
        pixels = ((ctx.inputs(self.pixels(x)), y) for x, y in batches)
        model: Any = forward  # an nn.Module: the model, compiled or wrapped for DDP
        with ctx.autocast():  # the attack enables gradients itself
            return dict(
                robust_accuracy(
                    model, pixels, self.eval_attacks, all_sum=ctx.all_sum, device=ctx.device
                )
            )
