"""Atomic trial checkpoints: everything needed to continue a trial bit-for-bit.

A checkpoint holds the model, optimiser and scheduler states, the Python/NumPy/torch RNG
states (of every rank, each with its own device's CUDA state), the number of finished epochs,
the elapsed training time, the best metrics, the records yielded so far and the trial status.
It is written to a temporary file in the same directory, fsynced, then moved over
`checkpoint.pt` with `os.replace`, so a reader (or a resumed trial) sees either the old
checkpoint or the new one, never a torn file.

Loading never executes code: checkpoints are read with `torch.load(weights_only=True)`, which
unpickles only tensors, numbers, strings and containers. Run directories travel between
machines and shared storage, so a file planted in one must not run anything. Everything a
checkpoint holds is therefore stored in those types (the NumPy RNG state as a tensor).
A file that cannot be read that way is not a checkpoint: `load_checkpoint` raises
`CheckpointError` naming it (never with advice to load it another way), and
`load_or_quarantine` moves it aside so the trial restarts. A checkpoint of a newer format than
this normbench reads is refused with both versions named and left where it is
(`NewerCheckpointError`): retraining would mix a newer version's epochs with this one's.

Writing: a full disk (or quota, or file-size limit) raises `StorageFullError` naming the file
and its file system, not torch's serializer error; the old checkpoint stays. A trial worker
started by `normbench run` writes only while its driver still holds the run directory
(`lease`): a worker that outlives a killed driver raises DriverGone instead of writing.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import random
import re
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from normbench.errors import UserError
from normbench.results.paths import atomic_write

CHECKPOINT_NAME = "checkpoint.pt"
FORMAT_VERSION = 2  # 2: loadable with weights_only=True (1 held NumPy arrays)
QUARANTINE_SUFFIX = ".invalid"


class CheckpointError(UserError):
    """A checkpoint that cannot be read, or belongs to another trial."""


class NewerCheckpointError(CheckpointError):
    """A checkpoint written in a newer format than this normbench reads: kept, never
    quarantined or retrained over."""


# Checked before every checkpoint write of this context (see `lease`); None: always write.
_LEASE: contextvars.ContextVar[Callable[[], None] | None] = contextvars.ContextVar(
    "normbench_checkpoint_lease", default=None
)


@contextlib.contextmanager
def lease(check: Callable[[], None]) -> Iterator[None]:
    """Call `check()` before each checkpoint write inside this block; it raises (DriverGone)
    when the process must not write any more. Trainings run in the caller's context, so
    `with lease(...): for r in run_trial(...)` covers every write of that trial."""
    token = _LEASE.set(check)
    try:
        yield
    finally:
        _LEASE.reset(token)


def checkpoint_path(checkpoint_dir: str | os.PathLike) -> Path:
    return Path(checkpoint_dir) / CHECKPOINT_NAME


def rng_state(device: torch.device | None = None) -> dict[str, Any]:
    """The global RNG states a training loop may draw from: Python, NumPy, torch's CPU
    generator, and the generator of `device` when it is a CUDA device CUDA has started on.

    Only this process's own device: a retry may see fewer GPUs than the run that saved (a
    state per visible GPU, restored by index, failed there), and in a DDP trial each rank
    saves its own (`Parallel.gather` collects them on the writer).
    """
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    assert isinstance(keys, np.ndarray)  # the legacy form is a tuple with the key array
    state: dict[str, Any] = {
        "python": random.getstate(),  # (version, tuple of 625 ints, float | None)
        # weights_only cannot hold an ndarray: the MT19937 key (624 uint32) goes as int64
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
    }
    if device is not None and device.type == "cuda" and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device | None = None) -> None:
    """Restore what `rng_state` captured; its CUDA state goes to `device` (a CUDA device).

    A checkpoint written before per-device states held one state per visible GPU (a list):
    the entry of `device`'s index is restored when there is one."""
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda is None or device is None or device.type != "cuda":
        return
    if isinstance(cuda, list | tuple):  # one state per GPU the saving process could see
        index = device.index if device.index is not None else torch.cuda.current_device()
        if index >= len(cuda):
            return
        cuda = cuda[index]
    torch.cuda.set_rng_state(cuda, device)


def rank_rng_state(saved: dict[str, Any] | list[dict[str, Any]], rank: int) -> dict[str, Any]:
    """The RNG states of `rank` from a checkpoint's `rng`: a list with one entry per rank, or
    (one process, or a checkpoint written before ranks kept their own) a single entry."""
    if isinstance(saved, dict):
        return saved
    return saved[rank] if rank < len(saved) else saved[0]


