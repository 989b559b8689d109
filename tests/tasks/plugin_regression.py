"""Test plugin task (a plugin file, loaded through a suite's `plugins:` or `TrialSpec.plugins`):
digit-value regression, a task whose headline is lower-is-better.

`digit_regression` predicts the value 0-9 of a handwritten digit (scikit-learn's digits) as a
real number: the backbone with one output, trained with the mean squared error (or Huber's
loss with `huber_delta` > 0), scored by RMSE (the headline, lower is better) and MAE.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from normbench.contract import SPLITS, Metric, Scoring
from normbench.tasks import EvalContext, ModelContext, Step, register_task


@register_task("digit_regression")
class DigitRegression:
    """The value of a digit from its image, as a real number."""

    scoring = Scoring(
        metrics=(
            Metric("loss", "loss", "", False, SPLITS, "mean squared error (or Huber's loss)"),
            Metric("rmse", "RMSE", "", False, ("val", "test"), "root mean squared error"),
            Metric("mae", "MAE", "", False, SPLITS, "mean absolute error"),
        ),
        headline="rmse",
        shown=("mae",),
    )

    def __init__(self, *, huber_delta: float = 0.0) -> None:
        self.huber_delta = huber_delta

    @classmethod
    def check_options(
        cls, options: dict[str, Any], *, dataset: str | None = None, backbone: str | None = None
    ) -> dict[str, str]:
        out = {}
        if options.get("huber_delta", 0.0) < 0:
            out["huber_delta"] = f"huber_delta must be >= 0, but got {options['huber_delta']}"
        if dataset is not None and dataset != "digits":
            out["dataset"] = f"digit_regression needs the digits data set, not {dataset!r}"
        return out

    def build_model(self, ctx: ModelContext) -> nn.Module:
        return ctx.backbone(1, in_channels=ctx.in_channels)

    def _loss(self, pred: torch.Tensor, target: torch.Tensor, reduction: str) -> torch.Tensor:
        if self.huber_delta > 0:
            return F.huber_loss(pred, target, delta=self.huber_delta, reduction=reduction)
        return F.mse_loss(pred, target, reduction=reduction)

    def training_step(self, forward: Callable[..., Any], batch: Any) -> Step:
        x, y = batch
        pred = forward(x).float().squeeze(1)  # (N,)
        target = y.float()
        loss = self._loss(pred, target, "mean")
        return Step(loss, {"mae": (pred.detach() - target).abs().sum()})

    @torch.no_grad()
    def evaluate(
        self, forward: Callable[..., Any], batches: Iterable[Any], ctx: EvalContext
    ) -> dict[str, float | None]:
        sums = torch.zeros(4, dtype=torch.float64, device=ctx.device)  # loss, sq, abs, n
        for x, y in batches:
            with ctx.autocast():
                pred = forward(ctx.inputs(x)).float().squeeze(1)
            err = pred.double() - y.double()
            loss = self._loss(pred, y.float(), "sum").double()
            sums += torch.stack([loss, (err**2).sum(), err.abs().sum(), err.new_tensor(len(y))])
        loss, sq, ab, n = ctx.all_sum(sums).tolist()
        if n == 0:
            return dict.fromkeys(("loss", "rmse", "mae"))
        return {"loss": loss / n, "rmse": math.sqrt(sq / n), "mae": ab / n}
