"""Atomic trial checkpoints: everything needed to continue a trial bit-for-bit.

A checkpoint holds the model, optimiser and scheduler states, the Python/NumPy/torch RNG
states, the number of finished epochs, the elapsed training time, the best metrics, the records
yielded so far and the trial status. It is written to a temporary file in the same directory,
fsynced, then moved over `checkpoint.pt` with `os.replace`, so a reader (or a resumed trial)
sees either the old checkpoint or the new one, never a torn file.
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
FORMAT_VERSION = 1


class CheckpointError(UserError):
    """A checkpoint that cannot be read, or belongs to another trial."""


def checkpoint_path(checkpoint_dir: str | os.PathLike) -> Path:
    return Path(checkpoint_dir) / CHECKPOINT_NAME


def rng_state() -> dict[str, Any]:
    """The global RNG states a training loop may draw from."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` captured."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


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
        # weights_only=False: the payload holds RNG states (tuples, numpy arrays); the file is
        # one this harness wrote into its own run directory.
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise CheckpointError(
            f"checkpoint {str(path)!r} cannot be read ({type(exc).__name__}: {exc}); "
            f"delete it to restart the trial from scratch"
        ) from exc
    if payload.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {str(path)!r} has format version {payload.get('format_version')!r}, "
            f"this normbench writes {FORMAT_VERSION}"
        )
    if trial_id is not None and payload.get("trial_id") != trial_id:
        raise CheckpointError(
            f"checkpoint {str(path)!r} belongs to trial {payload.get('trial_id')!r}, "
            f"not to trial {trial_id!r}"
        )
    return payload


def read_records(checkpoint_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The per-epoch records a checkpoint holds (empty without a checkpoint).

    A driver interrupted between a checkpoint and its store write can recover the records
    from here instead of retraining.
    """
    payload = load_checkpoint(checkpoint_dir)
    return list(payload["records"]) if payload else []
