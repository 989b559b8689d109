"""`normbench run` on a run directory whose unfinished trial ran in another execution
environment (the thread count here): refused in one line naming the difference and the
`--restart-changed` flag, before Ray starts and with the run directory byte for byte as it
was; with `--restart-changed` the trial restarts from scratch, its old records and checkpoint
kept aside under `superseded/` where no reader sees them."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import ray
import torch

from normbench.cli import main
from normbench.engine.loop import METRIC_KEYS, run_trial
from normbench.results import RunStore, load_results
from normbench.suite.loader import load_suite

SUITE = """
version: 1
name: envguard
dataset: {name: synthetic, image_size: 8, n_train: 64, n_test: 32, num_classes: 4}
backbones: [{name: resnet20, options: {width: 4}}]
variants: [bn]
batch_sizes: [32]
train: {epochs: 3, schedule: constant, probe: false, device: cpu}
resources: {cpus: 2, gpus: 0}
"""
COMPARED = (*METRIC_KEYS, "lr", "params", "status")


def _interrupted_run(tmp_path: Path) -> tuple[Path, Path, str]:
    """A run made with 2 CPUs per trial (so 2 threads) whose driver died after epoch 1: the
    same store lines and checkpoint the driver and the loop write."""
    suite = tmp_path / "s.yaml"
    suite.write_text(SUITE)
    loaded = load_suite(suite)
    (trial,) = loaded.trials()
    assert trial.spec.num_threads == 2
    run = tmp_path / "run"
    threads = torch.get_num_threads()
    try:
        with RunStore(run) as store:
            store.write_suite(loaded)
            ckpt = run / "checkpoints" / trial.trial_id
            for record in run_trial(trial.spec, checkpoint_dir=ckpt):
                extra = {"spec": trial.spec.to_dict(), "cell": trial.cell}
                store.append_epoch(trial.trial_id, dict(record), extra=extra)
                break  # the checkpoint of epoch 1 is saved before its record is yielded
    finally:
        torch.set_num_threads(threads)
    return suite, run, trial.trial_id


def _hashes(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def test_resume_in_another_environment_is_refused_and_changes_nothing(
    tmp_path: Path, capsys
) -> None:
    suite, run, tid = _interrupted_run(tmp_path)
    before = _hashes(run)
    assert {"suite.yaml", "suite.resolved.json", "epochs.jsonl", ".lock"} <= set(before)
    assert f"checkpoints/{tid}/checkpoint.pt" in before
    with pytest.raises(SystemExit) as exit_:
        main(["run", str(suite), "--output", str(run), "--set", "resources.cpus=1"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"normbench: error: trial {tid} in {run} ran in another environment "
        "(num_threads=2 then, 1 now); it cannot resume there: rerun with the original "
        "resources.cpus / train.num_threads / train.device, or pass --restart-changed to "
        "restart such trials from scratch (their old records are kept aside), or use another "
        "--output"
    ]
    # Nothing written (not suite.yaml, not the lock's pid), nothing added, no Ray started.
    assert _hashes(run) == before
    assert not ray.is_initialized()
    # --dry-run runs the same checks.
    with pytest.raises(SystemExit) as exit_:
        main(["run", str(suite), "--output", str(run), "--set", "resources.cpus=1", "--dry-run"])
    assert exit_.value.code == 2
    assert _hashes(run) == before


@pytest.mark.slow
def test_restart_changed_restarts_the_trial_from_scratch(tmp_path: Path, capsys) -> None:
    suite, run, tid = _interrupted_run(tmp_path)
    old_line = (run / "epochs.jsonl").read_bytes()
    old_ckpt = (run / "checkpoints" / tid / "checkpoint.pt").read_bytes()
    with pytest.raises(SystemExit) as exit_:
        main(["run", str(suite), "--output", str(run), "--set", "resources.cpus=1",
              "--restart-changed"])  # fmt: skip
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    (archive,) = (run / "superseded").iterdir()
    assert (
        f"trial {tid}: restarted from scratch (--restart-changed): it had run in another "
        f"environment (num_threads=2 then, 1 now); its earlier records and checkpoint are in "
        f"superseded/{archive.name}/"
    ) in out
    # The old records and checkpoint are kept, byte for byte, where no reader looks.
    assert (archive / "epochs.jsonl").read_bytes() == old_line
    assert (archive / "checkpoints" / tid / "checkpoint.pt").read_bytes() == old_ckpt
    assert json.loads((archive / "reason.json").read_text()) == {
        tid: "environment changed (num_threads=2 then, 1 now)"
    }
    # The run holds only the new run's records: epochs 1-3, all at 1 thread, equal to an
    # uninterrupted run of the trial at 1 thread (a resume from the 2-thread checkpoint
    # would differ from epoch 2 on), and the summary says what happened.
    epochs = _lines(run / "epochs.jsonl")
    assert [e["epoch"] for e in epochs] == [1, 2, 3]
    assert {e["environment"]["num_threads"] for e in epochs} == {1}
    (trial,) = load_suite(suite, overrides=("resources.cpus=1",)).trials()
    threads = torch.get_num_threads()
    try:
        reference = list(run_trial(trial.spec))
    finally:
        torch.set_num_threads(threads)
    for got, want in zip(epochs, reference, strict=True):
        assert {k: got[k] for k in COMPARED} == {k: want[k] for k in COMPARED}
    (summary,) = _lines(run / "trials.jsonl")
    assert summary["status"] == "completed"
    assert summary["notes"][0].startswith("restarted from scratch (--restart-changed)")
    rows = load_results(run)
    assert len(rows) == 1 and int(rows.iloc[0]["epochs"]) == 3
