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
`CheckpointError` naming it, and `load_or_quarantine` moves it aside so the trial restarts.
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from normbench.errors import UserError

CHECKPOINT_NAME = "checkpoint.pt"
FORMAT_VERSION = 2  # 2: loadable with weights_only=True (1 held NumPy arrays)
QUARANTINE_SUFFIX = ".invalid"


class CheckpointError(UserError):
    """A checkpoint that cannot be read, or belongs to another trial."""


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
    """Write `payload` atomically to checkpoint_dir/checkpoint.pt and return the path."""
    directory = Path(checkpoint_dir)
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / CHECKPOINT_NAME
    fd, tmp = tempfile.mkstemp(prefix=".checkpoint.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({"format_version": FORMAT_VERSION, **payload}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(directory)
    return target


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
    checkpoint_dir: str | os.PathLike, *, trial_id: str | None = None
) -> dict[str, Any] | None:
    """The checkpoint in `checkpoint_dir`, or None when there is none.

    With `trial_id`, a checkpoint written by another trial raises CheckpointError instead of
    silently continuing the wrong experiment.
    """
    path = checkpoint_path(checkpoint_dir)
    if not path.is_file():
        return None
    try:
        # weights_only=True: only tensors, numbers, strings and containers are unpickled, so a
        # crafted file cannot run code (see the module docstring).
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        why = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{path} is not a valid normbench checkpoint ({type(exc).__name__}: {why[:200]})"
        ) from exc
    if not isinstance(payload, dict) or payload.get("format_version") != FORMAT_VERSION:
        version = payload.get("format_version") if isinstance(payload, dict) else None
        raise CheckpointError(
            f"{path} has checkpoint format {version!r}; this normbench reads {FORMAT_VERSION}"
        )
    if trial_id is not None and payload.get("trial_id") != trial_id:
        raise CheckpointError(
            f"{path} belongs to trial {payload.get('trial_id')!r}, not to trial {trial_id!r}"
        )
    return payload


def load_or_quarantine(
    checkpoint_dir: str | os.PathLike, *, trial_id: str
) -> tuple[dict[str, Any] | None, str | None]:
    """`(payload, None)`, or `(None, note)` after moving an invalid checkpoint aside.

    An unreadable, foreign or tampered `checkpoint.pt` is renamed to `checkpoint.pt.invalid`
    (kept for inspection, never loaded again) so the trial restarts from scratch instead of
    failing on every rerun; `note` says what happened, for the run's report.
    """
    try:
        return load_checkpoint(checkpoint_dir, trial_id=trial_id), None
    except CheckpointError as exc:
        path = checkpoint_path(checkpoint_dir)
        os.replace(path, path.with_name(path.name + QUARANTINE_SUFFIX))
        return None, f"{exc}; moved it to {path.name + QUARANTINE_SUFFIX} and restarted the trial"


def read_records(checkpoint_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The per-epoch records a checkpoint holds (empty without a checkpoint).

    A driver interrupted between a checkpoint and its store write can recover the records
    from here instead of retraining.
    """
    payload = load_checkpoint(checkpoint_dir)
    return list(payload["records"]) if payload else []
