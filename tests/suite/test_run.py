"""`normbench run`: validation before anything touches the disk, --dry-run, and an Optuna
search (with ASHA) whose study persists in RUN_DIR/optuna.db and continues across runs."""

from __future__ import annotations

import io
import json
from pathlib import Path

import optuna
import pytest

from normbench.cli import main
from normbench.suite.loader import load_suite
from normbench.suite.runner import RunRequest, execute

GRID = """
version: 1
name: tinyrun
dataset: {name: synthetic, image_size: 16, n_train: 128, n_test: 32, num_classes: 4}
backbones: [{name: resnet20, options: {width: 4}}]
variants: [bn]
batch_sizes: [32]
seeds: [0]
train: {epochs: 2, lr: 0.05, schedule: constant, probe: false, device: cpu}
resources: {cpus: 1, gpus: 0}
"""
SEARCH = (
    GRID
    + """
search:
  metric: val_top1
  mode: max
  num_samples: 2
  study_name: lrsearch
  scheduler: asha
  grace_period: 1
  reduction_factor: 2
  space:
    recipe.lr: {type: float, low: 0.01, high: 0.2, log: true}
"""
)


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def test_bad_suite_exits_2_and_creates_nothing(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    bad = tmp_path / "bad.yaml"
    bad.write_text(GRID.replace("variants: [bn]", "variants: [no_such_norm]"))
    with pytest.raises(SystemExit) as exit_:
        main(["run", str(bad), "--output", str(tmp_path / "out")])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "bad.yaml" in err and "no_such_norm" in err and len(err.strip().splitlines()) >= 1
    assert not (tmp_path / "out").exists() and not (tmp_path / "runs").exists()


def test_dry_run_lists_trials_and_creates_nothing(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    suite = tmp_path / "s.yaml"
    suite.write_text(GRID.replace("seeds: [0]", "seeds: [0, 1]"))
    with pytest.raises(SystemExit) as exit_:
        main(["run", str(suite), "--dry-run"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for t in load_suite(suite).trials():
        assert t.trial_id in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.yaml"]


@pytest.mark.slow
def test_search_persists_study_and_a_rerun_continues_it(tmp_path: Path) -> None:
    suite = tmp_path / "s.yaml"
    suite.write_text(SEARCH)
    run = tmp_path / "run"
    assert execute(RunRequest(suite, output=run, num_cpus=2), stream=io.StringIO()) == 0
    trials = _lines(run / "trials.jsonl")
    assert len(trials) == 2 and {t["status"] for t in trials} <= {"completed", "pruned"}
    for t in trials:  # ASHA may stop the worse trial after its first epoch
        assert (t["epochs"] == 2) == (t["status"] == "completed")
    assert {t["study"] for t in trials} == {"lrsearch"}
    lrs = sorted(t["spec"]["recipe"]["lr"] for t in trials)
    assert lrs[0] != lrs[1] and all(0.01 <= lr <= 0.2 for lr in lrs)
    # The study is in RUN_DIR/optuna.db (optuna-dashboard opens it) with the same trials.
    study = optuna.load_study(study_name="lrsearch", storage=f"sqlite:///{run / 'optuna.db'}")
    told = sorted((t.params["recipe.lr"], t.value) for t in study.get_trials())
    assert told == sorted((t["spec"]["recipe"]["lr"], t["value"]) for t in trials)
    last_val = {}
    for e in _lines(run / "epochs.jsonl"):
        last_val[e["trial_id"]] = e["val_top1"]
    assert sorted(last_val.values()) == sorted(t["value"] for t in trials)
    # A rerun of the finished search runs nothing and leaves the study as it was.
    out = io.StringIO()
    assert execute(RunRequest(suite, output=run, num_cpus=2), stream=out) == 0
    assert len(_lines(run / "trials.jsonl")) == 2
    assert len(optuna.load_study(study_name="lrsearch", storage=f"sqlite:///{run / 'optuna.db'}")
               .get_trials()) == 2  # fmt: skip


def test_a_report_that_cannot_be_written_is_an_error(tmp_path: Path, capsys) -> None:
    from normbench.suite.runner import _build_report

    out = io.StringIO()
    assert _build_report(tmp_path / "no_run_here", out) is None
    err = capsys.readouterr().err
    assert err.startswith("normbench: error: report not written (")
    assert f"retry with `normbench report {tmp_path / 'no_run_here'}`" in err
    assert len(err.strip().splitlines()) == 1 and out.getvalue() == ""
