"""COCO-format detection data (an annotation JSON and an image folder) read by torchvision's COCO
loader and batched as torchvision's detection models expect; and the `coco` data set.

`torchvision.datasets.CocoDetection` reads the files (pycocotools' COCO API underneath);
`wrap_dataset_for_transforms_v2` turns each image's annotations into `tv_tensors`: boxes
`BoundingBoxes` (K, 4) XYXY in pixels, `labels` int64 (K,) = COCO category ids (as
torchvision's COCO models use them: `num_classes` = largest id + 1, 0 the background),
`area` (K,) and `iscrowd` (K,) as the file gives them, and, with masks, `masks` uint8
(K, H, W) from the polygons or RLE. An image without annotations gets empty ones
(torchvision's detectors train on those as background-only images). The loader's transform
(`DetectionTransform`) then applies the same flip to image, boxes and masks; in training it
drops crowd regions (`iscrowd` 1), as torchvision's COCO reference training does, while
evaluation keeps them (COCOeval ignores detections matched to them).

A batch is what `GeneralizedRCNN.forward` takes: a list of float images (3, H, W) in [0, 1]
(the model normalises and resizes them itself) and a list of target dicts, on the device.

Reproducibility as in the folder loader: an epoch's order and each image's augmentation
seed come from a generator seeded by (seed, epoch), and each sample's transform runs under
that seed, so a batch depends neither on the worker count nor on the data-parallel rank that
loads it (`normbench.data.shard`).
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision import tv_tensors
from torchvision.transforms import v2

from normbench.contract import DatasetFacts
from normbench.data.base import Augment, DataSplits, check_val_fraction
from normbench.data.files import data_root, missing_message
from normbench.data.folder_loader import epoch_keys
from normbench.data.shard import Shard
from normbench.errors import DatasetNotFoundError

Batch = tuple[list[torch.Tensor], list[dict[str, Any]]]
# torchvision's detectors normalise their inputs themselves with ImageNet's constants
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
_PER_OBJECT = ("labels", "area", "iscrowd")


class DetectionTransform:
    """(PIL image, target) -> (float image (3, H, W) in [0, 1], target): boxes and masks
    flipped with the image when `hflip`, degenerate boxes (no area) dropped with their
    label, area and crowd flag; `train` also drops crowd regions."""

    def __init__(self, *, hflip: bool, masks: bool, train: bool = False) -> None:
        steps: list[Any] = [v2.ToImage()]
        if hflip:
            steps.append(v2.RandomHorizontalFlip(0.5))
        steps += [
            v2.ToDtype(torch.float32, scale=True),
            v2.SanitizeBoundingBoxes(labels_getter=lambda s: tuple(s[1][k] for k in _PER_OBJECT)),
        ]
        self.pipeline, self.masks, self.train = v2.Compose(steps), masks, train

    def __call__(self, image: Any, target: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        w, h = image.size
        target = dict(target)
        if "boxes" not in target:  # an image without annotations
            target["boxes"] = tv_tensors.BoundingBoxes(
                torch.zeros(0, 4), format="XYXY", canvas_size=(h, w)
            )
            target["labels"] = torch.zeros(0, dtype=torch.int64)
            if self.masks:
                target["masks"] = tv_tensors.Mask(torch.zeros(0, h, w, dtype=torch.uint8))
        k = len(target["labels"])
        target["area"] = torch.as_tensor(target.get("area", []), dtype=torch.float32).view(k)
        target["iscrowd"] = torch.as_tensor(target.get("iscrowd", []), dtype=torch.int64).view(k)
        if self.train and bool(target["iscrowd"].any()):
            keep = target["iscrowd"] == 0
            for key in ("boxes", "masks", *_PER_OBJECT):
                if key in target:  # indexing returns a plain tensor: keep the tv_tensor type
                    target[key] = tv_tensors.wrap(target[key][keep], like=target[key])
        return self.pipeline(image, target)


def coco_dataset(
    images: Path, annotations: Path, *, masks: bool, train: bool = False, hflip: bool = False
) -> Dataset:
    """The COCO-format files as a Dataset of (image, target), through torchvision's loader;
    samples pass through `DetectionTransform(hflip=train and hflip)`."""
    return TransformedSet(
        coco_files(images, annotations, masks=masks),
        DetectionTransform(hflip=train and hflip, masks=masks, train=train),
    )


def coco_files(images: Path, annotations: Path, *, masks: bool) -> Dataset:
    """(PIL image, target dict) of each image of the annotation file, untransformed."""
    from torchvision.datasets import CocoDetection, wrap_dataset_for_transforms_v2

    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its loading times
        base = CocoDetection(str(images), str(annotations))
    keys = ("image_id", "boxes", "labels", "area", "iscrowd", *(("masks",) if masks else ()))
    return wrap_dataset_for_transforms_v2(base, target_keys=keys)


class TransformedSet(Dataset):
    """`base`'s samples through `transform(image, target)`."""

    def __init__(self, base: Dataset, transform: DetectionTransform) -> None:
        self.base, self.transform = base, transform

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Any:
        return self.transform(*self.base[index])


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
    """Batches of (images, targets) on `device`, `batch_size` images each (this rank's share
    of a data-parallel `shard`); training shuffles per (seed, epoch) and drops a last
    incomplete batch, evaluation keeps every image. `dataset` yields (image, target)."""

    def __init__(
        self,
        dataset: Dataset,
        *,
        batch_size: int,
        device: torch.device | str,
        train: bool,
        seed: int = 0,
        limit_batches: int | None = None,
        num_workers: int | None = 0,
        shard: Shard | None = None,
    ) -> None:
        self.dataset, self.batch_size, self.train = _Seeded(dataset), int(batch_size), train
        self.device, self.seed, self.limit_batches = torch.device(device), int(seed), limit_batches
        self.num_workers, self.shard, self.epoch = num_workers or 0, shard or Shard(), 0

    def __len__(self) -> int:
        return self.shard.num_batches(
            len(self.dataset), self.batch_size, train=self.train, limit_batches=self.limit_batches
        )

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def batches(self, epoch: int) -> list[list[tuple[int, int]]]:
        """This rank's batches of `epoch`: (index, sample seed) of each image."""
        n, bs = len(self.dataset), self.batch_size
        keys = epoch_keys(n, self.train, self.seed, epoch)
        if self.train:
            return [keys[self.shard.train_rows(k, bs)] for k in range(len(self))]
        return [keys[self.shard.eval_rows(k, bs, n)] for k in self.shard.eval_batches(n, bs)]

    def __iter__(self) -> Iterator[Batch]:
        epoch, self.epoch = self.epoch, self.epoch + 1
        loader = DataLoader(
            self.dataset,
            batch_sampler=self.batches(epoch),
            num_workers=self.num_workers,
            collate_fn=collate,
        )
        for images, targets in loader:
            yield (
                [x.to(self.device) for x in images],
                [{k: _to(v, self.device) for k, v in t.items()} for t in targets],
            )


