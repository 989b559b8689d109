"""`prepare_dataset`: make a data set's files ready once, in the driver, before any trial runs.

`normbench run` calls it for every distinct data set of a suite (its preflight), so that
- missing files are refused before Ray starts, with what to put where and whether a download
  was tried;
- a CIFAR archive is downloaded and extracted once, by one process, instead of by every trial
  at the same time;
- the training-set size is known, so a batch larger than it is refused up front.

With `fetch=False` (`--dry-run`) nothing is written: files that are absent but would be
downloaded, or an archive not extracted yet, are reported as such and the size stays unknown.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from normbench.data.base import DataSplits
from normbench.data.build import _split_options, size
from normbench.data.cifar import (
    CIFAR10,
    CIFAR100,
    cifar10,
    cifar100,
    corrupted_files,
    default_root,
    find_files,
)
from normbench.data.registry import DATASETS
from normbench.errors import UserError, one_line

_CIFAR = {cifar10: CIFAR10, cifar100: CIFAR100}


class DatasetLoadError(UserError):
    """A data-set factory that failed for another reason than missing files."""


@dataclass(frozen=True)
class DataReport:
    """What the driver found for one data set."""

    dataset: str
    train_size: int | None  # training images per epoch (after the validation carve); None: unknown
    found: str  # one line for --dry-run


def prepare_dataset(name: str, options: dict[str, Any], *, fetch: bool = True) -> DataReport:
    """Check (and with `fetch`, download or extract) data set `name` with a suite's options.

    Raises `DatasetNotFoundError` (missing or corrupted files), `DatasetOptionError` or
    `DatasetLoadError` (any other failure of the factory), each with a one-line message.
    """
    fn = DATASETS.get(name).obj
    factory, _ = _split_options(name, dict(options))
    cls = _CIFAR.get(fn)
    if cls is not None and not fetch:
        root = Path(factory["root"] or default_root()).expanduser().resolve()
        state = find_files(cls, root)
        if state == "archive":
            return DataReport(
                name, None, f"{root / cls.filename} found (md5 ok); extracted once at run time"
            )
        if state != "folder" and factory["download"]:
            if state == "corrupted" and (root / cls.base_folder).is_dir():
                state = f"{', '.join(corrupted_files(cls, root))} of {cls.base_folder}/ corrupted"
            return DataReport(
                name,
                None,
                f"not in {root} ({state}); a download is tried once at run time (download: true)",
            )
    try:
        splits = fn(**factory)
    except UserError:
        raise
    except Exception as exc:  # a plugin factory's own bug, an unreadable file ...
        raise DatasetLoadError(
            one_line(f"dataset {name!r} could not be loaded: {type(exc).__name__}: {exc}")
        ) from exc
    if not isinstance(splits, DataSplits):
        raise DatasetLoadError(
            f"dataset {name!r} factory returned {type(splits).__name__}, not DataSplits"
        )
    where = splits.info.get("root") or splits.info.get("source") or "generated"
    n = size(splits.train)
    return DataReport(name, n, f"{n} training images per epoch ({where})")
