"""Test plugin (a plugin file): a data set whose batches are lists, and a task that takes them:
the structure detection's batches have (docs/tasks.md#batches), on a task that runs here.

- `digit_masks`: scikit-learn's digits with a segmentation target per image: pixels above
  half intensity get the class 1 + the digit, the rest 0 (background). Its loader
  (`DataSplits.loader`) yields a list of normalised images (1, H, W) and a list of target
  dicts {"mask": int64 (H, W), "label": int64 ()}, on the device, this rank's share only.
- `digit_segmentation`: semantic segmentation into those 11 classes; the model is the
  backbone with one logit per class and pixel (a dense linear decoder) behind a module that
  stacks the list; scored by mean IoU (the headline, %, higher is better; classes absent from
  both the masks and the predictions are left out) and pixel accuracy.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from normbench.contract import SPLITS, DatasetFacts, Metric, Scoring
from normbench.data import register_dataset
from normbench.data.base import DataSplits, TensorSet
from normbench.data.digits import digits
from normbench.data.shard import Shard
from normbench.data.tensor_loader import Normalizer, epoch_generator
from normbench.tasks import EvalContext, ModelContext, Step, register_task

CLASSES = 11  # background + 10 digits


def masks_of(split: TensorSet) -> torch.Tensor:
    """int64 (N, H, W): 1 + the digit where a pixel is above half intensity, else 0."""
    fg = split.images[:, 0] >= 128  # (N, H, W)
    return torch.where(fg, split.labels.view(-1, 1, 1) + 1, 0)


class MaskLoader:
    """Batches of a `TensorSet` as (list of images, list of {"mask", "label"}), on `device`:
    training shuffled per (seed, epoch) with drop_last, evaluation in order; with a
    data-parallel `shard`, this rank's rows only (`normbench.data.shard`)."""

    def __init__(self, split: TensorSet, *, train: bool, batch_size: int, device: Any,
                 mean: tuple[float, ...], std: tuple[float, ...], seed: int = 0,
                 limit_batches: int | None = None, shard: Shard | None = None,
                 **unused: Any) -> None:  # fmt: skip
        self.device = torch.device(device)
        self.images = Normalizer(mean, std, self.device)(split.images.to(self.device))
        self.masks, self.labels = masks_of(split).to(self.device), split.labels.to(self.device)
        self.train, self.batch_size, self.seed = train, int(batch_size), int(seed)
        self.limit_batches, self.shard, self.epoch = limit_batches, shard or Shard(), 0

    def __len__(self) -> int:
        return self.shard.num_batches(
            len(self.labels), self.batch_size, train=self.train, limit_batches=self.limit_batches
        )

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]]:
        epoch, self.epoch = self.epoch, self.epoch + 1
        n, bs = len(self.labels), self.batch_size
        if self.train:
            order = torch.randperm(n, generator=epoch_generator(self.seed, epoch))
            rows = [order[self.shard.train_rows(k, bs)] for k in range(len(self))]
        else:
            rows = [
                torch.arange(n)[self.shard.eval_rows(k, bs, n)]
                for k in self.shard.eval_batches(n, bs)
            ]
        for idx in rows:
            idx = idx.tolist()
            yield (
                [self.images[i] for i in idx],
                [{"mask": self.masks[i], "label": self.labels[i]} for i in idx],
            )


@register_dataset("digit_masks")
@DatasetFacts(train_images=1437, channels=1, image_size=8)
def digit_masks(
    *,
    root: str | None = None,
    download: bool = False,
    image_size: int | None = None,
    val_fraction: float = 0.1,
    split_seed: int = 0,
) -> DataSplits:
    """scikit-learn's digits (8 x 8 unless `image_size`) with a mask per image."""
    base = digits(image_size=image_size or 8, val_fraction=val_fraction, split_seed=split_seed)
    return DataSplits(
        "digit_masks", base.train, base.val, base.test, CLASSES, base.in_channels,
        base.image_size, base.mean, base.std, info=base.info, loader=MaskLoader,
    )  # fmt: skip


class DenseHead(nn.Module):
    """A backbone with one output per class and pixel, reshaped to (N, classes, H, W); takes
    a tensor of images or a list of them (as detection models do)."""

    def __init__(self, backbone: nn.Module, classes: int, size: int) -> None:
        super().__init__()
        self.backbone, self.classes, self.size = backbone, classes, size

    def forward(self, images: Any) -> torch.Tensor:
        x = torch.stack(list(images)) if isinstance(images, list | tuple) else images
        return self.backbone(x).view(-1, self.classes, self.size, self.size)


@register_task("digit_segmentation")
class DigitSegmentation:
    """Semantic segmentation of digits into background and ten digit classes."""

    scoring = Scoring(
        metrics=(
            Metric("loss", "loss", "nats", False, SPLITS, "mean per-pixel cross-entropy"),
            Metric("pixel_acc", "pixel acc.", "%", True, SPLITS, "pixels classified right"),
            Metric("miou", "mIoU", "%", True, ("val", "test"), "mean IoU over the classes"),
        ),
        headline="miou",
        shown=("pixel_acc",),
    )

    @classmethod
    def check_options(cls, options: dict[str, Any], *, dataset: str | None = None) -> dict:
        if dataset is not None and dataset != "digit_masks":
            return {"dataset": f"digit_segmentation needs digit_masks, not {dataset!r}"}
        return {}

    def build_model(self, ctx: ModelContext) -> nn.Module:
        size = ctx.image_size
        body = ctx.backbone(ctx.num_classes * size * size, in_channels=ctx.in_channels)
        return DenseHead(body, ctx.num_classes, size)

    def training_step(self, forward: Callable[..., Any], batch: Any) -> Step:
        images, targets = batch
        logits = forward(images).float()  # (N, C, H, W)
        masks = torch.stack([t["mask"] for t in targets])  # (N, H, W)
        loss = F.cross_entropy(logits, masks)
        hits = (logits.detach().argmax(dim=1) == masks).double().mean(dim=(1, 2)).sum()
        return Step(loss, {"pixel_acc": 100.0 * hits})

    @torch.no_grad()
    def evaluate(
        self, forward: Callable[..., Any], batches: Iterable[Any], ctx: EvalContext
    ) -> dict[str, float | None]:
        confusion = torch.zeros(CLASSES * CLASSES, dtype=torch.int64, device=ctx.device)
        loss = torch.zeros((), dtype=torch.float64, device=ctx.device)
        for images, targets in batches:
            with ctx.autocast():
                logits = forward(ctx.inputs(images)).float()
            masks = torch.stack([t["mask"] for t in targets])
            loss += F.cross_entropy(logits, masks, reduction="sum").double()
            pairs = masks.flatten() * CLASSES + logits.argmax(dim=1).flatten()
            confusion += torch.bincount(pairs, minlength=CLASSES * CLASSES)
        confusion, loss = ctx.all_sum(confusion).view(CLASSES, CLASSES).double(), ctx.all_sum(loss)
        pixels = float(confusion.sum())
        if pixels == 0:
            return dict.fromkeys(("loss", "pixel_acc", "miou"))
        hit = confusion.diag()
        union = confusion.sum(0) + confusion.sum(1) - hit  # true + predicted - both
        seen = union > 0
        return {
            "loss": float(loss) / pixels,
            "pixel_acc": 100.0 * float(hit.sum()) / pixels,
            "miou": 100.0 * float((hit[seen] / union[seen]).mean()),
        }