def save_checkpoint(checkpoint_dir: str | os.PathLike, payload: dict[str, Any]) -> Path:
    """Write `payload` atomically to checkpoint_dir/checkpoint.pt and return the path.

    Raises DriverGone (from the `lease` check) before writing anything, StorageFullError when
    the file system is full; either way the previous checkpoint stays as it was.
    """
    check = _LEASE.get()
    if check is not None:
        check()
    directory = Path(checkpoint_dir)
    directory.mkdir(parents=True, exist_ok=True)
    if directory.is_symlink():  # a planted link: never write through it
        raise CheckpointError(f"{directory} is a symbolic link; no checkpoint is written there")
    target = directory / CHECKPOINT_NAME

    def write(f: Any) -> None:
        writer = _Writer(f)
        try:
            torch.save({"format_version": FORMAT_VERSION, **payload}, writer)
        except RuntimeError as exc:  # torch's serializer wraps the OSError of a write
            raise (writer.error or exc) from None

    atomic_write(target, write)
    _fsync_dir(directory)
    return target


class _Writer:
    """The checkpoint file as torch.save sees it, remembering the OSError of a failed write
    (torch reports it as "unexpected pos", which names neither the disk nor the file)."""

    def __init__(self, f: Any) -> None:
        self._f = f
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        try:
            return int(self._f.write(data))
        except OSError as exc:
            self.error = exc
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_checkpoint(
    checkpoint_dir: str | os.PathLike, *, trial_id: str | None = None, mmap: bool = False
) -> dict[str, Any] | None:
    """The checkpoint in `checkpoint_dir`, or None when there is none.

    With `trial_id`, a checkpoint written by another trial raises CheckpointError instead of
    silently continuing the wrong experiment. `mmap`: the tensors are memory-mapped from the
    file, read only when used (their shapes cost nothing).
    """
    path = checkpoint_path(checkpoint_dir)
    if not path.is_file():
        return None
    try:
        # weights_only=True: only tensors, numbers, strings and containers are unpickled, so a
        # crafted file cannot run code (see the module docstring).
        with warnings.catch_warnings():  # torch's notes on an odd file (pickle protocol)
            warnings.simplefilter("ignore")
            payload = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as exc:
        raise CheckpointError(f"{path} is not a valid normbench checkpoint ({_why(exc)})") from None
    version = payload.get("format_version") if isinstance(payload, dict) else None
    if isinstance(version, int) and version > FORMAT_VERSION:
        raise NewerCheckpointError(
            f"{path} has checkpoint format {version}, newer than the format {FORMAT_VERSION} "
            "this normbench reads; it was left in place: continue the trial with the normbench "
            "version that wrote it"
        )
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format {version!r}; this normbench reads {FORMAT_VERSION}"
        )
    if trial_id is not None and payload.get("trial_id") != trial_id:
        raise CheckpointError(
            f"{path} belongs to trial {payload.get('trial_id')!r}, not to trial {trial_id!r}"
        )
    return payload


def _why(exc: Exception) -> str:
    """What is wrong with a file torch could not load safely, in normbench's words: torch's
    own message for a refused object suggests loading it unsafely, which for a planted file is
    exactly what must not happen, so it is never quoted."""
    text = str(exc)
    named = re.search(r"GLOBAL ([\w.]+)", text)
    if named:
        return (
            f"it holds the Python object {named.group(1)}, and a checkpoint holds only tensors, "
            "numbers, strings and containers"
        )
    refused = re.search(r"WeightsUnpickler error:\s*([^\n]+)", text)
    if refused or "weights_only" in text or "Weights only" in text:
        why = f" ({refused.group(1).strip()[:120]})" if refused else ""
        return f"the loader that unpickles only tensors and plain values refused it{why}"
    first = text.strip().splitlines()[0] if text.strip() else ""
    return f"{type(exc).__name__}: {first[:200]}" if first else type(exc).__name__


def load_or_quarantine(
    checkpoint_dir: str | os.PathLike, *, trial_id: str
) -> tuple[dict[str, Any] | None, str | None]:
    """`(payload, None)`, or `(None, note)` after moving an invalid checkpoint aside.

    An unreadable, foreign or tampered `checkpoint.pt` is renamed to `checkpoint.pt.invalid`
    (kept for inspection, never loaded again) so the trial restarts from scratch instead of
    failing on every rerun; `note` says what happened, for the run's report. A newer format
    is not invalid: NewerCheckpointError propagates and the file stays.
    """
    try:
        return load_checkpoint(checkpoint_dir, trial_id=trial_id), None
    except NewerCheckpointError:
        raise
    except CheckpointError as exc:
        path = checkpoint_path(checkpoint_dir)
        os.replace(path, path.with_name(path.name + QUARANTINE_SUFFIX))
        return None, (
            f"{exc}; moved it to {path.name + QUARANTINE_SUFFIX} (kept for inspection, never "
            "loaded) and restarted the trial from scratch"
        )


def read_records(checkpoint_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The per-epoch records a checkpoint holds (empty without a checkpoint).

    A driver interrupted between a checkpoint and its store write can recover the records
    from here instead of retraining.
    """
    payload = load_checkpoint(checkpoint_dir)
    return list(payload["records"]) if payload else []
