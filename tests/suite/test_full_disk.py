"""A full disk through `normbench run`: one line naming the file and its file system, the
summary and report of what is stored, the failure stored where it fits, no torn or lost
line, and a rerun that resumes (its records equal an uninterrupted run's).

Two ways to fill a disk without touching the machine's own:
- at the exact call, through the plugin door (`full_disk_plugin.py`, named in the suite):
  `os.fsync` of a trial's checkpoint in the Ray worker, then `os.write` of the driver's
  `epochs.jsonl` append, each raising OSError(ENOSPC) as the kernel does;
- a real 512 KiB tmpfs for the run directory, in an unprivileged user + mount namespace
  (`unshare -rm`; skipped where the kernel does not allow one).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_faults import _same_records, _train
from test_resume_kill import _wait_gone

from normbench.engine import checkpoint as ckpt

pytestmark = pytest.mark.slow
HERE = Path(__file__).resolve().parent
EPOCHS = 2
SUITE = f"""
version: 1
name: fulldisk
plugins: [full_disk_plugin.py]
dataset: {{name: digits, image_size: 8, val_fraction: 0.1}}
backbones: [{{name: resnet20, options: {{width: 4}}}}]
variants: [bn, {{name: gn, options: {{num_groups: 2}}}}]
batch_sizes: [32]
train: {{epochs: {EPOCHS}, lr: 0.05, schedule: constant, probe: false, device: cpu,
        limit_batches: 2}}
resources: {{cpus: 1, gpus: 0}}
max_concurrent: 1
"""


def _lines(path: Path) -> list[dict]:
    """Every line, strictly: a torn or damaged line fails the test."""
    if not path.exists():
        return []
    text = path.read_text()
    assert not text or text.endswith("\n"), f"{path} ends in a torn line"
    return [json.loads(x) for x in text.splitlines()]


def _run(suite: Path, run: Path, env: dict[str, str], fault: str | None) -> tuple[int, str, str]:
    env = {k: v for k, v in env.items() if k != "NB_FULL_DISK"}
    if fault is not None:
        env["NB_FULL_DISK"] = fault
    proc = subprocess.run(
        [sys.executable, "-m", "normbench", "run", str(suite), "--output", str(run)],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert not _wait_gone(env["NB_TEST_MARKER"], 30)
    return proc.returncode, proc.stdout, proc.stderr


def _errors(stderr: str) -> list[str]:
    return [x for x in stderr.splitlines() if x.strip() and "warning:" not in x]


def test_a_full_disk_at_a_checkpoint_and_at_an_append_loses_nothing(
    tmp_path: Path, env: dict[str, str]
) -> None:
    suite, run = tmp_path / "s.yaml", tmp_path / "run"
    suite.write_text(SUITE)
    shutil.copy(HERE / "full_disk_plugin.py", tmp_path)
    # 1. The first trial's second checkpoint hits a full disk (fsync, in the Ray worker).
    code, out, err = _run(suite, run, env, "fsync:.checkpoint.:2")
    (line,) = _errors(err)
    assert code == 1 and line.startswith("normbench: error: storage full: No space left on device")
    first = _lines(run / "trials.jsonl")[0]
    path = run / "checkpoints" / first["trial_id"] / "checkpoint.pt"
    assert f"writing {path} (file system " in line and "free of" in line
    assert f"{run}: 1 failed;" in line and "free space and rerun the same command" in line
    assert "run directory" in out and f"report: {run / 'report' / 'leaderboard.md'}" in out
    assert first["status"] == "failed" and first["error"]["type"] == "StorageFullError"
    assert f"No space left on device writing {path}" in first["reason"]
    assert [e["epoch"] for e in _lines(run / "epochs.jsonl")] == [1]
    assert ckpt.load_checkpoint(path.parent)["epoch"] == 1  # the old checkpoint is intact
    assert [p.name for p in path.parent.iterdir()] == ["checkpoint.pt"]  # no temp file left
    # 2. The rerun resumes that trial from its checkpoint; the driver's second append (the
    # next trial's first epoch) hits the full disk: its failure still fits in trials.jsonl.
    code, out, err = _run(suite, run, env, "write:epochs.jsonl:2")
    (line,) = _errors(err)
    assert code == 1 and f"No space left on device writing {run / 'epochs.jsonl'}" in line
    assert f"{run}: 1 completed, 1 failed;" in line
    summaries = {t["trial_id"]: t for t in _lines(run / "trials.jsonl")}  # a later line wins
    statuses = sorted(s["status"] for s in summaries.values())
    assert statuses == ["completed", "failed"]  # the failure is stored in trials.jsonl
    assert [e["epoch"] for e in _lines(run / "epochs.jsonl")] == [1, 2]  # whole lines only
    # The trial resumed after the full disk holds the records of an uninterrupted run.
    (done,) = [t for t, x in summaries.items() if x["status"] == "completed"]
    assert done == first["trial_id"]
    stored = [e for e in _lines(run / "epochs.jsonl") if e["trial_id"] == done]
    compared = _same_records(stored, _train(suite, done), done)
    print(
        "full disk: 2 faults injected (checkpoint fsync, store append), 2 handled in one line "
        f"each, {compared} records of the resumed trial byte-equal with an uninterrupted run"
    )
    assert compared == EPOCHS


def _unshare_works() -> bool:
    if not shutil.which("unshare"):
        return False
    probe = subprocess.run(
        ["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
        capture_output=True, timeout=30,
    )  # fmt: skip
    return probe.returncode == 0


@pytest.mark.skipif(not _unshare_works(), reason="no unprivileged user+mount namespaces here")
def test_a_real_full_tmpfs_ends_the_run_in_one_line(tmp_path: Path, env: dict[str, str]) -> None:
    """The run directory on a 512 KiB tmpfs (a 200 KB checkpoint, written beside the old one,
    and Tune's state fill it): whatever write fails first, the run ends in one line naming
    the tmpfs, and every stored line is whole."""
    suite, disk, out = tmp_path / "s.yaml", tmp_path / "disk", tmp_path / "out"
    suite.write_text(
        SUITE.replace("epochs: 2", "epochs: 4").replace("plugins: [full_disk_plugin.py]\n", "")
    )
    disk.mkdir()
    script = (
        f"mount -t tmpfs -o size=512k tmpfs {disk} && "
        f"{sys.executable} -m normbench run {suite} --output {disk}/run "
        f"> {tmp_path}/stdout 2> {tmp_path}/stderr; echo $? > {tmp_path}/rc; "
        f"cp -a {disk}/run {out}"
    )
    subprocess.run(["unshare", "-rm", "sh", "-c", script], env=env, timeout=400, check=True)
    assert not _wait_gone(env["NB_TEST_MARKER"], 30)
    stderr = (tmp_path / "stderr").read_text()
    (line,) = _errors(stderr)
    assert (tmp_path / "rc").read_text().strip() == "1", stderr
    assert line.startswith("normbench: error: storage full: No space left on device writing ")
    assert f"(file system {disk}: " in line and "free space and rerun the same command" in line
    for name in ("epochs.jsonl", "trials.jsonl"):
        _lines(out / name)  # whole lines only
    assert "Traceback" not in stderr + (tmp_path / "stdout").read_text()
    assert os.listdir(disk) == []  # the tmpfs went with its namespace
