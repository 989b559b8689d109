"""Data sets and loaders: `build_data(name, ...)` gives the engine its batches.

Built-ins: `cifar10`, `cifar100`, `svhn`, `caltech256`, `flowers102` (torchvision's files and
loaders), `cub200` (its own archive), `imagenet` (an ImageFolder tree the user has),
`imagenet16` (ImageNet 16x16, e.g. ImageNet16-120, from its pickled batches), `digits`
(ships inside scikit-learn) and `synthetic` (generated). Plugins register
more through `register_dataset` or the entry-point group `normbench.datasets`
(`normbench.data.registry`, beside the built-ins' table); a factory is
`fn(*, root, download, image_size, val_fraction, split_seed, **options) -> DataSplits`.
"""

from __future__ import annotations

from normbench.data.base import Augment, DatasetOptionError, DataSplits, TensorSet
from normbench.data.build import Data, Loader, build_data
from normbench.data.registry import BUILTIN_DATASETS, DATASETS, register_dataset

__all__ = [
    "BUILTIN_DATASETS",
    "DATASETS",
    "Augment",
    "Data",
    "DataSplits",
    "DatasetOptionError",
    "Loader",
    "TensorSet",
    "build_data",
    "register_dataset",
]
