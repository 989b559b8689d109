"""Files inside a run directory: read as data, written without following links.

A run directory may sit on a shared folder (`--output /shared/runs/...`), where anyone who can
write to it can plant files. So nothing read from it is a path to follow:

- A trial id read back is used for a path (`checkpoints/<trial_id>`, `superseded/...`) only
  after `trial_dir` checked it has the form `TrialSpec.trial_id` gives (12 hex digits): a
  line naming `../../x` never reaches the file system.
- normbench never makes a symbolic link in a run directory, so a link there was planted.
  `refuse_links` finds any below the run directory (or below a report folder) and refuses
  the command before it writes; `normbench run --dry-run` makes the same refusal.
- Every file normbench writes there is opened with `O_NOFOLLOW`, or written under a fresh
  name (`O_EXCL`) and renamed over its target, which replaces a link instead of writing
  through it; directories are made one level at a time, refusing a link at each level.
  Readers open with `O_NOFOLLOW` too: a planted link is skipped with a warning, never read.

A full disk: `storage_full` turns the OSError of a failed write (ENOSPC, EDQUOT, EFBIG) into
a `StorageFullError` whose one line names the file and its file system with its free space.

This module never imports torch.
"""

from __future__ import annotations

import errno
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from normbench.errors import RunDirError, StorageFullError

# The form of `TrialSpec.trial_id`: the first 12 hex digits of a sha256.
TRIAL_ID = re.compile(r"[0-9a-f]{12}")
# errno values of a write that failed for lack of room.
FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
_NOFOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC


def is_trial_id(value: object) -> bool:
    return isinstance(value, str) and TRIAL_ID.fullmatch(value) is not None


def trial_dir(root: str | os.PathLike[str], trial_id: object) -> Path:
    """`root/<trial_id>`; RunDirError unless `trial_id` is a trial id (no `..`, no `/`)."""
    if not is_trial_id(trial_id):
        raise RunDirError(
            f"{root}: {trial_id!r} is not a trial id (12 hex digits); no path is built from it"
        )
    return Path(root) / str(trial_id)


# -- links -----------------------------------------------------------------------------------
def find_links(root: str | os.PathLike[str], *, root_too: bool = False) -> list[Path]:
    """Every symbolic link below `root` (and `root` itself with `root_too`: the directory
    the user named may be a link of theirs), not following any, sorted."""
    root = Path(root)
    if root_too and root.is_symlink():
        return [root]
    links: list[Path] = []
    for here, dirs, files in os.walk(root, followlinks=False):
        for name in (*dirs, *files):
            path = Path(here) / name
            if path.is_symlink():
                links.append(path)
    return sorted(links)


def refuse_links(
    root: str | os.PathLike[str], *, inside: str | os.PathLike[str], root_too: bool = False
) -> None:
    """RunDirError naming the first symbolic link below `root` (at it too with `root_too`) (a
    planted one: normbench never makes links) and where it points; `inside` is the run or
    report directory named in the message. Nothing is read through the link or written."""
    links = find_links(root, root_too=root_too)
    if not links:
        return
    first = links[0]
    more = f" (and {len(links) - 1} more)" if len(links) > 1 else ""
    raise RunDirError(
        f"{first} is a symbolic link (to {os.readlink(first)}){more}: normbench never follows "
        f"links in {inside}, where it writes; remove the link(s) and rerun"
    )


def open_nofollow(path: Path, flags: int, mode: int = 0o644) -> int:
    """`os.open` that refuses a link at `path` itself (RunDirError, nothing opened)."""
    try:
        return os.open(path, flags | _NOFOLLOW, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise RunDirError(
                f"{path} is a symbolic link (to {os.readlink(path)}): normbench never follows "
                "links in a run directory; remove it and rerun"
            ) from None
        raise


def read_bytes(path: Path) -> bytes | None:
    """The file's bytes, or None when it is missing. A link raises RunDirError."""
    try:
        fd = open_nofollow(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    with os.fdopen(fd, "rb") as f:
        return f.read()


def make_dirs(path: Path, root: Path) -> Path:
    """Create `path` (at or below the existing directory `root`) one level at a time; a link
    at any level below `root` raises RunDirError instead of being followed."""
    path, root = Path(path), Path(root)
    here = root
    for part in path.relative_to(root).parts:
        here = here / part
        try:
            os.mkdir(here)
        except FileExistsError:
            pass
        if here.is_symlink() or not here.is_dir():
            what = f"a symbolic link (to {os.readlink(here)})" if here.is_symlink() else "a file"
            raise RunDirError(
                f"{here} is {what}, not a directory: normbench never follows links in a run "
                "directory; remove it and rerun"
            )
    return path


def atomic_write(path: Path, data: bytes | str | Callable[[BinaryIO], None]) -> None:
    """Write `data` (or what `data(file)` writes) to a fresh file beside `path` (O_EXCL:
    never an existing file or link), fsync it and rename it over `path`: readers see the old
    file or the new one, and a link planted at `path` is replaced, not written through. A
    full disk raises StorageFullError; either way the old file stays as it was."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        full = storage_full(exc, path) if isinstance(exc, OSError) else None
        if full is not None:
            raise full from exc
        raise


# -- a full disk -----------------------------------------------------------------------------
def storage_full(exc: BaseException, path: str | os.PathLike[str]) -> StorageFullError | None:
    """A StorageFullError naming `path` and its file system, when `exc` (or what it was raised
    from) is a write that failed for lack of room; None for any other error."""
    cause = full_cause(exc)
    if cause is None:
        return None
    if isinstance(cause, StorageFullError):
        return cause
    why = os.strerror(cause.errno or errno.ENOSPC)
    return StorageFullError(cause.errno, f"{why} writing {path} ({describe_disk(Path(path))})")


def full_cause(exc: BaseException | None) -> OSError | None:
    """The first OSError of `exc`'s chain (cause, context) whose errno says storage is full."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in FULL_ERRNOS:
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def describe_disk(path: Path) -> str:
    """'file system /mnt/x: 12.0 KiB free of 1.0 MiB' for the file system holding `path`."""
    here = Path(os.path.abspath(path))
    while not here.exists() and here != here.parent:
        here = here.parent
    try:
        st = os.statvfs(here)
    except OSError:
        return "file system unknown"
    mount = here
    while mount != mount.parent and os.path.ismount(mount) is False:
        mount = mount.parent
    free, total = st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize
    return f"file system {mount}: {_size(free)} free of {_size(total)}"


def _size(n: float) -> str:
    unit = "B"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            break
        n /= 1024
    return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
