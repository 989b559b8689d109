"""A run directory is data, never code, and damage to it loses nothing that can be recovered:
a planted pickle in a checkpoint never runs (the trial restarts, with a note), a torn epoch
line of a finished trial comes back from its checkpoint, a corrupt line is skipped with a
warning naming it, and a local Ray listens on the loopback interface only."""

from __future__ import annotations

import io
import json
import pickle
from pathlib import Path

import psutil
import pytest

from normbench.cli import main
from normbench.engine import checkpoint as ckpt
from normbench.suite.runner import RunRequest, execute

SUITE = """
version: 1
name: safe
dataset: {name: synthetic, image_size: 8, n_train: 64, n_test: 16, num_classes: 4}
backbones: [{name: resnet20, options: {width: 4}}]
variants: [bn]
batch_sizes: [32]
seeds: [0]
train: {epochs: 2, lr: 0.05, schedule: constant, probe: false, device: cpu}
resources: {cpus: 1, gpus: 0}
"""


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, request) -> Path:
    """A finished one-trial run (2 epochs), made once; tests copy it before damaging it."""
    import shutil
    import tempfile

    ray_tmp = Path(tempfile.mkdtemp(prefix="nbs", dir="/tmp"))  # short, as tests/conftest.py's
    request.addfinalizer(lambda: shutil.rmtree(ray_tmp, ignore_errors=True))
    root = tmp_path_factory.mktemp("finished")
    (root / "s.yaml").write_text(SUITE)
    run = root / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_TMPDIR", str(ray_tmp))
        req = RunRequest(root / "s.yaml", output=run, num_cpus=1)
        assert execute(req, stream=io.StringIO()) == 0
    return run


def _copy(run: Path, tmp_path: Path) -> tuple[Path, Path]:
    import shutil

    suite = tmp_path / "s.yaml"
    suite.write_text(SUITE)
    dest = tmp_path / "run"
    shutil.copytree(run, dest, ignore=shutil.ignore_patterns(".lock"))
    return suite, dest


@pytest.mark.slow
def test_planted_checkpoint_never_runs_and_the_trial_restarts(
    finished_run: Path, tmp_path: Path
) -> None:
    suite, run = _copy(finished_run, tmp_path)
    epochs_before = (run / "epochs.jsonl").read_bytes()
    (tid,) = [t["trial_id"] for t in _lines(run / "trials.jsonl")]
    (run / "trials.jsonl").unlink()  # the driver was killed before the summary line
    marker = tmp_path / "pwned"
    with open(run / "checkpoints" / tid / "checkpoint.pt", "wb") as f:
        pickle.dump({"format_version": ckpt.FORMAT_VERSION, "x": _Payload(marker)}, f)
    out = io.StringIO()
    assert execute(RunRequest(suite, output=run, num_cpus=1), stream=out) == 0
    assert not marker.exists()  # the payload never ran
    (summary,) = _lines(run / "trials.jsonl")
    assert summary["status"] == "completed" and summary["epochs"] == 2
    (note,) = summary["notes"]
    assert "is not a valid normbench checkpoint" in note and "restarted the trial" in note
    assert (run / "checkpoints" / tid / "checkpoint.pt.invalid").exists()
    assert ckpt.load_checkpoint(run / "checkpoints" / tid, trial_id=tid)["epoch"] == 2
    # retrained from scratch with the same seed: the stored records are the same lines
    assert (run / "epochs.jsonl").read_bytes() == epochs_before
    assert "not a valid normbench checkpoint" in out.getvalue()


def test_a_torn_epoch_line_of_a_finished_trial_comes_back_from_its_checkpoint(
    finished_run: Path, tmp_path: Path
) -> None:
    suite, run = _copy(finished_run, tmp_path)
    whole = (run / "epochs.jsonl").read_bytes()
    (run / "epochs.jsonl").write_bytes(whole[: whole.rstrip(b"\n").rfind(b"\n") + 20])  # torn
    out = io.StringIO()
    assert execute(RunRequest(suite, output=run), stream=out) == 0  # Ray never starts
    assert "restored epoch records [2] from its checkpoint" in out.getvalue()
    assert [(r["epoch"], r["test_top1"]) for r in _lines(run / "epochs.jsonl")] == [
        (r["epoch"], r["test_top1"]) for r in map(json.loads, whole.splitlines())
    ]


def test_a_corrupt_line_is_skipped_with_a_warning_naming_it(
    finished_run: Path, tmp_path: Path, capsys
) -> None:
    suite, run = _copy(finished_run, tmp_path)
    first, second = (run / "epochs.jsonl").read_bytes().splitlines(keepends=True)
    (run / "epochs.jsonl").write_bytes(first + b'{"trial_id": "x", "ep\x00\xff garbage\n' + second)
    with pytest.raises(SystemExit) as exit_:
        main(["report", str(run), "--output", str(tmp_path / "report")])
    assert exit_.value.code == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"normbench: warning: {run / 'epochs.jsonl'}:2: skipped a damaged line "
                   f"(not JSON: {err[0].split('(not JSON: ')[1]}"]  # fmt: skip
    assert (tmp_path / "report" / "leaderboard.md").exists()
    out = io.StringIO()
    assert execute(RunRequest(suite, output=run), stream=out) == 0  # the run reads past it too
    assert "1 completed" in out.getvalue()


@pytest.mark.slow
def test_a_local_ray_listens_on_loopback_only() -> None:
    import ray

    from normbench.suite.ray_adapter import init_ray

    before = {p.pid for p in psutil.Process().children()}  # e.g. the session's shared cluster
    shutdown = init_ray(None, num_cpus=1)
    try:
        assert ray.util.get_node_ip_address() == "127.0.0.1"
        # This Ray's processes: the driver, what it started and what those started (workers).
        started = [p for p in psutil.Process().children() if p.pid not in before]
        procs = [psutil.Process(), *started]
        procs += [c for p in started for c in p.children(recursive=True)]
        listening = set()
        for proc in procs:
            try:
                conns = proc.net_connections(kind="inet")
            except psutil.Error:
                continue
            listening |= {c.laddr.ip for c in conns if c.status == psutil.CONN_LISTEN}
        assert listening and all(ip in ("127.0.0.1", "::ffff:127.0.0.1", "::1") for ip in listening)
    finally:
        shutdown()
