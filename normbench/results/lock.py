"""The run directory's lock: one writer at a time, and a lease its trial workers check.

`RUN_DIR/.lock` is held with `flock` by the process that writes the run directory (`normbench
run`'s driver, `normbench evaluate`); the kernel releases it when that process dies, even by
SIGKILL. The holder writes `<pid> <token>` into it: readers name the pid when they refuse, and
trial workers compare the token (`Lease`) so that a worker outliving its driver never writes
again. On a shared folder the lock works where the file system supports `flock` (NFS maps it
to POSIX locks); the token check works everywhere.

This module never imports torch.
"""

from __future__ import annotations

import fcntl
import os
import time
from dataclasses import dataclass
from pathlib import Path

from normbench.errors import DriverGone, RunDirError
from normbench.results import paths

# What a refused lock tells `normbench run` to do (`normbench evaluate` has no --output).
RUN_BUSY_HINT = "wait for it to finish or choose another --output"


LOCK = ".lock"


def release_lock(fd: int) -> None:
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


def acquire_lock(run_dir: Path, busy_hint: str, role: str) -> int:
    """Hold RUN_DIR/.lock (flock, released by the kernel when this process dies) and write
    `<pid> <token> <role>` into it: the token tells this driver's trial workers it still
    holds it (`Lease`), the role ("run", "evaluate") tells readers what is going on. A few
    quick retries ride out a reader's momentary probe (`lock_holder`)."""
    fd = paths.open_nofollow(run_dir / LOCK, os.O_RDWR | os.O_CREAT)
    for attempt in range(5):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if attempt < 4:
                time.sleep(0.1)
                continue
            holder = _holder_pid(os.pread(fd, 128, 0))
            os.close(fd)
            raise RunDirError(
                f"run directory {run_dir} is in use by another normbench process (pid "
                f"{holder}); {busy_hint}"
            ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()} {os.urandom(8).hex()} {role}\n".encode(), 0)
    os.fsync(fd)
    return fd


def _holder_pid(raw: bytes) -> str:
    words = raw.decode(errors="replace").split()
    return words[0] if words and words[0].isdigit() else "unknown"


def lock_holder(run_dir: str | os.PathLike[str]) -> tuple[str, str] | None:
    """(pid, role) of the process holding `run_dir`'s lock, or None when nobody holds it.
    Reads only (a momentary shared flock; nothing is created or written)."""
    try:
        fd = paths.open_nofollow(Path(run_dir) / LOCK, os.O_RDONLY)
    except (FileNotFoundError, RunDirError):
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        raw = os.pread(fd, 128, 0)
        words = raw.decode(errors="replace").split()
        return _holder_pid(raw), (words[2] if len(words) > 2 else "run")
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


@dataclass(frozen=True)
class Lease:
    """What a trial worker checks before each checkpoint write: that the driver which started
    it still holds the run directory (`.lock` is locked and holds the same token). A driver
    killed with SIGKILL loses the lock with its process; a rerun writes a new token. Either
    way the worker raises DriverGone instead of writing (the run's stop is a stop)."""

    lock: str  # RUN_DIR/.lock
    token: str  # the second word the driver wrote into it

    def check(self) -> None:
        gone = DriverGone(
            f"the driver that started this trial no longer holds {Path(self.lock).parent} "
            "(killed or replaced by a rerun); stopping before writing its checkpoint"
        )
        try:
            fd = paths.open_nofollow(Path(self.lock), os.O_RDONLY)
        except (OSError, RunDirError):
            raise gone from None
        try:
            words = os.pread(fd, 128, 0).decode(errors="replace").split()
            if words[1:2] != [self.token]:
                raise gone
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return  # held: by our driver, since the token is ours
            fcntl.flock(fd, fcntl.LOCK_UN)
            raise gone
        finally:
            os.close(fd)
