"""Fault injection through `normbench run`: SIGKILL of the driver's whole process group at
seeded random points of a grid and of a search, one Ray worker killed mid-trial, the study
file deleted, SIGTERM. After each, a rerun ends with every trial stored exactly once, every
epoch of every trial stored once, each record's metric fields byte-equal to an uninterrupted
run of the same trial with the same seeds (`normbench train --suite --trial` once, else its
`suite_trial` + `run_trial` in this process: the same code without a second interpreter),
and a report. Each test prints (pytest -s) and asserts how many faults it injected and
survived and how many records it compared byte-equal.

Tiny digits runs (ResNet-20 at width 4, 2 batches per epoch, one trial at a time). Each
driver runs its own local Ray on purpose: the SIGKILL of the driver's process group must take
that Ray down with it (a cluster shared between drivers would survive the kill, and prove
something else; `--address` runs are tested in test_cluster.py).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from test_resume_kill import _marked_pids, _wait_gone

from normbench.engine.loop import METRIC_KEYS
from normbench.spec import TrialSpec

pytestmark = pytest.mark.slow
SEED = 20241129  # the kill points are random, and the same on every CI run
EPOCHS = 3
COMPARED = (*METRIC_KEYS, "lr", "params", "status", "environment")

GRID = f"""
version: 1
name: faults
dataset: {{name: digits, image_size: 8, val_fraction: 0.1}}
backbones: [{{name: resnet20, options: {{width: 4}}}}]
variants: [bn, {{name: gn, options: {{num_groups: 2}}}}]
batch_sizes: [32]
train: {{epochs: {EPOCHS}, lr: 0.05, schedule: constant, probe: false, device: cpu,
        limit_batches: 2, eval_batch_size: 512}}
resources: {{cpus: 1, gpus: 0}}
max_concurrent: 1
retries: 1
"""
SEARCH = (
    GRID.replace("variants: [bn, {name: gn, options: {num_groups: 2}}]", "variants: [bn]")
    + """
search:
  num_samples: 3
  sampler: random
  seed: 0
  space:
    recipe.lr: {type: float, low: 0.01, high: 0.2, log: true}