def _to(value: Any, device: torch.device) -> Any:
    return value.to(device) if isinstance(value, torch.Tensor) else value


def detection_loader(
    split: Dataset, *, train: bool, batch_size: int, device: Any, seed: int, augment: Augment,
    limit_batches: int | None, shard: Shard, num_workers: int | None, **unused: Any,
) -> DetectionLoader:  # fmt: skip
    """The `DataSplits.loader` of COCO-format data sets: `split` holds untransformed samples
    (`coco_files`); training flips when `augment.hflip` (crop and rotation do not apply)."""
    masks = bool(getattr(split, "masks", True))
    transform = DetectionTransform(hflip=train and augment.hflip, masks=masks, train=train)
    return DetectionLoader(
        TransformedSet(split, transform), batch_size=batch_size, device=device, train=train,
        seed=seed, limit_batches=limit_batches, num_workers=num_workers, shard=shard,
    )  # fmt: skip


class CocoSplit(Subset):
    """Some images of a COCO-format file set (all, or a train/val carve), with its facts."""

    def __init__(self, base: Dataset, indices: list[int], *, masks: bool) -> None:
        super().__init__(base, indices)
        self.masks = masks


def coco_splits(
    name: str,
    files: tuple[tuple[Path, Path], tuple[Path, Path]],
    *,
    masks: bool,
    val_fraction: float,
    split_seed: int,
    image_size: int,
    info: dict[str, Any],
) -> DataSplits:
    """DataSplits of a training and a test file set ((images, annotations) each); the
    validation split is `val_fraction` of the training images, drawn by `split_seed`."""
    (train_images, train_ann), (test_images, test_ann) = files
    train = coco_files(train_images, train_ann, masks=masks)
    test = coco_files(test_images, test_ann, masks=masks)
    n = len(train)  # type: ignore[arg-type]
    held = int(np.floor(check_val_fraction(val_fraction) * n + 0.5))
    order = np.random.default_rng(split_seed).permutation(n)
    val_idx, train_idx = sorted(order[:held].tolist()), sorted(order[held:].tolist())
    categories = train.coco.getCatIds()  # type: ignore[attr-defined]
    return DataSplits(
        name=name,
        train=CocoSplit(train, train_idx, masks=masks),
        val=CocoSplit(train, val_idx, masks=masks) if held else None,
        test=CocoSplit(test, list(range(len(test))), masks=masks),  # type: ignore[arg-type]
        num_classes=max(categories, default=0) + 1,  # category ids and the background, 0
        in_channels=3,
        image_size=image_size,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        augment=Augment(hflip=True),
        info={**info, "masks": masks, "categories": len(categories)},
        loader=detection_loader,
    )


