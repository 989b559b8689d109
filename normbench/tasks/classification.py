"""Image classification, the built-in task: the backbone is the whole model (its last linear
layer gives one logit per class), trained with cross-entropy (the recipe's label smoothing
in training, none in evaluation) and scored by top-1 (the headline, higher is better), top-5
and the mean cross-entropy loss (`normbench.contract.CLASSIFICATION`).

A batch is images (N, C, H, W) and int64 labels (N,). Evaluation keeps its sums on the device
until the end of a split, then sums them over data-parallel ranks: top-k counts a hit when the
label is among the k largest logits (k = min(5, classes)).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from normbench.contract import CLASSIFICATION, TaskCost
from normbench.tasks.base import Batch, EvalContext, ModelContext, Step


class Classification:
    """Image classification (the task every trial ran before tasks existed)."""

    scoring = CLASSIFICATION

    def __init__(self) -> None:
        self.criterion: nn.Module = nn.CrossEntropyLoss()

    @classmethod
    def cost(cls, options: dict[str, Any]) -> TaskCost:
        """A training image: forward + backward (~3 forwards); an evaluated one: a forward."""
        return TaskCost(3.0, 1.0, "forward + backward ~ 3 forwards")

    def build_model(self, ctx: ModelContext) -> nn.Module:
        self.criterion = nn.CrossEntropyLoss(label_smoothing=ctx.recipe.label_smoothing).to(
            ctx.device
        )
        return ctx.backbone(ctx.num_classes, in_channels=ctx.in_channels)

    def training_step(self, forward: Callable[..., Any], batch: Batch) -> Step:
        x, y = batch
        logits = forward(x)
        loss = self.criterion(logits.float(), y)
        hits = (logits.detach().argmax(dim=1) == y).sum()
        return Step(loss, {"top1": 100.0 * hits.double()})  # percent, exact in float64

    @torch.no_grad()
    def evaluate(
        self, forward: Callable[..., Any], batches: Iterable[Batch], ctx: EvalContext
    ) -> dict[str, float | None]:
        loss = torch.zeros((), dtype=torch.float64, device=ctx.device)
        hits = torch.zeros(2, dtype=torch.int64, device=ctx.device)  # top-1, top-5
        seen = 0  # on the host: sums stay on the device until the end
        for x, y in batches:
            with ctx.autocast():
                logits = forward(ctx.inputs(x)).float()
            loss += F.cross_entropy(logits, y, reduction="sum").double()
            k = min(5, logits.shape[1])
            top = logits.topk(k, dim=1).indices  # (N, k)
            match = top == y[:, None]  # (N, k)
            hits += torch.stack([match[:, 0].sum(), match.any(dim=1).sum()])
            seen += len(y)
        totals = torch.cat([hits, hits.new_tensor([seen])])  # top-1, top-5, seen
        loss, h = ctx.all_sum(loss), ctx.all_sum(totals).tolist()
        if h[2] == 0:
            return dict.fromkeys(("loss", "top1", "top5"))
        n = h[2]
        return {"loss": float(loss) / n, "top1": 100.0 * h[0] / n, "top5": 100.0 * h[1] / n}
