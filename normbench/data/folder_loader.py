"""Large images (ImageNet) through a torch DataLoader with torchvision transforms.

Yields the same batches as the tensor loader: normalised float (x, y) on the device, with the
same `set_epoch` / `len` behaviour and drop_last for training. Workers decode and augment
into uint8 tensors (4x less to move than float); conversion and normalisation happen on the
device.

Reproducibility without depending on the worker count: the sampler yields (index, seed)
pairs drawn from a generator seeded from (seed, epoch), and each sample's transform runs
under `torch.manual_seed(sample_seed)` inside `fork_rng`, so a sample's crop and flip depend
only on (seed, epoch, position), and the caller's global RNG is left untouched.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision import transforms as T

from normbench.data.base import Augment, DatasetOptionError
from normbench.data.tensor_loader import Normalizer, epoch_generator


def build_transform(image_size: int, augment: Augment, train: bool) -> Callable[[Any], Any]:
    """PIL image -> uint8 (C, H, W) tensor, the standard ImageNet recipe."""
    if not train:
        resize = int(round(image_size * 256 / 224))  # 256 for 224 crops
        return T.Compose([T.Resize(resize), T.CenterCrop(image_size), T.PILToTensor()])
    if augment.crop_padding:
        raise DatasetOptionError(
            "augment.crop_padding does not apply to folder data sets "
            "(they use RandomResizedCrop); set it to 0"
        )
    steps: list[Any] = [T.RandomResizedCrop(image_size)]
    if augment.hflip:
        steps.append(T.RandomHorizontalFlip())
    if augment.rotation:
        steps.append(T.RandomRotation(augment.rotation))
    return T.Compose([*steps, T.PILToTensor()])


class SeededTransform(Dataset):
    """(index, seed) -> (transform(image), label), the transform's randomness seeded."""

    def __init__(self, base: Dataset, transform: Callable[[Any], Any]) -> None:
        self.base, self.transform = base, transform

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, int]:
        index, seed = key
        img, label = self.base[index]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.transform(img), int(label)


class EpochSampler(Sampler):
    """Yields (index, sample_seed): shuffled per (seed, epoch) for training, in order else."""

    def __init__(self, n: int, shuffle: bool, seed: int) -> None:
        self.n, self.shuffle, self.seed, self.epoch = n, shuffle, seed, 0

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[tuple[int, int]]:
        if not self.shuffle:
            return ((i, 0) for i in range(self.n))
        g = epoch_generator(self.seed, self.epoch, stream=1)
        order = torch.randperm(self.n, generator=g).tolist()
        seeds = torch.randint(0, 2**62, (self.n,), generator=g).tolist()
        return iter(zip(order, seeds, strict=True))


class FolderLoader:
    """DataLoader over a Dataset of PIL images, yielding normalised float (x, y) on device."""

    def __init__(
        self,
        data: Dataset,
        *,
        batch_size: int,
        device: torch.device | str,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        train: bool,
        image_size: int,
        augment: Augment | None = None,
        seed: int = 0,
        limit_batches: int | None = None,
        num_workers: int | None = None,
    ) -> None:
        self.device = torch.device(device)
        self.train, self.batch_size, self.limit_batches = train, int(batch_size), limit_batches
        self.dataset = SeededTransform(
            data, build_transform(image_size, augment or Augment(), train)
        )
        self.sampler = EpochSampler(len(self.dataset), train, int(seed))
        self.num_workers = min(8, os.cpu_count() or 1) if num_workers is None else num_workers
        self.epoch = 0
        self.normalize = Normalizer(mean, std, self.device)

    @property
    def num_samples(self) -> int:
        return len(self.dataset)

    def __len__(self) -> int:
        n = self.num_samples
        full = n // self.batch_size if self.train else math.ceil(n / self.batch_size)
        return full if self.limit_batches is None else min(full, self.limit_batches)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self.sampler.epoch, self.epoch = self.epoch, self.epoch + 1
        loader = DataLoader(
            self.dataset,
            batch_size=self.batch_size,
            sampler=self.sampler,
            num_workers=self.num_workers,
            drop_last=self.train,
            pin_memory=self.device.type == "cuda",
        )
        for k, (x, y) in enumerate(loader):  # x: uint8 (B, C, H, W)
            if k >= len(self):
                break
            x = x.to(self.device, non_blocking=True)
            yield self.normalize(x), y.to(self.device, non_blocking=True)
