"""`build_data`: a registered data set's splits, wrapped in loaders, ready for the engine.

Dataset options (a suite's `dataset_options`) are of two kinds:
- factory options, passed to the data-set factory: `root`, `download`, `image_size`,
  `val_fraction` (default 0.1; 0 = no validation split), `split_seed` (default 0), plus any
  options of that data set (e.g. synthetic's `n_train`);
- loader options, used here: `augment` and `num_workers` (folder data sets only; default: the
  trial's CPUs but one, `normbench.data.folder_loader.default_workers`; not part of the
  trial id).

`augment` is a mapping that overrides the data set's defaults key by key,
`{crop_padding: int >= 0, hflip: bool, rotation: float degrees in [0, 180]}`; `true` or null
keeps the defaults and `false` turns every augmentation off. Unknown option names raise
`UnknownNameError` naming the valid ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from normbench.data.base import Augment, DatasetOptionError, DataSplits, TensorSet, parse_augment
from normbench.data.folder_loader import FolderLoader, build_transform
from normbench.data.registry import DATASETS, FACTORY_DEFAULTS, LOADER_OPTIONS
from normbench.data.shard import Shard
from normbench.data.tensor_loader import Normalizer, TensorLoader, epoch_generator

_PROBE_STREAM = 2


class Loader(Protocol):
    """What the engine iterates: batches `(inputs, targets)` on the training device, this
    rank's part only (`normbench.data.shard`); `batch_size` and `len` count this rank's.
    Image classification's are normalised float images (N, C, H, W) and int64 labels (N,);
    a data set with its own `DataSplits.loader` yields the structure its task takes (a list
    of images and a list of target dicts for detection); `len(inputs)` counts the samples."""

    batch_size: int

    def __len__(self) -> int: ...
    def __iter__(self) -> Any: ...
    def set_epoch(self, epoch: int) -> None: ...


@dataclass
class Data:
    """Loaders and facts for one trial. `val` is None when val_fraction is 0."""

    train: Loader
    val: Loader | None
    test: Loader
    # fixed un-augmented train inputs on the device: normalised images (P, C, H, W), or the
    # inputs of a data set's own loader (e.g. a list of P images)
    probe: Any
    num_classes: int
    in_channels: int
    image_size: int
    info: dict[str, Any] = field(default_factory=dict)


def _split_options(
    name: str, options: dict[str, Any], batch_size: int | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(factory options with the five contract keywords filled in, loader options), after the
    registry's option check (the one suite validation runs)."""
    DATASETS.require_options(name, options, batch_size=batch_size)
    loader = {k: options[k] for k in LOADER_OPTIONS if k in options}
    factory = {**FACTORY_DEFAULTS, **{k: v for k, v in options.items() if k not in loader}}
    return factory, loader


def _make_loader(
    splits: DataSplits,
    split: Any,
    *,
    train: bool,
    batch_size: int,
    device: torch.device,
    seed: int,
    augment: Augment,
    limit_batches: int | None,
    num_workers: int | None,
    shard: Shard,
    cpus: int | None = None,
) -> Loader:
    common: dict[str, Any] = dict(
        batch_size=batch_size,
        device=device,
        mean=splits.mean,
        std=splits.std,
        train=train,
        augment=augment,
        seed=seed,
        limit_batches=limit_batches if train else None,
        shard=shard,
    )
    if splits.loader is not None:  # samples of another structure (docs/tasks.md#batches)
        loader: Loader = splits.loader(split, num_workers=num_workers, cpus=cpus, **common)
        return loader
    if isinstance(split, TensorSet):
        return TensorLoader(split, **common)
    return FolderLoader(
        split, image_size=splits.image_size, num_workers=num_workers, cpus=cpus, **common
    )


def size(split: Any) -> int:
    """Number of samples of a split (TensorSet or sized Dataset)."""
    return len(split)


def _probe(splits: DataSplits, n: int, seed: int, device: torch.device) -> Any:
    """n training images chosen by (seed), un-augmented, normalised, on the device; with the
    data set's own loader, the inputs of its first n training samples in evaluation order."""
    if splits.loader is not None:
        loader = splits.loader(
            splits.train, train=False, batch_size=n, device=device, mean=splits.mean,
            std=splits.std, augment=Augment(), seed=seed, limit_batches=None, shard=Shard(),
            num_workers=0, cpus=None,
        )  # fmt: skip
        return next(iter(loader))[0]
    total = size(splits.train)
    g = epoch_generator(seed, 0, stream=_PROBE_STREAM)
    idx = torch.randperm(total, generator=g)[: min(n, total)].sort().values
    if isinstance(splits.train, TensorSet):
        x = splits.train.images[idx]
    else:
        tf = build_transform(splits.image_size, Augment(), train=False)
        x = torch.stack([tf(splits.train[int(i)][0]) for i in idx])
    return Normalizer(splits.mean, splits.std, device)(x.to(device))


