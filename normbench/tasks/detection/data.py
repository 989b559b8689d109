"""COCO-format detection data (an annotation JSON and an image folder) read by torchvision's COCO
loader and batched as torchvision's detection models expect.

`torchvision.datasets.CocoDetection` reads the files (pycocotools' COCO API underneath);
`wrap_dataset_for_transforms_v2` turns each image's annotations into `tv_tensors`: boxes
`BoundingBoxes` (K, 4) XYXY in pixels, `labels` int64 (K,) = COCO category ids (as
torchvision's COCO models use them: `num_classes` = largest id + 1, 0 the background), and,
for instance segmentation, `masks` uint8 (K, H, W) from the polygons or RLE. An image without
annotations gets empty boxes, labels and masks (torchvision's detectors train on those as
background-only images). Transforms v2 then apply the same flip to image, boxes and masks.

A batch is what `GeneralizedRCNN.forward` takes: a list of float images (3, H, W) in [0, 1]
(the model normalises and resizes them itself) and a list of target dicts, on the device.

Reproducibility as in the folder loader: an epoch's order and each image's augmentation
seed come from a generator seeded by (seed, epoch), and each sample's transform runs under
that seed, so a batch does not depend on the worker count.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from normbench.data.folder_loader import epoch_keys

Batch = tuple[list[torch.Tensor], list[dict[str, Any]]]


class DetectionTransform:
    """(PIL image, target) -> (float image (3, H, W) in [0, 1], target), boxes and masks
    flipped with the image when `hflip`; degenerate boxes (no area) are dropped."""

    def __init__(self, *, hflip: bool, masks: bool) -> None:
        steps: list[Any] = [v2.ToImage()]
        if hflip:
            steps.append(v2.RandomHorizontalFlip(0.5))
        steps += [v2.ToDtype(torch.float32, scale=True), v2.SanitizeBoundingBoxes()]
        self.pipeline, self.masks = v2.Compose(steps), masks

    def __call__(self, image: Any, target: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        if "boxes" not in target:  # an image without annotations
            w, h = image.size
            target = {
                **target,
                "boxes": tv_tensors.BoundingBoxes(
                    torch.zeros(0, 4), format="XYXY", canvas_size=(h, w)
                ),
                "labels": torch.zeros(0, dtype=torch.int64),
            }
            if self.masks:
                target["masks"] = tv_tensors.Mask(torch.zeros(0, h, w, dtype=torch.uint8))
        return self.pipeline(image, target)


def coco_dataset(images: Path, annotations: Path, *, train: bool, hflip: bool, masks: bool):
    """The COCO-format files as a Dataset of (image, target), through torchvision's loader."""
    from torchvision.datasets import CocoDetection, wrap_dataset_for_transforms_v2

    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its loading times
        base = CocoDetection(
            str(images),
            str(annotations),
            transforms=DetectionTransform(hflip=train and hflip, masks=masks),
        )
    keys = ("image_id", "boxes", "labels", *(("masks",) if masks else ()))
    return wrap_dataset_for_transforms_v2(base, target_keys=keys)


class _Seeded(Dataset):
    """(index, seed) -> the sample, its transform's randomness seeded by `seed`."""

    def __init__(self, base: Dataset) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, seed = key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.base[index]


def collate(batch: list[tuple[torch.Tensor, dict[str, Any]]]) -> Batch:
    """A list of (image, target) -> (images, targets): detectors take lists, not stacks."""
    images, targets = zip(*batch, strict=True)
    return list(images), list(targets)


class DetectionLoader:
    """Batches of (images, targets) on `device`, `batch_size` images each; training shuffles
    per (seed, epoch) and drops a last incomplete batch, evaluation keeps every image."""

    def __init__(
        self,
        dataset: Dataset,
        *,
        batch_size: int,
        device: torch.device | str,
        train: bool,
        seed: int = 0,
        limit_batches: int | None = None,
        num_workers: int = 0,
    ) -> None:
        self.dataset, self.batch_size, self.train = _Seeded(dataset), int(batch_size), train
        self.device, self.seed, self.limit_batches = torch.device(device), int(seed), limit_batches
        self.num_workers, self.epoch = num_workers, 0

    def __len__(self) -> int:
        n, bs = len(self.dataset), self.batch_size
        full = n // bs if self.train else -(-n // bs)
        return full if self.limit_batches is None else min(full, self.limit_batches)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[Batch]:
        epoch, self.epoch = self.epoch, self.epoch + 1
        keys = epoch_keys(len(self.dataset), self.train, self.seed, epoch)
        bs = self.batch_size
        batches = [keys[k * bs : (k + 1) * bs] for k in range(len(self))]
        loader = DataLoader(
            self.dataset, batch_sampler=batches, num_workers=self.num_workers, collate_fn=collate
        )
        for images, targets in loader:
            yield (
                [x.to(self.device) for x in images],
                [{k: _to(v, self.device) for k, v in t.items()} for t in targets],
            )


def _to(value: Any, device: torch.device) -> Any:
    return value.to(device) if isinstance(value, torch.Tensor) else value
