"""Content and style images from two folders, served as (content, style) batches.

A folder is flat (COCO's `train2017/`, WikiArt's `train_1/`): every file directly in it whose
suffix is an image format PIL reads (`IMAGE_SUFFIXES`, any case), sorted by name; anything else
is ignored. A missing folder, or one without images, is `DatasetNotFoundError` (one line naming
the folder).

Transforms (the official codes' `train_transform`): resize to `load_size` x `load_size`
(512: aspect ratio not kept), then a random `crop_size` crop (256) in training; in evaluation
the centre crop (ours: the official validation reuses the random crop; the centre makes the
validation losses a fixed function of the model).

Pairs. Training (the official `InfiniteSampler` on each folder, made epoch-wise): an epoch is
one pass over the content images in an order drawn from (seed, epoch); each content image is
paired with a style image from an independent permutation of the style folder drawn from
(seed, epoch), repeated as often as needed; a last short batch is dropped. Evaluation (the
official `val_func`, which zips the two folders in order): the k-th content image with the
k-th style image, k < min(#content, #style). Every sample's crop is seeded by (seed, epoch,
position) (`normbench.data.folder_loader`), so a batch does not depend on the worker count.

A batch is (content, style), float (B, 3, crop, crop) RGB in [0, 1] on the device: the
encoder's first convolution holds its own input transform.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from normbench.data.folder_loader import SeededTransform, epoch_keys
from normbench.data.tensor_loader import epoch_generator
from normbench.errors import DatasetNotFoundError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"})
Key = tuple[int, int, int, int]  # content index, its crop seed, style index, its crop seed


def image_files(folder: str | Path) -> list[Path]:
    """The image files directly in `folder`, sorted by name (module doc)."""
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise DatasetNotFoundError(f"style_transfer: image folder {str(path)!r} does not exist")
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DatasetNotFoundError(
            f"style_transfer: image folder {str(path)!r} holds no image file "
            f"({', '.join(sorted(IMAGE_SUFFIXES))})"
        )
    return files


class FlatImageFolder(Dataset):
    """index -> (RGB PIL image, 0) of a flat folder of images (the 0: `SeededTransform`'s
    label slot)."""

    def __init__(self, folder: str | Path) -> None:
        self.folder, self.files = Path(folder), image_files(folder)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        with Image.open(self.files[index]) as image:
            return image.convert("RGB"), 0


def image_transform(load_size: int, crop_size: int, train: bool) -> v2.Compose:
    """PIL image -> uint8 (3, crop, crop): resize to load x load, random or centre crop."""
    if not 1 <= crop_size <= load_size:
        raise ValueError(f"need 1 <= crop_size <= load_size, got {crop_size} and {load_size}")
    crop = v2.RandomCrop(crop_size) if train else v2.CenterCrop(crop_size)
    return v2.Compose([v2.Resize((load_size, load_size), antialias=True), crop, v2.PILToTensor()])


class PairDataset(Dataset):
    """Key (content index, seed, style index, seed) -> (content, style) uint8 tensors."""

    def __init__(self, content: Dataset, style: Dataset, load: int, crop: int, train: bool):
        transform = image_transform(load, crop, train)
        self.content = SeededTransform(content, transform)
        self.style = SeededTransform(style, transform)

    def __getitem__(self, key: Key) -> tuple[torch.Tensor, torch.Tensor]:
        ci, cs, si, ss = key
        return self.content[(ci, cs)][0], self.style[(si, ss)][0]


class PairLoader:
    """(content, style) batches of two image folders on `device` (module doc); `len()`,
    `set_epoch(e)`, iteration."""

    def __init__(
        self,
        content: FlatImageFolder,
        style: FlatImageFolder,
        *,
        batch_size: int,
        device: torch.device | str,
        train: bool,
        load_size: int = 512,
        crop_size: int = 256,
        seed: int = 0,
        limit_batches: int | None = None,
        num_workers: int = 0,
    ) -> None:
        self.n_content, self.n_style = len(content), len(style)
        self.data = PairDataset(content, style, load_size, crop_size, train)
        self.batch_size, self.device, self.train = int(batch_size), torch.device(device), train
        self.seed, self.limit_batches, self.num_workers = int(seed), limit_batches, num_workers
        self.epoch = 0

    def __len__(self) -> int:
        if self.train:
            full = self.n_content // self.batch_size
        else:
            full = -(-min(self.n_content, self.n_style) // self.batch_size)
        return full if self.limit_batches is None else min(full, self.limit_batches)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def keys(self, epoch: int) -> list[Key]:
        """Every (content, seed, style, seed) of `epoch`, in serving order."""
        if not self.train:
            n = min(self.n_content, self.n_style)
            return [(k, 0, k, 0) for k in range(n)]
        content = epoch_keys(self.n_content, True, self.seed, epoch)
        g = epoch_generator(self.seed, epoch, stream=2)
        rounds = -(-len(content) // self.n_style)
        order = torch.cat([torch.randperm(self.n_style, generator=g) for _ in range(rounds)])
        seeds = torch.randint(0, 2**62, (len(content),), generator=g).tolist()
        return [(c, cs, int(s), ss) for (c, cs), s, ss in zip(content, order, seeds, strict=False)]

    def batches(self, epoch: int) -> list[list[Key]]:
        keys, bs = self.keys(epoch), self.batch_size
        return [keys[k * bs : (k + 1) * bs] for k in range(len(self))]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        batches, self.epoch = self.batches(self.epoch), self.epoch + 1
        loader: Any = DataLoader(self.data, batch_sampler=batches, num_workers=self.num_workers)
        for content, style in loader:  # uint8 (B, 3, crop, crop) each
            yield self._float(content), self._float(style)

    def _float(self, images: torch.Tensor) -> torch.Tensor:
        return images.to(self.device, non_blocking=True).float().div_(255.0)
