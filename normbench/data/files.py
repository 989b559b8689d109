"""Where data-set files live, how an archive is unpacked, and what a missing file says: the
helpers of the data sets read from files (CIFAR, SVHN, Caltech-256, Flowers-102, CUB-200-2011).

A factory that reads files declares a dry-run hook with `@dry_run(check)`: `check(**options)`
(the factory's own keywords) says, without writing anything, what `normbench run` would do
before the files can be read: None when they are ready, else one line such as "X found;
extracted once at run time"; it raises `DatasetNotFoundError` when they are missing and
cannot be fetched. `normbench run --dry-run` calls it instead of the factory
(`normbench.data.prepare`); a factory without one is simply called.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from normbench.errors import DatasetNotFoundError, one_line

DryRunCheck = Callable[..., str | None]
_F = TypeVar("_F", bound=Callable[..., Any])


def default_root() -> str:
    """`$NORMBENCH_DATA` when set, else ~/.cache/normbench/data."""
    return os.environ.get("NORMBENCH_DATA") or str(Path("~/.cache/normbench/data").expanduser())


def data_root(root: str | None) -> Path:
    """The absolute folder a factory reads: `root`, or the default root."""
    return Path(root or default_root()).expanduser().resolve()


def dry_run(check: DryRunCheck) -> Callable[[_F], _F]:
    """Decorator: attach `check` to a data-set factory as its dry-run hook."""

    def attach(factory: _F) -> _F:
        factory.dry_run = check  # type: ignore[attr-defined]
        return factory

    return attach


def dry_run_check(factory: Any) -> DryRunCheck | None:
    """The dry-run hook a factory declares, or None."""
    check = getattr(factory, "dry_run", None)
    return check if callable(check) else None


def missing_message(
    title: str, root: Path, detail: str, what: str, *, download: bool | None
) -> str:
    """The one line of a missing data set: where it was looked for, what is wrong (`detail`),
    what to put where (`what`), and whether a download was tried (`download` None: the data
    set is never downloaded)."""
    if download is None:
        return f"{title} data not found in {root}: {detail}; it is never downloaded: {what}"
    if download:
        return f"{title} data not found in {root}: {detail}; {what}"
    return (
        f"{title} data not found in {root}: {detail}; download: false, so no download "
        f"was tried; {what}, or set download: true when online"
    )


def download_or_raise(
    title: str, root: Path, detail: str, what: str, fetch: Callable[[], object]
) -> None:
    """Run torchvision's download (`fetch`); any failure (offline, proxy, disk full) becomes
    one `DatasetNotFoundError` line saying a download was tried."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        fetch()
    except Exception as exc:
        why = one_line(f"{type(exc).__name__}: {exc}")
        tried = f"{detail}; " if detail else ""
        raise DatasetNotFoundError(
            missing_message(
                title, root, f"{tried}download was tried and failed ({why})", what, download=True
            )
        ) from exc


def extract_once(archive: Path, dest: Path, folder: str) -> None:
    """Extract `archive` and move the `folder` it holds to `dest/folder`.

    The archive is unpacked into a private folder beside `dest` and `folder` renamed into
    place, so a concurrent reader sees either no folder or a complete one (the rename is
    atomic on one file system); a process that loses the race to another keeps the other's.
    """
    from torchvision.datasets.utils import extract_archive

    dest.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder}-", dir=dest))
    try:
        try:
            extract_archive(str(archive), str(tmp))
        except Exception as exc:  # truncated, not an archive, disk full
            raise DatasetNotFoundError(
                one_line(
                    f"{archive} could not be extracted ({type(exc).__name__}: {exc}); "
                    "replace it with a complete copy"
                )
            ) from exc
        if not (tmp / folder).is_dir():
            raise DatasetNotFoundError(
                f"{archive} holds no folder {folder}/ (found: "
                f"{', '.join(sorted(p.name for p in tmp.iterdir())) or 'nothing'}); "
                "is it the right archive?"
            )
        with contextlib.suppress(OSError):  # another process renamed its copy first
            os.rename(tmp / folder, dest / folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_once(folder: Path, write: Callable[[Path], None]) -> Path:
    """`folder`, written by `write(private folder)` on first use (generated data sets).

    The files are written into a private folder beside it and renamed into place, so a
    concurrent reader sees no folder or a complete one; a process that loses the race to
    another keeps the other's copy. Returns `folder`."""
    if folder.is_dir():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        write(tmp)
        os.rename(tmp, folder)
    except OSError:
        if not folder.is_dir():  # not another process's copy: a failure
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder
