"""`style_folders`: content and style images from two folders each (training and test), served
as (content, style) batches for the style transfer task (SaBN's NST experiment, AdaIN's
recipe: docs/recipes.md#sabn-style-transfer).

A folder is flat (COCO's `train2017/`, WikiArt's `train_1/`): every file directly in it whose
suffix is an image format PIL reads (`IMAGE_SUFFIXES`, any case), sorted by name; anything else
is ignored. A missing folder, or one without images, is `DatasetNotFoundError` (one line naming
the folder), before a run starts (the dry-run hook checks them too).

Splits. Training: `content_dir` and `style_dir` (COCO train2017, WikiArt train_1); validation:
`val_fraction` of each training folder's images, held out by `split_seed` (model selection);
test: `test_content_dir` and `test_style_dir` (COCO val2017, WikiArt test: the paper's
"validation" images, on which it compares the losses).

Transforms (the official codes' `train_transform`): resize to `load_size` x `load_size` (512,
aspect ratio not kept), then a random `image_size` crop (256) in training; in evaluation the
centre crop (ours: the official validation reuses the random crop; the centre makes the
evaluation losses a fixed function of the model).

Pairs. Training (the official `InfiniteSampler` on each folder, made epoch-wise): an epoch is
one pass over the content images in an order drawn from (seed, epoch); each is paired with a
style image from an independent permutation of the style images drawn from (seed, epoch),
repeated as often as needed; a last short batch is dropped. Evaluation (the official
`val_func`, which zips the two folders in order): the k-th content image with the k-th style
image, k < min(#content, #style). Each sample's crop is seeded by (seed, epoch, position)
(`normbench.data.folder_loader`), so a batch does not depend on the worker count, and a
data-parallel rank decodes only its rows (`normbench.data.shard`).

A batch is (content, style), float (B, 3, crop, crop) RGB in [0, 1] on the device: the
encoder's first convolution holds its own input transform (`mean`/`std` are 0 and 1).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from normbench.contract import DatasetFacts
from normbench.data.base import (
    DatasetOptionError,
    DataSplits,
    check_image_size,
    check_val_fraction,
)
from normbench.data.files import data_root, dry_run
from normbench.data.folder_loader import SeededTransform, default_workers, epoch_keys
from normbench.data.shard import Shard
from normbench.data.tensor_loader import epoch_generator
from normbench.errors import DatasetNotFoundError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"})
Key = tuple[int, int, int, int]  # content index, its crop seed, style index, its crop seed
CROP, LOAD = 256, 512  # AdaIN's crop and resize


def image_files(folder: str | Path) -> list[Path]:
    """The image files directly in `folder`, sorted by name (module doc)."""
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise DatasetNotFoundError(f"style_folders: image folder {str(path)!r} does not exist")
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DatasetNotFoundError(
            f"style_folders: image folder {str(path)!r} holds no image file "
            f"({', '.join(sorted(IMAGE_SUFFIXES))})"
        )
    return files


class FlatImageFolder(Dataset):
    """index -> (RGB PIL image, 0) of a list of image files (the 0: `SeededTransform`'s label
    slot); `FlatImageFolder(folder)` lists a flat folder."""

    def __init__(self, folder: str | Path | None = None, files: list[Path] | None = None):
        self.files = image_files(folder) if folder is not None else list(files or ())

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        with Image.open(self.files[index]) as image:
            return image.convert("RGB"), 0

    def split(self, fraction: float, seed: int) -> tuple[FlatImageFolder, FlatImageFolder]:
        """(kept, held out): round(fraction·n) files held out, chosen by a NumPy generator
        seeded with `seed`; both keep the name order."""
        n = len(self.files)
        held = set(np.random.default_rng(seed).permutation(n)[: round(fraction * n)].tolist())
        kept = [f for i, f in enumerate(self.files) if i not in held]
        return FlatImageFolder(files=kept), FlatImageFolder(
            files=[self.files[i] for i in sorted(held)]
        )


class ImagePairs(Dataset):
    """A split: content and style images, served by `PairLoader` (not indexed). `len`
    counts the content images (an epoch's samples); evaluation serves min(#content, #style)
    pairs."""

    def __init__(self, content: FlatImageFolder, style: FlatImageFolder) -> None:
        self.content, self.style = content, style

    def __len__(self) -> int:
        return len(self.content)


def image_transform(load_size: int, crop_size: int, train: bool) -> v2.Compose:
    """PIL image -> uint8 (3, crop, crop): resize to load x load, random or centre crop."""
    if not 1 <= crop_size <= load_size:
        raise ValueError(f"need 1 <= crop_size <= load_size, got {crop_size} and {load_size}")
    crop = v2.RandomCrop(crop_size) if train else v2.CenterCrop(crop_size)
    return v2.Compose([v2.Resize((load_size, load_size), antialias=True), crop, v2.PILToTensor()])


class PairDataset(Dataset):
    """Key (content index, seed, style index, seed) -> (content, style) uint8 tensors."""

    def __init__(self, pairs: ImagePairs, load: int, crop: int, train: bool) -> None:
        transform = image_transform(load, crop, train)
        self.content = SeededTransform(pairs.content, transform)
        self.style = SeededTransform(pairs.style, transform)

    def __getitem__(self, key: Key) -> tuple[torch.Tensor, torch.Tensor]:
        ci, cs, si, ss = key
        return self.content[(ci, cs)][0], self.style[(si, ss)][0]


class PairLoader:
    """(content, style) batches of an `ImagePairs` split on `device` (module doc): the
    engine's loader protocol (`normbench.data.build.Loader`), built by `DataSplits.loader`."""

    def __init__(
        self,
        split: ImagePairs,
        *,
        train: bool,
        batch_size: int,
        device: torch.device | str,
        seed: int = 0,
        limit_batches: int | None = None,
        shard: Shard | None = None,
        num_workers: int | None = None,
        cpus: int | None = None,
        load_size: int = LOAD,
        crop_size: int = CROP,
        **unused: Any,  # mean, std, augment: the images stay in [0, 1], AdaIN's crop only
    ) -> None:
        self.n_content, self.n_style = len(split.content), len(split.style)
        self.data = PairDataset(split, load_size, crop_size, train)
        self.batch_size, self.device, self.train = int(batch_size), torch.device(device), train
        self.seed, self.limit_batches, self.shard = int(seed), limit_batches, shard or Shard()
        self.num_workers = default_workers(cpus) if num_workers is None else num_workers
        self.epoch = 0

    @property
    def samples(self) -> int:
        return self.n_content if self.train else min(self.n_content, self.n_style)

    def __len__(self) -> int:
        return self.shard.num_batches(
            self.samples, self.batch_size, train=self.train, limit_batches=self.limit_batches
        )

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def keys(self, epoch: int) -> list[Key]:
        """Every (content, seed, style, seed) of `epoch`, in serving order."""
        if not self.train:
            return [(k, 0, k, 0) for k in range(self.samples)]
        content = epoch_keys(self.n_content, True, self.seed, epoch)
        g = epoch_generator(self.seed, epoch, stream=2)
        rounds = -(-len(content) // self.n_style)
        order = torch.cat([torch.randperm(self.n_style, generator=g) for _ in range(rounds)])
        seeds = torch.randint(0, 2**62, (len(content),), generator=g).tolist()
        return [(c, cs, int(s), ss) for (c, cs), s, ss in zip(content, order, seeds, strict=False)]

    def batches(self, epoch: int) -> list[list[Key]]:
        """This rank's keys of each batch of `epoch`."""
        keys, bs, n = self.keys(epoch), self.batch_size, self.samples
        if self.train:
            return [keys[self.shard.train_rows(k, bs)] for k in range(len(self))]
        return [keys[self.shard.eval_rows(k, bs, n)] for k in self.shard.eval_batches(n, bs)]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        batches, self.epoch = self.batches(self.epoch), self.epoch + 1
        loader: Any = DataLoader(self.data, batch_sampler=batches, num_workers=self.num_workers)
        for content, style in loader:  # uint8 (B, 3, crop, crop) each
            yield self._float(content), self._float(style)

    def _float(self, images: torch.Tensor) -> torch.Tensor:
        return images.to(self.device, non_blocking=True).float().div_(255.0)


def pair_splits(
    name: str,
    folders: dict[str, Path],
    *,
    val_fraction: float,
    split_seed: int,
    crop: int,
    load: int,
    info: dict[str, Any],
) -> DataSplits:
    """The DataSplits of four folders (content, style, test_content, test_style)."""
    if not 1 <= crop <= load:
        raise DatasetNotFoundError(f"{name}: need image_size <= load_size, got {crop} > {load}")
    content, style = FlatImageFolder(folders["content"]), FlatImageFolder(folders["style"])
    val = None
    if check_val_fraction(val_fraction) > 0:
        content, val_content = content.split(val_fraction, split_seed)
        style, val_style = style.split(val_fraction, split_seed + 1)
        if not (len(val_content) and len(val_style)):
            raise DatasetOptionError(
                f"{name}: val_fraction {val_fraction} holds out no image of "
                f"{len(content) + len(val_content)} content and {len(style) + len(val_style)} "
                "style images; raise it, or set 0 for no validation split"
            )
        val = ImagePairs(val_content, val_style)
    test = ImagePairs(
        FlatImageFolder(folders["test_content"]), FlatImageFolder(folders["test_style"])
    )
    return DataSplits(
        name, ImagePairs(content, style), val, test, 0, 3, crop, (0.0,) * 3, (1.0,) * 3,
        info={**info, "load_size": load, "crop": crop,
              "folders": {k: str(v) for k, v in folders.items()}},
        loader=functools.partial(PairLoader, load_size=load, crop_size=crop),
    )  # fmt: skip


def _folders(root: str | None, **dirs: str) -> dict[str, Path]:
    """The four folders, relative ones under the data root; one line when one is not set."""
    missing = [k for k, v in dirs.items() if not v]
    if missing:
        raise DatasetNotFoundError(
            f"style_folders needs the options {', '.join(missing)} (folders of content and "
            "style images: COCO train2017/val2017 and WikiArt train_1/test in the paper)"
        )
    base = data_root(root)
    return {k.removesuffix("_dir"): base / Path(v).expanduser() for k, v in dirs.items()}


DIRS = ("content_dir", "style_dir", "test_content_dir", "test_style_dir")


def _dry_run(*, root: str | None = None, **options: Any) -> str | None:
    folders = _folders(root, **{k: options.get(k, "") for k in DIRS})
    for folder in folders.values():
        image_files(folder)  # raises naming a missing or empty folder
    return None


@dry_run(_dry_run)
@DatasetFacts(train_images=118_287, channels=3, image_size=CROP)  # COCO train2017
def style_folders(
    *,
    root: str | None = None,
    download: bool = False,
    image_size: int | None = None,
    val_fraction: float = 0.0,
    split_seed: int = 0,
    content_dir: str = "",
    style_dir: str = "",
    test_content_dir: str = "",
    test_style_dir: str = "",
    load_size: int = LOAD,
) -> DataSplits:
    """Content and style images from the user's folders (module doc); never downloaded."""
    dirs = (content_dir, style_dir, test_content_dir, test_style_dir)
    folders = _folders(root, **dict(zip(DIRS, dirs, strict=True)))
    crop = check_image_size(image_size, CROP, "style_folders")
    return pair_splits("style_folders", folders, val_fraction=val_fraction,
                       split_seed=split_seed, crop=crop, load=load_size,
                       info={"root": str(data_root(root))})  # fmt: skip
