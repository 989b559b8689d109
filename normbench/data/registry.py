"""The data sets' registry: `DATASETS`, its built-ins, `register_dataset`, and the options
every data set takes (`FACTORY_DEFAULTS`, `LOADER_OPTIONS`) with their rules.

A factory is `fn(*, root, download, image_size, val_fraction, split_seed, **options) ->
DataSplits` (`normbench.contract.DatasetFactory`), decorated with its `DatasetFacts`. Built-ins
(`BUILTIN_DATASETS`) register through the same call a plugin uses (entry-point group
`normbench.datasets`, or `@register_dataset("name")` in a plugin file).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from normbench.data.base import Augment, DataSplits, parse_augment
from normbench.data.caltech import caltech256
from normbench.data.cifar import cifar10, cifar100
from normbench.data.coco import coco
from normbench.data.cub import cub200
from normbench.data.digits import digits
from normbench.data.digits_coco import digits_coco_dataset
from normbench.data.flowers import flowers102
from normbench.data.imagenet import imagenet
from normbench.data.imagenet16 import imagenet16
from normbench.data.style_folders import style_folders
from normbench.data.style_synthetic import style_synthetic
from normbench.data.svhn import svhn
from normbench.data.synthetic import synthetic
from normbench.errors import UnknownNameError, UserError
from normbench.options import OptionDoor, OptionProblem
from normbench.registry import kind_registry
from normbench.spec import DatasetOptions, LoaderOptions, declared

BUILTIN_DATASETS: dict[str, Callable[..., DataSplits]] = {
    "cifar10": cifar10,
    "cifar100": cifar100,
    "svhn": svhn,
    "caltech256": caltech256,
    "flowers102": flowers102,
    "cub200": cub200,
    "imagenet": imagenet,
    "imagenet16": imagenet16,
    "digits": digits,
    "synthetic": synthetic,
    "coco": coco,  # detection and instance segmentation (normbench.tasks.detection)
    "digits_coco": digits_coco_dataset,
    "style_folders": style_folders,
    "style_synthetic": style_synthetic,
}
# The keywords every factory takes, with their defaults, and the options the loaders take
# (`normbench.data.build`): both declared in normbench.spec.
FACTORY_DEFAULTS: dict[str, Any] = {d.name: d.default for d in declared(DatasetOptions)}
LOADER_OPTIONS = tuple(d.name for d in declared(LoaderOptions))


def dataset_rules(
    name: str, fn: Any, options: dict[str, Any], build: bool, context: dict[str, Any]
) -> list[OptionProblem]:
    """The data sets' own option rule (normbench.options, step 3): `augment` parses."""
    try:
        parse_augment(Augment(), options.get("augment"))
    except UserError as exc:
        unknown = isinstance(exc, UnknownNameError)
        return [OptionProblem(str(exc), option="augment", unknown=unknown, error=type(exc))]
    return []


def _common_options() -> dict[str, Any]:
    return {**FACTORY_DEFAULTS, **dict.fromkeys(LOADER_OPTIONS)}


DATASETS = kind_registry(
    "dataset",
    "normbench.datasets",
    lambda: BUILTIN_DATASETS,
    door=OptionDoor("dataset", common=_common_options, rules=dataset_rules),
)


def register_dataset(name: str | None = None) -> Callable[[Any], Any]:
    """Decorator: register a data-set factory under `name` (default: the function's name)."""
    return DATASETS.decorator(name)
