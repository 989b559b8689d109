"""Checkpoints are atomic (a failed write leaves the old file intact) and restore RNG streams."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from normbench.engine import checkpoint as ckpt


def test_round_trip_and_trial_check(tmp_path) -> None:
    ckpt.save_checkpoint(tmp_path, {"trial_id": "abc", "epoch": 3, "records": [{"epoch": 1}]})
    payload = ckpt.load_checkpoint(tmp_path, trial_id="abc")
    assert payload["epoch"] == 3 and payload["records"] == [{"epoch": 1}]
    assert ckpt.read_records(tmp_path) == [{"epoch": 1}]
    with pytest.raises(ckpt.CheckpointError, match="belongs to trial 'abc'"):
        ckpt.load_checkpoint(tmp_path, trial_id="other")
    assert ckpt.load_checkpoint(tmp_path / "missing") is None


def test_failed_write_keeps_previous_checkpoint(tmp_path, monkeypatch) -> None:
    ckpt.save_checkpoint(tmp_path, {"trial_id": "t", "epoch": 1})
    real_save = torch.save

    def torn_save(obj, f, *args, **kwargs):  # writes half a file, then the process "dies"
        real_save(obj, f, *args, **kwargs)
        f.truncate(10)
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", torn_save)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_checkpoint(tmp_path, {"trial_id": "t", "epoch": 2})
    monkeypatch.undo()
    assert ckpt.load_checkpoint(tmp_path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # no temp file left


def test_unreadable_checkpoint_is_a_user_error(tmp_path) -> None:
    (tmp_path / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ckpt.CheckpointError, match="is not a valid normbench checkpoint"):
        ckpt.load_checkpoint(tmp_path)


def test_rng_state_survives_a_file(tmp_path) -> None:
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    ckpt.save_checkpoint(tmp_path, {"rng": ckpt.rng_state()})
    want = (random.random(), np.random.rand(), torch.rand(3))
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    ckpt.set_rng_state(ckpt.load_checkpoint(tmp_path)["rng"])
    got = (random.random(), np.random.rand(), torch.rand(3))
    assert got[0] == want[0] and got[1] == want[1] and torch.equal(got[2], want[2])


class _Payload:
    """A pickle that runs code when unpickled (what a tampered run directory could hold)."""

    def __init__(self, marker) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))  # creates the marker file if it is ever unpickled


def _plant(path, marker) -> None:
    torch.save({"format_version": ckpt.FORMAT_VERSION, "trial_id": "t", "x": _Payload(marker)},
               path)  # fmt: skip


def test_a_planted_pickle_payload_never_runs(tmp_path) -> None:
    marker = tmp_path / "pwned"
    _plant(tmp_path / "checkpoint.pt", marker)
    with pytest.raises(ckpt.CheckpointError, match="checkpoint.pt is not a valid normbench"):
        ckpt.load_checkpoint(tmp_path, trial_id="t")
    assert not marker.exists()


def test_an_invalid_checkpoint_is_moved_aside_with_a_note(tmp_path) -> None:
    marker = tmp_path / "pwned"
    _plant(tmp_path / "checkpoint.pt", marker)
    payload, note = ckpt.load_or_quarantine(tmp_path, trial_id="t")
    assert payload is None and not marker.exists()
    assert note is not None and "moved it to checkpoint.pt.invalid" in note
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt.invalid"]
    assert ckpt.load_or_quarantine(tmp_path, trial_id="t") == (None, None)  # now: no checkpoint
    ckpt.save_checkpoint(tmp_path, {"trial_id": "t", "epoch": 1})
    assert ckpt.load_or_quarantine(tmp_path, trial_id="t")[0]["epoch"] == 1


def test_a_checkpoint_of_another_format_is_refused(tmp_path) -> None:
    torch.save({"format_version": 1, "trial_id": "t"}, tmp_path / "checkpoint.pt")
    with pytest.raises(ckpt.CheckpointError, match="has checkpoint format 1; this normbench"):
        ckpt.load_checkpoint(tmp_path)


def test_a_worker_never_writes_once_its_driver_let_go(tmp_path) -> None:
    """The lease a trial worker checks before each checkpoint write: valid while the driver
    holds the run directory's lock, refused (DriverGone, nothing written) once it is released
    (a killed driver) or taken by a rerun (another token)."""
    from normbench.errors import DriverGone
    from normbench.results.store import RunStore

    run = tmp_path / "run"
    where = run / "checkpoints" / "abc"
    store = RunStore(run)
    lease = store.lease()
    with ckpt.lease(lease.check):
        ckpt.save_checkpoint(where, {"trial_id": "t", "epoch": 1})
        store.close()  # the driver is gone
        with pytest.raises(DriverGone, match="no longer holds"):
            ckpt.save_checkpoint(where, {"trial_id": "t", "epoch": 2})
        with RunStore(run):  # a rerun holds it now, with its own token
            with pytest.raises(DriverGone):
                ckpt.save_checkpoint(where, {"trial_id": "t", "epoch": 3})
    assert ckpt.load_checkpoint(where)["epoch"] == 1
    assert [p.name for p in where.iterdir()] == ["checkpoint.pt"]


def test_a_full_disk_names_the_file_and_keeps_the_old_checkpoint(tmp_path, monkeypatch) -> None:
    """ENOSPC from the file system while torch serializes: StorageFullError naming the file
    and its file system (torch itself says only "unexpected pos"), the old checkpoint kept."""
    import errno
    import os

    from normbench.errors import StorageFullError

    ckpt.save_checkpoint(tmp_path, {"trial_id": "t", "epoch": 1})
    real = os.fsync

    def full(fd):  # the file system reports the full disk when the data is flushed
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    big = {"trial_id": "t", "epoch": 2, "w": torch.zeros(4096)}
    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(StorageFullError) as err:
        ckpt.save_checkpoint(tmp_path, big)
    monkeypatch.setattr(os, "fsync", real)
    assert str(err.value).startswith(
        f"No space left on device writing {tmp_path / 'checkpoint.pt'}"
    )
    assert "(file system " in str(err.value) and "free of" in str(err.value)
    assert ckpt.load_checkpoint(tmp_path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


def test_a_newer_format_is_refused_naming_both_versions_and_kept(tmp_path) -> None:
    torch.save(
        {"format_version": ckpt.FORMAT_VERSION + 1, "trial_id": "t"}, tmp_path / "checkpoint.pt"
    )
    before = (tmp_path / "checkpoint.pt").read_bytes()
    with pytest.raises(ckpt.NewerCheckpointError) as err:
        ckpt.load_or_quarantine(tmp_path, trial_id="t")
    assert f"format {ckpt.FORMAT_VERSION + 1}, newer than the format {ckpt.FORMAT_VERSION}" in str(
        err.value
    )
    assert (tmp_path / "checkpoint.pt").read_bytes() == before  # not moved aside, not changed


def test_an_invalid_checkpoint_note_never_advises_unsafe_loading(tmp_path) -> None:
    _plant(tmp_path / "checkpoint.pt", tmp_path / "pwned")
    _, note = ckpt.load_or_quarantine(tmp_path, trial_id="t")
    assert "holds the Python object" in note and "never loaded" in note
    assert "weights_only" not in note and "trust" not in note
