"""What every data-set factory returns (`DataSplits`) and the helpers the factories share.

A factory is called as `fn(*, root, download, image_size, val_fraction, split_seed, **options)`
and returns a `DataSplits`: raw, un-augmented, un-normalised images. Small data sets hold one
uint8 `TensorSet` per split, served by `tensor_loader`; large ones (ImageNet) hold torch Datasets
of PIL images, served by `folder_loader`. The loaders do augmentation and normalisation, so the
factories stay pure data.

The validation split is carved from the training set, stratified by class and seeded by
`split_seed` (default 0: every trial of a suite is judged on the same validation images,
whatever its training seed). A report picks its best epoch on it, never on the test set.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Subset

from normbench.errors import UnknownNameError, UserError, closest


class DatasetOptionError(UserError, ValueError):
    """A data-set option with a bad value (an unknown name raises `UnknownNameError`)."""


@dataclass(frozen=True)
class Augment:
    """Training augmentation, applied per batch by the loaders (never to val/test).

    crop_padding: random crop back to the image size after zero padding by this many pixels
    on each side (torchvision `RandomCrop(size, padding=p)`); 0 turns it off.
    hflip: random horizontal flip with probability 0.5.
    rotation: random rotation by an angle uniform in [-rotation, rotation] degrees, nearest
    interpolation, zero fill (torchvision `RandomRotation(rotation)`); 0 turns it off.
    """

    crop_padding: int = 0
    hflip: bool = False
    rotation: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"crop_padding": self.crop_padding, "hflip": self.hflip, "rotation": self.rotation}


def parse_augment(default: Augment, value: Any) -> Augment:
    """Apply a suite's `augment` value to a data set's default augmentation."""
    if value is None or value is True:
        return default
    if value is False:
        return Augment()
    if not isinstance(value, dict):
        raise DatasetOptionError(f"augment must be a mapping, true or false, but got {value!r}")
    valid = [f.name for f in dataclasses.fields(Augment)]
    for key in value:
        if key not in valid:
            raise UnknownNameError(
                f"unknown augment option {key!r}{closest(str(key), valid)}; "
                f"valid options: {', '.join(valid)}"
            )
    aug = dataclasses.replace(default, **value)
    pad, rot = aug.crop_padding, aug.rotation
    if isinstance(pad, bool) or not isinstance(pad, int) or pad < 0:
        raise DatasetOptionError(f"augment.crop_padding must be an integer >= 0, but got {pad!r}")
    if not isinstance(aug.hflip, bool):
        raise DatasetOptionError(f"augment.hflip must be true or false, but got {aug.hflip!r}")
    if isinstance(rot, bool) or not isinstance(rot, int | float) or not 0 <= rot <= 180:
        raise DatasetOptionError(
            f"augment.rotation must be a number of degrees in [0, 180], but got {rot!r}"
        )
    return dataclasses.replace(aug, rotation=float(rot))


@dataclass
class TensorSet:
    """One split held in memory: images uint8 (N, C, H, W), labels int64 (N,)."""

    images: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise ValueError(
                f"images must be uint8 (N, C, H, W), got {self.images.dtype} "
                f"{tuple(self.images.shape)}"
            )
        self.labels = self.labels.to(torch.int64)
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(
                f"labels must have shape ({self.images.shape[0]},), got {tuple(self.labels.shape)}"
            )

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, index: np.ndarray) -> TensorSet:
        idx = torch.as_tensor(index, dtype=torch.int64)
        return TensorSet(self.images[idx].contiguous(), self.labels[idx].contiguous())


Split = TensorSet | Dataset


@dataclass
class DataSplits:
    """A data set's splits and the constants the loaders need.

    `mean`/`std` are per channel in [0, 1] units (torchvision `Normalize` convention).
    `augment` is the data set's default training augmentation; a suite may override it.
    `info` holds JSON-able facts worth recording with results (source path, split rule...).
    `loader`: for splits whose samples are not (image, class label) pairs (a detection data
    set's image and target dict), the factory of their loaders, called as
    `loader(split, *, train, batch_size, device, seed, augment, limit_batches, shard,
    num_workers, cpus) -> Loader` (`normbench.data.build.Loader`): batches `(inputs, targets)`
    on the device in whatever structure the data set's task takes (docs/tasks.md#batches).
    """

    name: str
    train: Split
    val: Split | None
    test: Split
    num_classes: int
    in_channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: Augment = field(default_factory=Augment)
    info: dict[str, Any] = field(default_factory=dict)
    loader: Callable[..., Any] | None = None

    def __post_init__(self) -> None:
        if len(self.mean) != self.in_channels or len(self.std) != self.in_channels:
            raise ValueError(
                f"{self.name}: mean/std need {self.in_channels} values each, got "
                f"{len(self.mean)} and {len(self.std)}"
            )


# -- helpers shared by the factories ------------------------------------------------------
def check_val_fraction(val_fraction: float) -> float:
    """`val_fraction` must be in [0, 1); 0 means no validation split."""
    f = float(val_fraction)
    if not 0.0 <= f < 1.0 or math.isnan(f):
        raise DatasetOptionError(
            f"val_fraction must satisfy 0 <= val_fraction < 1, but got {val_fraction!r}"
        )
    return f


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, ...]:
    """Split indices into (keep, held_out), holding out `fraction` of every class.

    Per class c with n_c samples, round(fraction * n_c) samples (chosen by a NumPy generator
    seeded with `seed`) are held out, so class proportions match in both parts. Both index
    arrays are sorted, so the result depends only on (labels, fraction, seed).
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    held: list[np.ndarray] = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        n_out = int(np.floor(fraction * len(idx) + 0.5))
        held.append(rng.permutation(idx)[:n_out])
    held_out = np.sort(np.concatenate(held)) if held else np.zeros(0, dtype=np.int64)
    keep = np.setdiff1d(np.arange(len(labels)), held_out, assume_unique=True)
    return keep, held_out


def carve_val(
    train: TensorSet, val_fraction: float, split_seed: int
) -> tuple[TensorSet, TensorSet | None]:
    """(train, val or None): a stratified, seeded validation split carved from `train`."""
    f = check_val_fraction(val_fraction)
    if f == 0.0:
        return train, None
    keep, held = stratified_split(train.labels.numpy(), f, int(split_seed))
    return train.subset(keep), train.subset(held)


def carve_val_dataset(
    train: Dataset, labels: Any, val_fraction: float, split_seed: int
) -> tuple[Dataset, Dataset | None]:
    """(train, val or None) of a Dataset of images whose class labels are `labels`: the same
    stratified, seeded carve as `carve_val`, as two `Subset`s."""
    f = check_val_fraction(val_fraction)
    if f == 0.0:
        return train, None
    keep, held = stratified_split(np.asarray(labels), f, int(split_seed))
    return Subset(train, keep.tolist()), Subset(train, held.tolist())


def resize_uint8(images: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize of uint8 (N, C, H, W) images to (size, size), once, at load time.

    Anti-aliasing is used when shrinking (as PIL does), none when enlarging.
    """
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    shrink = size < max(images.shape[-2:])
    out = F.interpolate(
        images.float(), size=(size, size), mode="bilinear", align_corners=False, antialias=shrink
    )
    return out.round_().clamp_(0, 255).to(torch.uint8)


def check_image_size(image_size: int | None, default: int, name: str) -> int:
    if image_size is None:
        return default
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 4:
        raise DatasetOptionError(
            f"{name}: image_size must be an integer >= 4 (or null for the "
            f"default {default}), but got {image_size!r}"
        )
    return image_size


def channel_stats(
    images: torch.Tensor, chunk: int = 4096
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std in [0, 1] units of uint8 (N, C, H, W) images.

    More than `chunk` images are summed chunk by chunk (float64 sums of x and x^2), so
    SVHN's 604k images never exist as one float64 copy (14 GB)."""
    if images.shape[0] <= chunk:
        x = images.to(torch.float64).div_(255.0).transpose(0, 1).reshape(images.shape[1], -1)
        return tuple(x.mean(1).tolist()), tuple(x.std(1, unbiased=False).tolist())
    c = images.shape[1]
    total = torch.zeros(c, dtype=torch.float64)
    squares = torch.zeros(c, dtype=torch.float64)
    for start in range(0, images.shape[0], chunk):
        x = images[start : start + chunk].to(torch.float64).div_(255.0)
        x = x.transpose(0, 1).reshape(c, -1)  # (C, n*H*W)
        total += x.sum(1)
        squares += x.square().sum(1)
    n = images.numel() // c
    mean = total / n
    var = (squares / n - mean.square()).clamp_(min=0.0)
    return tuple(mean.tolist()), tuple(var.sqrt().tolist())
