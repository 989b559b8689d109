"""The architecture search's second stream of data. The weights train on the data set's
training split (the loop's training loader); alpha trains on its validation split (the data
set's `val_fraction` of the training images, stratified, `split_seed`), shuffled and augmented
as training data, at the same batch size. Each weight batch is paired with the next
architecture batch; the architecture stream starts a new pass when it runs out, so an epoch
is one pass over the weights' split (the official `SearchDataset` pairs every training image
with a random validation image the same way).

Official split (NAS-Bench-201's DARTS-V1 on CIFAR-100 and ImageNet16-120): the weights take
the whole training set, alpha the benchmark's `x-valid` half of the test set (5,000 CIFAR-100
images, with the training augmentation). normbench keeps the test set for testing: with
`val_fraction: 0.1` alpha sees 5,000 held-out CIFAR-100 training images and the weights the
other 45,000.
"""

from __future__ import annotations

from typing import Any

import torch

from normbench.data.base import DatasetOptionError, TensorSet
from normbench.data.build import load_splits
from normbench.data.tensor_loader import TensorLoader

Batch = tuple[torch.Tensor, torch.Tensor]
_ARCH_STREAM = 1  # the architecture stream's seed offset (its order differs from the weights')


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
    Raises DatasetOptionError without a validation split, for a data set read from image
    files, and when the split holds no whole batch."""
    splits, augment, _, _ = _in_memory(name, batch_size, dataset_options)
    return ArchStream(_stream(name, splits, augment, batch_size, device, seed + _ARCH_STREAM))


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
    name: str, splits: Any, augment: Any, batch_size: int, device: torch.device | str, seed: int
) -> TensorLoader:
    """A shuffled, augmented loader of the validation split, refused when it holds no whole
    batch."""
    loader = TensorLoader(
        splits.val, batch_size=batch_size, train=True, augment=augment, seed=seed,
        device=device, mean=splits.mean, std=splits.std,
    )  # fmt: skip
    if len(loader) == 0:
        raise DatasetOptionError(
            f"dataset {name!r}: batch_size {batch_size} is larger than the {len(splits.val)} "
            "validation images alpha trains on (training drops a last incomplete batch)"
        )
    return loader
