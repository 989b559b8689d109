"""Fault injection through the plugin door: a suite naming this file gets it imported by the
driver (suite validation) and by every trial worker (`build_trial`), where it makes one file
system call fail the way a full disk does. Registers nothing.

`NB_FULL_DISK="<call>:<path part>:<n>"`: from the n-th call of `os.<call>` on a file whose
path contains <path part> on (counted per process), the call fails:
- `write`: raises OSError(ENOSPC) without writing;
- `short`: the n-th call writes half its bytes and returns that count (a disk that fills
  mid-write), later ones raise ENOSPC;
- `fsync`: raises OSError(ENOSPC) (delayed allocation reports a full disk at fsync).
Without the variable the file does nothing.
"""

from __future__ import annotations

import errno
import os

_SPEC = os.environ.get("NB_FULL_DISK", "")


def _path(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return ""


def _install(call: str, part: str, first: int) -> None:
    seen = [0]
    real_write, real_fsync = os.write, os.fsync
    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def hit(fd: int) -> int:
        if part not in _path(fd):
            return 0
        seen[0] += 1
        return seen[0] - first + 1 if seen[0] >= first else 0

    def write(fd: int, data: bytes) -> int:
        n = hit(fd)
        if n == 1 and call == "short":
            return real_write(fd, bytes(data)[: len(data) // 2])
        if n:
            raise full
        return real_write(fd, data)

    def fsync(fd: int) -> None:
        if hit(fd):
            raise full
        real_fsync(fd)

    if call in ("write", "short"):
        os.write = write
    else:
        os.fsync = fsync


if _SPEC and not getattr(os, "_nb_full_disk", False):
    os._nb_full_disk = True  # type: ignore[attr-defined]  # once per process
    _call, _part, _n = _SPEC.split(":")
    _install(_call, _part, int(_n))
