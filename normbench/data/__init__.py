"""Data sets and loaders: `build_data(name, ...)` gives the engine its batches.

Built-ins: `cifar10`, `cifar100`, `svhn`, `caltech256`, `flowers102` (torchvision's files and
loaders), `cub200` (its own archive), `imagenet` (an ImageFolder tree the user has), `digits`
(ships inside scikit-learn) and `synthetic` (generated). Plugins register
more through `register_dataset` or the entry-point group `normbench.datasets`; a factory is
`fn(*, root, download, image_size, val_fraction, split_seed, **options) -> DataSplits`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from normbench.data.base import Augment, DatasetOptionError, DataSplits, TensorSet
from normbench.data.build import Data, Loader, build_data
from normbench.data.caltech import caltech256
from normbench.data.cifar import cifar10, cifar100
from normbench.data.cub import cub200
from normbench.data.digits import digits
from normbench.data.flowers import flowers102
from normbench.data.imagenet import imagenet
from normbench.data.svhn import svhn
from normbench.data.synthetic import synthetic
from normbench.registry import DATASETS

BUILTIN_DATASETS: dict[str, Callable[..., DataSplits]] = {
    "cifar10": cifar10,
    "cifar100": cifar100,
    "svhn": svhn,
    "caltech256": caltech256,
    "flowers102": flowers102,
    "cub200": cub200,
    "imagenet": imagenet,
    "digits": digits,
    "synthetic": synthetic,
}


def register_dataset(name: str | None = None) -> Callable[[Any], Any]:
    """Decorator: register a data-set factory under `name` (default: the function's name)."""
    return DATASETS.decorator(name)


__all__ = [
    "BUILTIN_DATASETS",
    "Augment",
    "Data",
    "DataSplits",
    "DatasetOptionError",
    "Loader",
    "TensorSet",
    "build_data",
    "register_dataset",
]