def load_splits(
    name: str, batch_size: int | None, dataset_options: dict[str, Any]
) -> tuple[DataSplits, Augment, dict[str, Any], dict[str, Any]]:
    """Data set `name`'s splits, its training augmentation (the data set's default with the
    `augment` option applied), and the (factory, loader) options, after the registry's option
    check at the optimiser's `batch_size` (the one suite validation runs)."""
    fn = DATASETS.get(name).obj
    factory_opts, loader_opts = _split_options(name, dataset_options, batch_size)
    splits = fn(**factory_opts)
    if not isinstance(splits, DataSplits):
        raise TypeError(
            f"dataset {name!r} factory returned {type(splits).__name__}, not DataSplits"
        )
    augment = parse_augment(splits.augment, loader_opts.get("augment"))
    return splits, augment, factory_opts, loader_opts


def _check_batch(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise DatasetOptionError(f"{name} must be an integer >= 1, but got {value!r}")
    return value


def build_data(
    name: str,
    *,
    batch_size: int,
    eval_batch_size: int,
    device: torch.device | str,
    seed: int,
    limit_batches: int | None = None,
    probe_batch_size: int = 32,
    shard: Shard | None = None,
    cpus: int | None = None,
    **dataset_options: Any,
) -> Data:
    """Load data set `name` (any registered factory) and wrap its splits in loaders.

    `seed` (the trial seed) drives the shuffle order, the augmentation and the probe batch;
    `split_seed` (a data-set option, default 0) drives the validation split. With a
    data-parallel `shard` (rank r of N; `normbench.data.shard`) the loaders serve this rank's
    part only: `batch_size` images of each training batch of N x `batch_size`, and every N-th
    evaluation batch of `eval_batch_size`. `cpus`: the trial's CPUs, which size a folder data
    set's decoding workers (None: this process's).
    """
    shard = shard or Shard()
    batch_size = _check_batch("batch_size", batch_size)
    # the options are checked against the optimiser batch, as suite validation checks them
    splits, augment, factory_opts, loader_opts = load_splits(
        name, batch_size * shard.ranks, dataset_options
    )
    dev = torch.device(device)
    common: dict[str, Any] = dict(
        device=dev,
        seed=int(seed),
        augment=augment,
        limit_batches=limit_batches,
        num_workers=loader_opts.get("num_workers"),
        shard=shard,
        cpus=cpus,
    )
    train = _make_loader(
        splits,
        splits.train,
        train=True,
        batch_size=batch_size,
        **common,
    )
    if len(train) == 0:
        raise DatasetOptionError(
            f"batch_size {batch_size * shard.ranks} is larger than the {size(splits.train)}"
            f" training images of dataset {name!r} (training drops a "
            f"last incomplete batch)"
        )
    ebs = _check_batch("eval_batch_size", eval_batch_size)
    val = (
        None
        if splits.val is None
        else _make_loader(splits, splits.val, train=False, batch_size=ebs, **common)
    )
    test = _make_loader(splits, splits.test, train=False, batch_size=ebs, **common)
    info = {
        "dataset": splits.name,
        "train_size": size(splits.train),
        "val_size": 0 if splits.val is None else size(splits.val),
        "test_size": size(splits.test),
        "num_classes": splits.num_classes,
        "in_channels": splits.in_channels,
        "image_size": splits.image_size,
        "mean": list(splits.mean),
        "std": list(splits.std),
        "augment": augment.to_dict(),
        "val_fraction": factory_opts["val_fraction"],
        "split_seed": factory_opts["split_seed"],
        "train_batches": len(train),
        "train_drop_last": True,
        "loader": type(train).__name__,
        **splits.info,
    }
    return Data(
        train=train,
        val=val,
        test=test,
        probe=_probe(splits, _check_batch("probe_batch_size", probe_batch_size), int(seed), dev),
        num_classes=splits.num_classes,
        in_channels=splits.in_channels,
        image_size=splits.image_size,
        info=info,
    )
