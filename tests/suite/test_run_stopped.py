"""When Ray Tune gives up on a whole run (its actor manager raises RuntimeError for a worker
that Ray's memory monitor killed, `ray.exceptions.OutOfMemoryError`, instead of failing that
trial), `normbench run` says so in one line, keeps what is stored and exits 1."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import ray

from normbench.errors import RunStopped
from normbench.suite import ray_adapter, runner

OOM = (
    "1 worker(s) were killed due to the node running low on memory.\n"
    "Memory on the node (IP: 127.0.0.1) was 22.53GB used / 23.54GB limit (0.956885)"
)
SUITE = """
version: 1
name: stopped
dataset: {name: synthetic, image_size: 8, n_train: 64, n_test: 16, num_classes: 4}
backbones: [{name: resnet20, options: {width: 4}}]
variants: [bn]
batch_sizes: [16]
seeds: [0]
train: {epochs: 1, probe: false, device: cpu}
resources: {cpus: 1, gpus: 0}
"""


class _Tuner:
    """What Tune's controller raises when an actor task fails with a Ray error it does not
    handle (ray/air/execution/_internal/actor_manager.py, `_actor_task_failed`)."""

    def __init__(self, cause: Exception) -> None:
        self.cause = cause

    def fit(self) -> None:
        raise RuntimeError(f"Caught unexpected exception: {self.cause}") from self.cause


def test_tunes_crash_on_a_ray_error_becomes_run_stopped() -> None:
    with pytest.raises(RunStopped) as info:
        ray_adapter.fit(_Tuner(ray.exceptions.OutOfMemoryError(OOM)))
    assert str(info.value) == (
        "OutOfMemoryError: 1 worker(s) were killed due to the node running low on memory."
    )
    with pytest.raises(RuntimeError, match="not a Ray error") as other:  # bugs stay bugs
        ray_adapter.fit(_Tuner(ValueError("not a Ray error")))
    assert not isinstance(other.value, RunStopped)


def test_the_run_ends_in_one_line_with_exit_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def stop(*args: object) -> None:
        raise RunStopped(f"OutOfMemoryError: {OOM.splitlines()[0]}")

    monkeypatch.setattr(ray_adapter, "run", stop)
    monkeypatch.setattr(runner._RayOnDemand, "start", lambda self: None)  # no Ray needed here
    (tmp_path / "s.yaml").write_text(SUITE)
    run = tmp_path / "run"
    out = io.StringIO()
    code = runner.execute(runner.RunRequest(tmp_path / "s.yaml", output=run), stream=out)
    assert code == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line == (
        "normbench: Ray Tune stopped the run (OutOfMemoryError: 1 worker(s) were killed due to "
        f"the node running low on memory.); finished trials are stored in {run}; trials that "
        "were running resume when you rerun the same command"
    )
    assert (run / "suite.yaml").is_file() and "Traceback" not in out.getvalue()
