"""`imagenet`: an ImageFolder tree the user already has (`ROOT/train/<wnid>/*.JPEG`,
`ROOT/val/<wnid>/*.JPEG`). It is never downloaded.

The splits hold PIL images (torchvision `ImageFolder` without transforms); the folder loader
applies the standard recipe (train `RandomResizedCrop(image_size)` + flip, eval
`Resize(image_size * 256 / 224)` + `CenterCrop(image_size)`). The official validation set
serves as the test split; the validation split is carved from `train` (stratified, seeded by
`split_seed`) so a best epoch is never picked on the reported numbers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch.utils.data import Dataset
from torchvision.datasets import ImageFolder

from normbench.contract import DatasetFacts
from normbench.data.base import (
    Augment,
    DataSplits,
    carve_val_dataset,
    check_image_size,
)
from normbench.errors import DatasetNotFoundError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGENET_AUGMENT = Augment(crop_padding=0, hflip=True, rotation=0.0)
_LAYOUT = "ROOT/train/<class>/*.JPEG and ROOT/val/<class>/*.JPEG (ImageFolder layout)"


def _folder(root: Path, split: str) -> ImageFolder:
    path = root / split
    if not path.is_dir():
        raise DatasetNotFoundError(
            f"imagenet: folder {path} not found; imagenet is never "
            f"downloaded: put your copy as {_LAYOUT.replace('ROOT', str(root))}"
        )
    try:
        return ImageFolder(str(path))
    except (FileNotFoundError, RuntimeError) as exc:  # no class folders or no images
        raise DatasetNotFoundError(
            f"imagenet: {path} holds no usable class folders ({exc}); "
            f"expected {_LAYOUT.replace('ROOT', str(root))}"
        ) from exc


@DatasetFacts(train_images=1_281_167, channels=3, image_size=224, test_images=50_000)
def imagenet(
    *,
    root: str | None = None,
    download: bool = False,
    image_size: int | None = None,
    val_fraction: float = 0.1,
    split_seed: int = 0,
) -> DataSplits:
    """ImageNet (or any ImageFolder tree with train/ and val/); `download` is ignored."""
    del download
    size = check_image_size(image_size, 224, "imagenet")
    if not root:
        raise DatasetNotFoundError(
            f"imagenet needs dataset_options.root: the folder holding "
            f"{_LAYOUT}; it is never downloaded"
        )
    base = Path(root).expanduser().resolve()
    train_full, test = _folder(base, "train"), _folder(base, "val")
    if train_full.classes != test.classes:
        raise DatasetNotFoundError(
            f"imagenet: class folders of {base / 'train'} and "
            f"{base / 'val'} differ ({len(train_full.classes)} vs "
            f"{len(test.classes)} classes)"
        )
    train, val = carve_val_dataset(train_full, train_full.targets, val_fraction, split_seed)
    return recipe_splits(
        "imagenet",
        (train, val, test),
        num_classes=len(train_full.classes),
        image_size=size,
        info={"root": str(base), "val_split": "stratified", "train_full_size": len(train_full)},
    )


def recipe_splits(
    name: str,
    splits: tuple[Dataset, Dataset | None, Dataset],
    *,
    num_classes: int,
    image_size: int,
    info: dict[str, Any],
) -> DataSplits:
    """(train, val or None, test) Datasets of PIL images as `DataSplits` with ImageNet's
    recipe and constants: RGB, its mean/std, random resized crop and flip (the folder data
    sets: imagenet, caltech256, flowers102, cub200)."""
    train, val, test = splits
    return DataSplits(
        name=name,
        train=train,
        val=val,
        test=test,
        num_classes=num_classes,
        in_channels=3,
        image_size=image_size,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        augment=IMAGENET_AUGMENT,
        info=info,
    )
