"""Arbitrary style transfer, the task of SaBN's NST experiment: AdaIN's network
(`adain_vgg19`, normbench.models.adain) with its style layer from the variant registry (AdaIN,
SaAdaIN), trained on (content, style) batches (`style_folders`, `style_synthetic`) with
AdaIN's objective and scored by it (docs/recipes.md#sabn-style-transfer).

Metrics, lower is better, each on train (the training pass), val and test:

- `content`: content_weight · AdaIN's content loss (normbench.models.style_losses);
- `style`: style_weight · AdaIN's style loss;
- `loss` (the headline): their sum, the objective the decoder (and SaAdaIN's shared affine)
  is trained on.

They are the weighted terms the official code logs and plots (content · 1, style · 10), as
means over samples: a split's value is the mean of its per-sample losses (the official batch
losses average to the same). The task's norm slot takes the style features
(`norm_conditioning = "style"`): it trains only backbones whose norm slots do (`adain_vgg19`),
and suite validation refuses a plain norm layer there in one line.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from normbench.contract import SPLITS, Metric, Scoring
from normbench.tasks.base import Batch, EvalContext, ModelContext, Step

NAMES = ("loss", "content", "style")


class StyleTransfer:
    """AdaIN's style transfer, scored by its weighted content and style losses."""

    scoring = Scoring(
        metrics=(
            Metric("loss", "loss", "", False, SPLITS, "content + style: AdaIN's objective"),
            Metric("content", "content", "", False, SPLITS, "content_weight x content loss"),
            Metric("style", "style", "", False, SPLITS, "style_weight x style loss"),
        ),
        headline="loss",
        shown=("content", "style"),
    )
    norm_conditioning = "style"  # its norm slot: forward(x, style)

    def __init__(self, *, content_weight: float = 1.0, style_weight: float = 10.0) -> None:
        self.content_weight, self.style_weight = float(content_weight), float(style_weight)

    @classmethod
    def cost(cls, options: dict[str, Any]) -> str:
        """Why the dry run gives no estimate (normbench.contract.TaskCost)."""
        return (
            "counts no cost: a step runs the VGG encoder on content, style and output besides "
            "the decoder, which the estimate does not count"
        )

    @classmethod
    def check_options(cls, options: dict[str, Any], **_: Any) -> dict[str, str]:
        return {
            k: f"{k} must be a number >= 0, got {v!r}"
            for k, v in options.items()
            if isinstance(v, bool) or not isinstance(v, int | float) or not v >= 0
        }

    def build_model(self, ctx: ModelContext) -> nn.Module:
        """The backbone: AdaIN's whole network (it outputs images; one output asked)."""
        return ctx.backbone(1, in_channels=ctx.in_channels)

    def _weighted(self, forward: Callable[..., Any], content: Any, style: Any) -> torch.Tensor:
        """(3, N) per-sample loss, content and style terms, weighted, in float64."""
        losses = forward(content, style)
        c = self.content_weight * losses.content.double()
        s = self.style_weight * losses.style.double()
        return torch.stack([c + s, c, s])

    def training_step(self, forward: Callable[..., Any], batch: Batch) -> Step:
        content, style = batch
        terms = self._weighted(forward, content, style)
        sums = terms.detach().sum(dim=1)
        return Step(terms[0].mean().float(), {"content": sums[1], "style": sums[2]})

    @torch.no_grad()
    def evaluate(
        self, forward: Callable[..., Any], batches: Iterable[Batch], ctx: EvalContext
    ) -> dict[str, float | None]:
        sums = torch.zeros(4, dtype=torch.float64, device=ctx.device)  # loss, content, style, n
        for content, style in batches:
            with ctx.autocast():
                terms = self._weighted(forward, ctx.inputs(content), ctx.inputs(style))
            sums += torch.cat([terms.sum(dim=1), terms.new_tensor([terms.shape[1]])])
        total = ctx.all_sum(sums).tolist()
        if total[3] == 0:
            return dict.fromkeys(NAMES)
        return {name: value / total[3] for name, value in zip(NAMES, total, strict=False)}