"""
)


def _lines(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def _fields(rec: dict) -> str:
    return json.dumps({k: rec.get(k) for k in COMPARED}, sort_keys=True)


def _run(suite: Path, run: Path, env: dict[str, str], log: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "normbench", "run", str(suite), "--output", str(run)]
    return subprocess.Popen(cmd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)  # fmt: skip


def _wait_for(proc: subprocess.Popen, ready, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return
        if proc.poll() is not None:
            pytest.fail(f"the run ended (exit {proc.returncode}) before the fault point")
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    pytest.fail("the run never reached the fault point")


def _kill_group(proc: subprocess.Popen, marker: str, run: Path) -> None:
    """SIGKILL the driver's process group; then no trial worker (each in its own group, alive
    for seconds more) writes a checkpoint once the write it may have been in has landed."""
    # The driver was never reaped (`_wait_for` returned while it ran), so its group id is
    # still its own: no other process (the test beside this one) can be in that group.
    assert proc.returncode is None
    os.killpg(proc.pid, signal.SIGKILL)
    _no_late_checkpoint(run, marker, proc.wait)
    assert not _wait_gone(marker, 30), "Ray processes survived the driver's SIGKILL"


def _checkpoints(run: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_mtime_ns, p.stat().st_size)
            for p in (run / "checkpoints").glob("*/checkpoint.pt")}  # fmt: skip


def _no_late_checkpoint(run: Path, marker: str, wait) -> None:  # type: ignore[no-untyped-def]
    """The driver is gone (`wait` reaps it): after half a second's grace for a write already
    under way, the checkpoints stay as they are until every Ray process of the test is gone
    (trial workers check the driver's lease before each write; the mechanism itself is
    tested in tests/engine/test_checkpoint.py)."""
    wait()
    time.sleep(0.5)
    state = _checkpoints(run)
    _wait_gone(marker, 30)
    assert _checkpoints(run) == state, "a trial worker wrote a checkpoint after its driver died"


def _trial_workers(marker: str) -> list[int]:
    """Ray worker processes of this test running a trial (Tune's function-trainable actor)."""
    pids = []
    for pid in _marked_pids(marker):
        try:
            title = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
        except OSError:
            continue
        if title.startswith(b"ray::ImplicitFunc") or b"_trainable" in title:
            pids.append(pid)
    return pids


def _epochs_stored(run: Path) -> int:
    return len(_lines(run / "epochs.jsonl"))


def _finish(suite: Path, run: Path, env: dict[str, str], log: Path) -> None:
    proc = _run(suite, run, env, log)
    assert proc.wait(timeout=300) == 0, log.read_text()
    assert not _wait_gone(env["NB_TEST_MARKER"], 30)


def _check_complete(run: Path, expected_trials: int) -> dict[str, list[dict]]:
    """Every trial once, every epoch once, a report; returns each trial's records."""
    final: dict[str, dict] = {}
    for t in _lines(run / "trials.jsonl"):
        final[t["trial_id"]] = t  # a rerun's line supersedes a failed one
    assert len(final) == expected_trials
    assert {t["status"] for t in final.values()} == {"completed"}
    records: dict[str, list[dict]] = {}
    for e in _lines(run / "epochs.jsonl"):
        records.setdefault(e["trial_id"], []).append(e)
    assert set(records) == set(final)
    for tid, recs in records.items():
        assert [r["epoch"] for r in recs] == list(range(1, EPOCHS + 1)), tid
    board = (run / "report" / "leaderboard.md").read_text()
    assert "faults" in board or "bn" in board
    return records


def _train_cli(source: Path, tid: str, env: dict[str, str]) -> list[str]:
    """The trial run uninterrupted by `normbench train --suite SUITE|RUN_DIR --trial ID`, in a
    fresh process: its records, and nothing on stderr (torch's C++ allocator once logged
    "Memory block of unknown size..." there from the memory profiler's window)."""
    out = subprocess.run(
        [sys.executable, "-m", "normbench", "train", "--suite", str(source), "--trial", tid,
         "--json"], env=env, capture_output=True, text=True, timeout=300, check=True,
    )  # fmt: skip
    assert out.stderr == "", out.stderr
    return [_fields(json.loads(x)) for x in out.stdout.splitlines()]


def _train(source: Path, tid: str) -> list[str]:
    """The same trial uninterrupted, through what `normbench train --suite --trial` runs
    (`suite_trial`, then `run_trial`), in this process."""
    import torch

    from normbench.cli_train import suite_trial
    from normbench.engine.loop import run_trial

    threads = torch.get_num_threads()
    try:
        return [_fields(dict(r)) for r in run_trial(suite_trial(source, tid, []))]
    finally:
        torch.set_num_threads(threads)


def _same_records(stored: list[dict], reference: list[str], tid: str) -> int:
    """Assert each stored record's metric fields equal the reference's, byte for byte (as
    canonical JSON); returns how many records were compared."""
    got = [_fields(r) for r in stored]
    if got != reference:
        diff = [
            (i + 1, k)
            for i, (a, b) in enumerate(zip(got, reference, strict=False))
            for k in COMPARED
            if json.loads(a)[k] != json.loads(b)[k]
        ]
        pytest.fail(f"trial {tid}: records differ from an uninterrupted run at {diff}")
    return len(got)


def _tally(test: str, faults: int, compared: int) -> None:
    print(f"{test}: {faults} faults injected and survived, {compared} records compared "
          "byte-equal with an uninterrupted run")  # fmt: skip


def test_grid_survives_a_worker_kill_and_driver_kills(tmp_path: Path, env: dict[str, str]) -> None:
    rng = random.Random(SEED)
    suite, run = tmp_path / "grid.yaml", tmp_path / "run"
    suite.write_text(GRID)
    total = 2 * EPOCHS
    # Fault 1: one Ray worker killed mid-trial (after the first trial stored an epoch); Tune
    # retries it (retries: 1) from its checkpoint in the same run.
    proc = _run(suite, run, env, tmp_path / "1.log")
    _wait_for(proc, lambda: _epochs_stored(run) >= 1 and _trial_workers(env["NB_TEST_MARKER"]))
    os.kill(_trial_workers(env["NB_TEST_MARKER"])[0], signal.SIGKILL)
    faults = 1
    # Fault 2: SIGKILL of the driver's process group at a seeded random later point.
    point = rng.randint(2, total - 1)
    _wait_for(proc, lambda: _epochs_stored(run) >= point)
    _kill_group(proc, env["NB_TEST_MARKER"], run)
    faults += 1
    # Fault 3: another kill at a random point of the rerun, then a rerun to the end.
    stored = _epochs_stored(run)
    if stored < total - 1:
        point = rng.randint(stored + 1, total - 1)
        proc = _run(suite, run, env, tmp_path / "2.log")
        _wait_for(proc, lambda: _epochs_stored(run) >= point)
        _kill_group(proc, env["NB_TEST_MARKER"], run)
        faults += 1
    _finish(suite, run, env, tmp_path / "3.log")
    records = _check_complete(run, expected_trials=2)
    specs = {t["trial_id"]: t["spec"] for t in _lines(run / "trials.jsonl")}
    compared = 0
    for i, (tid, recs) in enumerate(sorted(records.items())):
        # `normbench train --suite --trial` reproduces the suite's trial exactly (the first
        # trial through the command itself, the other through the same code in-process).
        reference = _train_cli(suite, tid, env) if i == 0 else _train(suite, tid)
        compared += _same_records(recs, reference, tid)
        assert TrialSpec.from_dict(specs[tid]).trial_id == tid
    _tally("grid", faults, compared)
    # 3 faults unless the first driver kill landed so late that no epoch was left to kill in
    assert faults >= 2 and compared == 2 * EPOCHS


def test_search_survives_driver_kills_and_a_deleted_study(
    tmp_path: Path, env: dict[str, str]
) -> None:
    rng = random.Random(SEED + 1)
    suite, run = tmp_path / "search.yaml", tmp_path / "run"
    suite.write_text(SEARCH)
    total = 3 * EPOCHS
    faults = 0
    for attempt in range(2):  # two SIGKILLs at seeded random points
        stored = _epochs_stored(run)
        point = rng.randint(stored + 1, stored + 2)
        proc = _run(suite, run, env, tmp_path / f"{attempt}.log")
        _wait_for(proc, lambda p=point: _epochs_stored(run) >= p)
        _kill_group(proc, env["NB_TEST_MARKER"], run)
        faults += 1
    assert _epochs_stored(run) < total
    (run / "optuna.db").unlink()  # fault: the study file lost
    faults += 1
    _finish(suite, run, env, tmp_path / "final.log")
    assert "rebuilt from trials.jsonl" in (tmp_path / "final.log").read_text()
    records = _check_complete(run, expected_trials=3)
    summaries = {t["trial_id"]: t for t in _lines(run / "trials.jsonl")}
    lrs = [s["params"]["recipe.lr"] for s in summaries.values()]
    assert len(set(lrs)) == 3
    compared = 0
    for tid, recs in records.items():  # searched trials: from the run directory
        compared += _same_records(recs, _train(run, tid), tid)
    # The rebuilt study: each sample once, COMPLETE, with its stored value.
    url = f"sqlite:///{run / 'optuna.db'}"
    (name,) = optuna.get_all_study_names(url)
    study = optuna.load_study(study_name=name, storage=url)
    told = sorted((t.params["recipe.lr"], t.value) for t in study.get_trials()
                  if t.user_attrs.get("nb_status") == "completed")  # fmt: skip
    assert told == sorted((s["params"]["recipe.lr"], s["value"]) for s in summaries.values())
    assert not [t for t in study.get_trials() if t.state.name == "RUNNING"]
    _tally("search", faults, compared)
    assert (faults, compared) == (3, 3 * EPOCHS)


def test_sigterm_and_sigint_end_the_run_in_one_line(tmp_path: Path, env: dict[str, str]) -> None:
    """SIGTERM while a trial trains: exit 143, one line, Ray gone, no checkpoint written
    after the driver ended; SIGINT to the rerun: exit 130, one line; a last rerun then
    resumes and the records equal an uninterrupted run's."""
    suite, run = tmp_path / "grid.yaml", tmp_path / "run"
    suite.write_text(GRID)
    for signum, code, name in ((signal.SIGTERM, 143, "SIGTERM"), (signal.SIGINT, 130, "SIGINT")):
        log = tmp_path / f"{name}.log"
        done = _epochs_stored(run)
        proc = _run(suite, run, env, log)
        _wait_for(proc, lambda d=done: _epochs_stored(run) >= d + 1)
        os.kill(proc.pid, signum)
        _no_late_checkpoint(run, env["NB_TEST_MARKER"], lambda p=proc, c=code: p.wait(60) == c)
        assert proc.returncode == code, log.read_text()
        assert not _wait_gone(env["NB_TEST_MARKER"], 30)
        text = log.read_text()
        assert "Traceback" not in text and "Error" not in text, text
        assert text.strip().splitlines()[-1] == (
            f"normbench: stopped by {name}; finished trials are stored in {run}; "
            "rerun the same command to resume"
        )
        if signum == signal.SIGTERM:
            stored = _lines(run / "epochs.jsonl")
            assert stored and not _lines(run / "trials.jsonl")[2:]
    _finish(suite, run, env, tmp_path / "rerun.log")
    records = _check_complete(run, expected_trials=2)
    # Nothing stored before the SIGTERM was lost or rewritten.
    assert _lines(run / "epochs.jsonl")[: len(stored)] == stored
    compared = sum(_same_records(r, _train(suite, t), t) for t, r in sorted(records.items()))
    _tally("sigterm", 1, compared)
    assert compared == 2 * EPOCHS
