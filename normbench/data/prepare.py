"""`prepare_dataset`: make a data set's files ready once, in the driver, before any trial runs.

`normbench run` calls it for every distinct data set of a suite (its preflight), so that
- missing files are refused before Ray starts, with what to put where and whether a download
  was tried;
- an archive (CIFAR, Caltech-256, Flowers-102, CUB-200-2011) is downloaded and extracted once,
  by one process, instead of by every trial at the same time;
- the training-set size is known, so a batch larger than it is refused up front.

With `fetch=False` (`--dry-run`) nothing is written: the factory's dry-run hook
(`normbench.data.files.dry_run`) reports files that are absent but would be downloaded, or an
archive not extracted yet, and the size stays unknown; ready files are read as in a run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from normbench.data.base import DataSplits
from normbench.data.build import _split_options, size
from normbench.data.files import dry_run_check
from normbench.data.registry import DATASETS
from normbench.errors import UserError, one_line


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
    check = dry_run_check(fn)
    if check is not None and not fetch:
        pending = _call(name, check, factory)
        if pending is not None:
            return DataReport(name, None, pending)
    splits = _call(name, fn, factory)
    if not isinstance(splits, DataSplits):
        raise DatasetLoadError(
            f"dataset {name!r} factory returned {type(splits).__name__}, not DataSplits"
        )
    where = splits.info.get("root") or splits.info.get("source") or "generated"
    n = size(splits.train)
    return DataReport(name, n, f"{n} training images per epoch ({where})")


def _call(name: str, fn: Any, factory: dict[str, Any]) -> Any:
    """`fn(**factory)`, any failure but a user's mistake as one `DatasetLoadError` line."""
    try:
        return fn(**factory)
    except UserError:
        raise
    except Exception as exc:  # a plugin factory's own bug, an unreadable file ...
        raise DatasetLoadError(
            one_line(f"dataset {name!r} could not be loaded: {type(exc).__name__}: {exc}")
        ) from exc
