"""The search's data: a registered classification data set split in two for DARTS' bilevel
steps. The weights train on the data set's training split; alpha trains on its validation
split (the data set's `val_fraction` of the training images, stratified, `split_seed`); both
streams are shuffled and augmented as training data, with the same batch size. Each weight
batch is paired with the next architecture batch; the architecture stream starts a new pass
when it runs out, so an epoch is one pass over the weights' split (the official
`SearchDataset` pairs every training image with a random validation image the same way).

Official split (NAS-Bench-201's DARTS-V1 on CIFAR-100 and ImageNet16-120): the weights take
the whole training set, alpha the benchmark's `x-valid` half of the test set (5,000 CIFAR-100
images, with the training augmentation). normbench keeps the test set for testing: with
`val_fraction: 0.1` alpha sees 5,000 held-out CIFAR-100 training images and the weights the
other 45,000.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from normbench.data.base import DatasetOptionError, TensorSet
from normbench.data.build import load_splits
from normbench.data.tensor_loader import TensorLoader

Batch = tuple[torch.Tensor, torch.Tensor]
_ARCH_STREAM = 1  # the architecture stream's seed offset (its order differs from the weights')


class SearchPairs:
    """(weight batch, architecture batch) pairs; one iteration is one search epoch.

    Epoch e of the weights' loader is paired with passes e*P, e*P+1, ... of the architecture
    loader (P = ceil(weight batches / architecture batches)), so every epoch's batches follow
    from (seed, e) alone and a resumed search sees the batches it would have seen."""

    def __init__(self, weights: TensorLoader, arch: TensorLoader) -> None:
        self.weights, self.arch = weights, arch
        self.passes = -(-len(weights) // len(arch))  # P

    def __len__(self) -> int:
        return len(self.weights)

    def set_epoch(self, epoch: int) -> None:
        self.weights.set_epoch(epoch)

    def __iter__(self) -> Iterator[tuple[Batch, Batch]]:
        self.arch.set_epoch(self.weights.epoch * self.passes)
        arch = (batch for _ in range(self.passes) for batch in self.arch)
        yield from zip(self.weights, arch, strict=False)


class ArchStream:
    """The architecture batches of task `darts` (normbench.tasks.nas.task): an endless stream
    of training-mode passes over the validation split, pass p in the order of (seed, p);
    `steps` counts the batches taken, and `seek(steps)` puts a resumed trial where it was."""

    def __init__(self, loader: TensorLoader) -> None:
        self.loader, self.steps = loader, 0
        self.seek(0)

    def seek(self, steps: int) -> None:
        passes, skip = divmod(steps, len(self.loader))
        self.loader.set_epoch(passes)
        self.batches = iter(self.loader)
        for _ in range(skip):
            next(self.batches)
        self.steps = steps

    def next(self) -> Batch:
        batch = next(self.batches, None)
        if batch is None:  # the pass ended: the loader counted it, the next one starts
            self.batches = iter(self.loader)
            batch = next(self.batches)
        self.steps += 1
        return batch


def arch_stream(
    name: str, *, batch_size: int, device: torch.device | str, seed: int, **dataset_options: Any
) -> ArchStream:
    """The architecture stream of registered data set `name` (`ArchStream`; its validation
    split, `batch_size` per batch, the order and augmentation of `seed`'s architecture stream).
    Raises DatasetOptionError as `search_data` does."""
    splits, augment, _, _ = _in_memory(name, batch_size, dataset_options)
    assert isinstance(splits.val, TensorSet)
    return ArchStream(
        _stream(name, splits, splits.val, augment, batch_size, device, seed + _ARCH_STREAM, None)
    )


def _in_memory(
    name: str, batch_size: int, dataset_options: dict[str, Any]
) -> tuple[Any, Any, dict[str, Any], dict[str, Any]]:
    """`load_splits`, refused without a validation split or for a folder data set."""
    splits, augment, factory, loader = load_splits(name, batch_size, dataset_options)
    if splits.val is None:
        raise DatasetOptionError(
            f"dataset {name!r}: the architecture search trains alpha on the validation split, "
            "so val_fraction must be > 0"
        )
    if not all(isinstance(s, TensorSet) for s in (splits.train, splits.val, splits.test)):
        raise DatasetOptionError(
            f"dataset {name!r} is read from image files; the architecture search takes data "
            "sets held in memory (cifar10, cifar100, svhn, digits, synthetic, imagenet16)"
        )
    return splits, augment, factory, loader


def _stream(
    name: str,
    splits: Any,
    split: TensorSet,
    augment: Any,
    batch_size: int,
    device: torch.device | str,
    seed: int,
    limit_batches: int | None,
) -> TensorLoader:
    """A shuffled, augmented loader of `split`, refused when it holds no whole batch."""
    loader = TensorLoader(
        split, batch_size=batch_size, train=True, augment=augment, seed=seed,
        limit_batches=limit_batches, device=device, mean=splits.mean, std=splits.std,
    )  # fmt: skip
    if len(loader) == 0:
        raise DatasetOptionError(
            f"dataset {name!r}: batch_size {batch_size} is larger than a search split "
            f"of {len(split)} images (training drops a last incomplete batch)"
        )
    return loader


@dataclass
class SearchData:
    """The search's streams and the data's facts."""

    pairs: SearchPairs
    valid: TensorLoader  # the architecture split, in order, un-augmented
    test: TensorLoader
    num_classes: int
    in_channels: int
    image_size: int
    info: dict[str, Any]


def search_data(
    name: str,
    *,
    batch_size: int,
    device: torch.device | str,
    seed: int,
    eval_batch_size: int = 512,
    limit_batches: int | None = None,
    **dataset_options: Any,
) -> SearchData:
    """The search's data from registered data set `name` (module doc). Raises
    DatasetOptionError when it has no validation split or is not held in memory."""
    splits, augment, factory, _ = _in_memory(name, batch_size, dataset_options)
    common: dict[str, Any] = dict(device=device, mean=splits.mean, std=splits.std)
    assert isinstance(splits.train, TensorSet) and isinstance(splits.val, TensorSet)
    assert isinstance(splits.test, TensorSet)
    args = (name, splits)
    pairs = SearchPairs(
        _stream(*args, splits.train, augment, batch_size, device, seed, limit_batches),
        _stream(*args, splits.val, augment, batch_size, device, seed + _ARCH_STREAM, limit_batches),
    )
    evaluation = dict(batch_size=eval_batch_size, train=False, **common)
    return SearchData(
        pairs=pairs,
        valid=TensorLoader(splits.val, **evaluation),
        test=TensorLoader(splits.test, **evaluation),
        num_classes=splits.num_classes,
        in_channels=splits.in_channels,
        image_size=splits.image_size,
        info={
            "dataset": splits.name,
            "weight_images": len(splits.train),
            "arch_images": len(splits.val),
            "test_images": len(splits.test),
            "val_fraction": factory["val_fraction"],
            "split_seed": factory["split_seed"],
            "augment": augment.to_dict(),
            **splits.info,
        },
    )
