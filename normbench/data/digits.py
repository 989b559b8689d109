"""`digits`: scikit-learn's copy of the UCI handwritten digits (1797 images, 8x8, 10 classes).

It ships inside scikit-learn, so it needs no download and suits CPU-only smoke runs and
tests. Pixel values 0..16 become uint8 0..255 (v * 255 / 16, rounded), then are resized once,
at load, to `image_size` (default 16) with bilinear interpolation.

The test split is fixed: 20% of every class, chosen with seed 0, whatever the trial's seed or
`split_seed`, so every trial is scored on the same 359 test images. The validation split is
then carved from the remaining 1438 training images (stratified, seeded by `split_seed`).

Augmentation default: random crop with padding 2, no horizontal flip (a mirrored 2, 3, 4, 5,
7 or 9 is not the same digit, so digits are not flip-invariant), no rotation.
Mean/std are measured on the fixed training portion (before the validation carve), so they do
not change with `split_seed`.
"""

from __future__ import annotations

import numpy as np
import torch

from normbench.contract import DatasetFacts
from normbench.data.base import (
    Augment,
    DataSplits,
    TensorSet,
    carve_val,
    channel_stats,
    check_image_size,
    resize_uint8,
    stratified_split,
)

DIGITS_TEST_FRACTION = 0.2
DIGITS_TEST_SEED = 0
DIGITS_AUGMENT = Augment(crop_padding=2, hflip=False, rotation=0.0)


def load_digits_tensor(image_size: int) -> TensorSet:
    """All 1797 digits as uint8 (N, 1, S, S) with int64 labels."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    raw = np.asarray(bunch.images, dtype=np.float64)  # (1797, 8, 8), values 0..16
    images = torch.from_numpy(np.rint(raw * (255.0 / 16.0)).astype(np.uint8))[:, None]  # (N,1,8,8)
    return TensorSet(resize_uint8(images, image_size), torch.as_tensor(bunch.target))


@DatasetFacts(train_images=1437, channels=1, image_size=16, test_images=360)  # of 1797 images
def digits(
    *,
    root: str | None = None,
    download: bool = False,
    image_size: int | None = None,
    val_fraction: float = 0.1,
    split_seed: int = 0,
) -> DataSplits:
    """scikit-learn digits; `root` and `download` are accepted and ignored (it ships inside
    scikit-learn)."""
    del root, download
    size = check_image_size(image_size, 16, "digits")
    full = load_digits_tensor(size)
    train_idx, test_idx = stratified_split(
        full.labels.numpy(), DIGITS_TEST_FRACTION, DIGITS_TEST_SEED
    )
    train_full, test = full.subset(train_idx), full.subset(test_idx)
    mean, std = channel_stats(train_full.images)
    train, val = carve_val(train_full, val_fraction, split_seed)
    return DataSplits(
        name="digits",
        train=train,
        val=val,
        test=test,
        num_classes=10,
        in_channels=1,
        image_size=size,
        mean=mean,
        std=std,
        augment=DIGITS_AUGMENT,
        info={
            "source": "sklearn.datasets.load_digits",
            "val_split": "stratified",
            "test_split": f"stratified {DIGITS_TEST_FRACTION:g}, seed {DIGITS_TEST_SEED}",
        },
    )
