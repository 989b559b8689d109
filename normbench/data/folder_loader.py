"""Large images (ImageNet) through a torch DataLoader with torchvision transforms.

Yields the same batches as the tensor loader: normalised float (x, y) on the device, with the
same `set_epoch` / `len` behaviour and drop_last for training. Workers decode and augment
into uint8 tensors (4x less to move than float); conversion and normalisation happen on the
device.

Reproducibility without depending on the worker count or on how many data-parallel ranks
share the batch: each epoch's (index, sample_seed) pairs are drawn from a generator seeded
from (seed, epoch), and each sample's transform runs under `torch.manual_seed(sample_seed)`
inside `fork_rng`, so a sample's crop and flip depend only on (seed, epoch, position), and the
caller's global RNG is left untouched. A rank decodes only its own samples
(`normbench.data.shard`), and they come out bit-identical to the same rows of the batch one
process would decode.

Workers: one per CPU of the trial's grant but one (the process that drives the device keeps
one CPU; a one-CPU trial decodes in that process), unless the suite sets `num_workers`. They
are started once per loader and kept between epochs (`persistent_workers`): each epoch only
hands them the new batch plan, instead of forking a new set per split per epoch.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision import transforms as T

from normbench.data.base import Augment, DatasetOptionError
from normbench.data.shard import Shard
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


def epoch_keys(n: int, shuffle: bool, seed: int, epoch: int) -> list[tuple[int, int]]:
    """The (index, sample_seed) of every sample of an epoch, in the order they are served:
    shuffled per (seed, epoch) for training (every rank draws the same), in order else."""
    if not shuffle:
        return [(i, 0) for i in range(n)]
    g = epoch_generator(seed, epoch, stream=1)
    order = torch.randperm(n, generator=g).tolist()
    seeds = torch.randint(0, 2**62, (n,), generator=g).tolist()
    return list(zip(order, seeds, strict=True))


def default_workers(cpus: int | None) -> int:
    """Decoding workers for a trial granted `cpus` CPUs (None: this process's affinity mask):
    all but the one that drives the device."""
    if cpus is None:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
    return max(int(cpus) - 1, 0)


class _EpochBatches(Sampler[list[tuple[int, int]]]):
    """The batch sampler of a loader's persistent DataLoader: the batches of the epoch the
    loader is serving (`FolderLoader.batches`), set before each pass."""

    def __init__(self, loader: FolderLoader) -> None:
        self.loader, self.epoch = loader, 0

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        return iter(self.loader.batches(self.epoch))

    def __len__(self) -> int:
        return len(self.loader)


class FolderLoader:
    """DataLoader over a Dataset of PIL images, yielding normalised float (x, y) on device.

    `batch_size` is what one batch holds on this rank; with a data-parallel `shard` (rank r of
    N) the loader decodes and serves only that rank's part (`normbench.data.shard`): B rows of
    each global batch of N x B in training, every N-th batch in evaluation.
    """

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
        shard: Shard | None = None,
        cpus: int | None = None,
    ) -> None:
        self.device = torch.device(device)
        self.train, self.batch_size, self.limit_batches = train, int(batch_size), limit_batches
        self.dataset = SeededTransform(
            data, build_transform(image_size, augment or Augment(), train)
        )
        self.seed, self.shard = int(seed), shard or Shard()
        self.num_workers = default_workers(cpus) if num_workers is None else num_workers
        self.epoch = 0
        self.normalize = Normalizer(mean, std, self.device)
        self._sampler = _EpochBatches(self)
        self._loader: DataLoader | None = None  # built at the first pass, workers kept

    @property
    def num_samples(self) -> int:
        return len(self.dataset)

    def __len__(self) -> int:
        return self.shard.num_batches(
            self.num_samples, self.batch_size, train=self.train, limit_batches=self.limit_batches
        )

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def batches(self, epoch: int) -> list[list[tuple[int, int]]]:
        """The (index, sample_seed) keys of each batch this rank serves in `epoch`: exactly
        the samples it decodes (no more, even with `limit_batches`)."""
        n, bs = self.num_samples, self.batch_size
        keys = epoch_keys(n, self.train, self.seed, epoch)
        if self.train:
            return [keys[self.shard.train_rows(k, bs)] for k in range(len(self))]
        return [keys[self.shard.eval_rows(k, bs, n)] for k in self.shard.eval_batches(n, bs)]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self._sampler.epoch, self.epoch = self.epoch, self.epoch + 1
        if self._loader is None:
            self._loader = DataLoader(
                self.dataset,
                batch_sampler=self._sampler,
                num_workers=self.num_workers,
                persistent_workers=self.num_workers > 0,
                pin_memory=self.device.type == "cuda",
            )
        for x, y in self._loader:  # x: uint8 (B, C, H, W)
            x = x.to(self.device, non_blocking=True)
            yield self.normalize(x), y.to(self.device, non_blocking=True)
