"""SIGINT and SIGTERM end `normbench train` and `normbench evaluate` with one line and the
shell's status (130, 143); what evaluate appended before the signal stays, whole, and a
rerun does the rest. (`normbench run`: tests/suite/test_faults.py.)"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import torch

from normbench.cli import main
from normbench.engine.loop import run_trial
from normbench.results.store import RunStore
from normbench.suite.loader import load_suite

pytestmark = pytest.mark.slow
SUITE = """
version: 1
name: stopme
dataset: {name: synthetic, image_size: 16, n_train: 2048, n_test: 64, num_classes: 4}
backbones: [{name: resnet20, options: {width: 8}}]
variants: [bn]
batch_sizes: [32]
seeds: [0, 1, 2, 3, 4, 5]
train: {epochs: 1, lr: 0.05, schedule: constant, limit_batches: 1, device: cpu, probe: false,
        num_threads: 1}
"""


def _signal_when(ready, signum: int) -> threading.Thread:  # type: ignore[no-untyped-def]
    """Send `signum` to this process once `ready()` holds (polled from a thread): the
    command runs in this process's main thread, where Python delivers signals."""

    def fire() -> None:
        deadline = time.monotonic() + 120
        while not ready() and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(os.getpid(), signum)

    thread = threading.Thread(target=fire, daemon=True)
    thread.start()
    return thread


def _cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    out, err = capsys.readouterr()
    return int(exit_.value.code or 0), out, err


def test_train_stops_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["train", "--variant", "bn", "--backbone", "resnet20", "--dataset", "digits",
            "--dataset-option", "image_size=8", "--epochs", "500", "--num-threads", "1",
            "--checkpoint-dir", str(tmp_path)]  # fmt: skip
    threads, handler = torch.get_num_threads(), signal.getsignal(signal.SIGTERM)
    ckpt = tmp_path / "checkpoint.pt"  # written each epoch: the trial is training
    for signum, code, name in ((signal.SIGINT, 130, "SIGINT"), (signal.SIGTERM, 143, "SIGTERM")):
        start = ckpt.stat().st_mtime_ns if ckpt.exists() else 0
        thread = _signal_when(lambda s=start: ckpt.exists() and ckpt.stat().st_mtime_ns > s, signum)  # noqa: B023
        status, out, err = _cli(argv, capsys)
        thread.join()
        assert ckpt.is_file()  # it was training when the signal came
        assert (status, err.splitlines()) == (code, [f"normbench: stopped by {name}"])
    torch.set_num_threads(threads)
    assert signal.getsignal(signal.SIGTERM) == handler  # main put the caller's handler back


def test_evaluate_stops_in_one_line_keeping_what_it_appended(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "s.yaml").write_text(SUITE)
    suite, run = load_suite(tmp_path / "s.yaml"), tmp_path / "run"
    threads = torch.get_num_threads()
    with RunStore(run) as store:  # a finished run, as the driver leaves it
        for t in suite.trials():
            for rec in run_trial(t.spec, checkpoint_dir=run / "checkpoints" / t.trial_id):
                store.append_epoch(t.trial_id, dict(rec), extra={"spec": t.spec.to_dict()})
            store.finish_trial(t.trial_id, t.spec.to_dict(), t.cell, "completed")
    evaluations = run / "evaluations.jsonl"

    def count() -> int:
        return len(evaluations.read_text().splitlines()) if evaluations.exists() else 0

    argv = ["evaluate", str(run), "--set", "recalibrate_batches=64"]
    for signum, code, name in ((signal.SIGTERM, 143, "SIGTERM"), (signal.SIGINT, 130, "SIGINT")):
        before = count()
        thread = _signal_when(lambda b=before: count() > b, signum)
        status, out, err = _cli(argv, capsys)
        thread.join()
        lines = evaluations.read_text().splitlines()
        assert [json.loads(x)["setting"] for x in lines] == ["recalibrated_stats"] * len(lines)
        assert status == code and err.splitlines() == [
            f"normbench: stopped by {name}; {len(lines) - before} evaluation(s) appended to "
            f"{evaluations} are kept; rerun the same command to do the rest"
        ]
        assert before < len(lines) < 6
    status, _, err = _cli(argv, capsys)
    torch.set_num_threads(threads)
    assert status == 0 and not err
    assert count() == 6  # each trial once
