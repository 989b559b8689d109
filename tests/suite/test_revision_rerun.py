"""A layer's computation revision through the user path: a suite runs, its plugin layer then
declares revision 2 (`revision = {2: reason}` in the plugin file), and the same command into
the same run directory runs exactly that layer's trials again, says so in one line (the
run and `--dry-run` alike), leaves every old record and checkpoint byte for byte as it was,
and `normbench report` shows the new records only, saying what it left out and why; the run
counts as the report does, `normbench evaluate` skips the superseded trial in one line, and a
merge with the old code's run names the differing revisions in words."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from normbench.cli import main
from normbench.registry import _reset_all
from normbench.reports.data import load_runs
from normbench.spec import unrevised_id
from normbench.suite.loader import load_suite

pytestmark = pytest.mark.slow

SUITE = """
version: 1
name: revised
plugins: [tinynorm.py]
dataset: {name: digits}
backbones: [{name: resnet20, options: {width: 4}}]
variants: [bn, tinynorm]
batch_sizes: [32]
seeds: [0]
train: {epochs: 1, lr: 0.05, schedule: constant, probe: false, device: cpu}
resources: {cpus: 1, gpus: 0}
"""
PLUGIN = '''"""A test layer: GroupNorm with one group."""
from torch import nn

from normbench import register_variant


@register_variant("tinynorm")
class TinyNorm(nn.GroupNorm):
    paper = "none (a test layer)"
    batch_dependent = False{revision}

    def __init__(self, num_features, *, eps={eps}, momentum=0.1, device=None, dtype=None):
        super().__init__(1, num_features, eps=eps, device=device, dtype=dtype)
'''
REASON = "eps 1e-3, as the paper's code"
ARGS = ["--max-epochs", "1", "--limit-batches", "2"]


def _main(argv: list[str]) -> int:
    try:
        main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def _files(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def fresh_registries() -> object:
    """The registries as a fresh process has them, and left so: the test's plugin layer
    (edited between the runs; the driver loads the edited file again) leaves nothing behind."""
    _reset_all()
    yield
    _reset_all()


def test_a_bumped_layer_reruns_alone_and_the_report_leaves_its_old_trials_out(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], fresh_registries: object
) -> None:
    suite, plugin, run = tmp_path / "revised.yaml", tmp_path / "tinynorm.py", tmp_path / "run"
    suite.write_text(SUITE)
    plugin.write_text(PLUGIN.format(revision="", eps="1e-5"))
    assert _main(["run", str(suite), "--output", str(run), *ARGS]) == 0
    first = {t["trial_id"]: t for t in _lines(run / "trials.jsonl")}
    assert len(first) == 2 and {t["status"] for t in first.values()} == {"completed"}
    old_tiny = {t for t, line in first.items() if line["spec"]["variant"] == "tinynorm"}
    stored = {n: (run / n).read_bytes() for n in ("epochs.jsonl", "trials.jsonl")}
    checkpoints = _files(run / "checkpoints")
    old_run = tmp_path / "old_run"  # the run as the old code left it, to merge with the new
    shutil.copytree(run, old_run)
    assert {e["revisions"]["variant"] for e in _lines(run / "epochs.jsonl")} == {1}

    # the layer's author changes what it computes and says so
    plugin.write_text(PLUGIN.format(revision=f"\n    revision = {{2: {REASON!r}}}", eps="1e-3"))
    line = f"tinynorm: revision 2 ({REASON}); 1 finished trial of revision 1 is not reused"
    # before the rerun, the trial has no replacement: evaluate refuses it, naming the ways out
    evaluate = ["evaluate", str(run), "--plugin", str(plugin), "--set", "example_weights=[]"]
    capsys.readouterr()
    assert _main(evaluate) == 2
    err = capsys.readouterr().err
    assert f"was computed by other code (tinynorm: revision 2 ({REASON}) now, revision 1" in err
    assert "rerun its suite to train it at the new revision, or leave it out with --set " in err
    assert not (run / "evaluations.jsonl").exists()
    assert _main(["run", str(suite), "--output", str(run), "--dry-run", *ARGS]) == 0
    dry = capsys.readouterr().out
    assert line in dry and "holds 1 of the 2 trials finished (1 completed); 1 left" in dry
    assert _main(["run", str(suite), "--output", str(run), *ARGS]) == 0
    out = capsys.readouterr().out.splitlines()
    assert line in out
    # the run's last count is the report's: the suite's 2 trials, the old one apart
    summary = f"run directory {run}: 2 completed; 1 superseded by a newer revision, kept on disk"
    assert summary in out

    # exactly the bumped layer's trials ran again, under new ids; bn resumed
    now = {t.trial_id: t.spec for t in load_suite(suite, **_capped()).trials()}
    summaries = _lines(run / "trials.jsonl")
    new = {t["trial_id"]: t for t in summaries[len(first) :]}
    assert set(new) == {t for t, s in now.items() if s.variant == "tinynorm"}
    assert {unrevised_id(t["spec"]) for t in new.values()} == old_tiny
    assert all(t["spec"]["revisions"] == {"variant": 2} for t in new.values())
    epochs = _lines(run / "epochs.jsonl")
    assert {e["trial_id"]: e["revisions"]["variant"] for e in epochs if e["trial_id"] in new} == (
        dict.fromkeys(new, 2)
    )
    # the old records and checkpoints are untouched: appended to, never rewritten
    for name, before in stored.items():
        assert (run / name).read_bytes()[: len(before)] == before
    after = _files(run / "checkpoints")
    assert {k: after[k] for k in checkpoints} == checkpoints

    # the report: the suite's trials now, and one line on what it left out
    capsys.readouterr()
    assert _main(["report", str(run)]) == 0
    note = (
        "1 trial computed by an older revision of a component (variant tinynorm: 1 at "
        "revision 1, now 2); the suite now runs it at the new one; its records stay"
    )
    assert f"Left out: {run}: {note}" in capsys.readouterr().out
    assert note in (run / "report" / "leaderboard.md").read_text()
    board = pd.read_csv(run / "report" / "leaderboard.csv")
    assert dict(zip(board["variant"], board["n"], strict=True)) == {"bn": 1, "tinynorm": 1}
    res = load_runs([run])
    assert set(res.trials["trial_id"]) == set(res.epochs["trial_id"]) == set(now)

    # evaluate: the suite's trials now, the superseded one skipped in one line
    capsys.readouterr()
    assert _main([*evaluate, "--set", "recalibrate_batches=2"]) == 0
    out = capsys.readouterr().out
    (old_id,), (new_id,) = old_tiny, new
    # bn's statistics recalibrated; the new tinynorm trial rebuilt (GroupNorm: nothing to do)
    assert f"evaluate: skipped {note}" in out and old_id not in out
    assert f"trial {new_id}: recalibrated_stats does not apply" in out
    assert {e["trial_id"] for e in _lines(run / "evaluations.jsonl")} == set(now) - {new_id}
    assert _main([*evaluate, "--set", f"trials=[{old_id}]"]) == 2
    assert f"names {old_id} (by {new_id}), superseded by a newer revision" in (
        capsys.readouterr().err
    )

    # merged with a run of the old code, the cell differs in its revisions, said in words
    assert _main(["report", str(old_run), str(run)]) == 2
    assert (
        "differs in revisions (all at revision 1 vs variant at revision 2)"
        in capsys.readouterr().err
    )


def _capped() -> dict[str, int]:
    return {"max_epochs": 1, "limit_batches": 2}


def test_a_search_that_samples_a_bumped_layer_is_refused_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], fresh_registries: object
) -> None:
    """The base layer (bn) keeps its revision, the sampled one (tinynorm) gains one: the
    study would count the old tinynorm sample as done, so the search is refused, as when the
    base changes, before anything is written."""
    search = SUITE.replace("variants: [bn, tinynorm]", "variants: [bn]") + (
        "search:\n  metric: val_top1\n  mode: max\n  num_samples: 2\n  space:\n"
        "    variant: {type: categorical, choices: [bn, tinynorm]}\n"
    )
    suite, plugin, run = tmp_path / "revised.yaml", tmp_path / "tinynorm.py", tmp_path / "run"
    suite.write_text(search)
    plugin.write_text(PLUGIN.format(revision="", eps="1e-5"))
    assert _main(["run", str(suite), "--output", str(run), *ARGS]) == 0
    first = _lines(run / "trials.jsonl")
    assert sorted(t["spec"]["variant"] for t in first) == ["bn", "tinynorm"]
    before = _files(run)

    plugin.write_text(PLUGIN.format(revision=f"\n    revision = {{2: {REASON!r}}}", eps="1e-3"))
    for dry in ([], ["--dry-run"]):
        capsys.readouterr()
        assert _main(["run", str(suite), "--output", str(run), *dry, *ARGS]) == 2
        err = capsys.readouterr().err.strip()
        assert err.endswith(
            "holds a search computed by another revision of the code (variant revision 1 "
            "then, 2 now); its study would reuse those samples; use another --output"
        )
        assert len(err.splitlines()) == 1
        assert _files(run) == before