# -- `coco`: the user's COCO files -------------------------------------------------------
_LAYOUT = (
    "annotations/instances_train2017.json with train2017/*.jpg and "
    "annotations/instances_val2017.json with val2017/*.jpg"
)


def _coco_files(root: Path, split: str) -> tuple[Path, Path]:
    images, ann = root / split, root / "annotations" / f"instances_{split}.json"
    for path, what in ((ann, "file"), (images, "folder")):
        if not (path.is_file() if what == "file" else path.is_dir()):
            raise DatasetNotFoundError(
                missing_message(
                    "COCO", root, f"{what} {path} missing",
                    f"put {_LAYOUT} in {root} (from https://cocodataset.org/#download)",
                    download=None,
                )
            )  # fmt: skip
    return images, ann


@DatasetFacts(train_images=118_287, channels=3, image_size=800, test_images=5000)
def coco(
    *,
    root: str | None = None,
    download: bool = False,
    image_size: int | None = None,
    val_fraction: float = 0.01,
    split_seed: int = 0,
    train_split: str = "train2017",
    test_split: str = "val2017",
    masks: bool = True,
) -> DataSplits:
    """COCO detection and instance segmentation files the user has (never downloaded):
    `ROOT/annotations/instances_{train2017,val2017}.json` and the image folders `ROOT/train2017`,
    `ROOT/val2017`. val2017 is the test split (the one papers report); the validation split is
    `val_fraction` of train2017. `image_size` is the detector's shorter side (default 800, as
    torchvision's v2 models resize); `masks: false` skips decoding masks (Faster R-CNN)."""
    del download
    base = data_root(root)
    return coco_splits(
        "coco",
        (_coco_files(base, train_split), _coco_files(base, test_split)),
        masks=masks,
        val_fraction=val_fraction,
        split_seed=split_seed,
        image_size=image_size or 800,
        info={"root": str(base), "train_split": train_split, "test_split": test_split},
    )
