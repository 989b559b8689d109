"""A plugin task through `normbench run` to its leaderboard, with a lower-is-better headline
(digit regression's RMSE, tests/tasks/plugin_regression.py): records, `load_results`, the
leaderboard's order, paired tests, time-to-target and the overall ranking, each checked
against a computation from the stored epochs; the search's direction; bad input refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as sps

from normbench.cli import main
from normbench.errors import SuiteError
from normbench.suite.loader import load_suite

PLUGIN = str(Path(__file__).with_name("plugin_regression.py"))
SUITE = f"""
version: 1
name: digit_regression
description: the value of a handwritten digit, scored by RMSE (lower is better)
task: digit_regression
plugins: [{PLUGIN}]
dataset: {{name: digits, val_fraction: 0.2}}
backbones: [{{name: resnet20, options: {{width: 4}}}}]
variants: [bn, rbn]
batch_sizes: [16, 32]
seeds: 3
train: {{epochs: 2, lr: 0.01, weight_decay: 0.0, schedule: constant, probe: false,
         device: cpu, limit_batches: 3}}
resources: {{cpus: 1, gpus: 0}}
"""
SEARCH = """
search:
  num_samples: 2
  space:
    recipe.lr: {type: float, low: 0.01, high: 0.1, log: true}
"""


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def _main(args: list[str]) -> int:
    try:
        return int(main(args) or 0)
    except SystemExit as exc:
        return int(exc.code or 0)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("regression")
    suite = folder / "regression.yaml"
    suite.write_text(SUITE)
    assert _main(["run", str(suite), "--output", str(folder / "run")]) == 0
    return folder / "run"


def _final(run: Path) -> dict[str, dict]:
    """Each trial's last epoch record, from epochs.jsonl."""
    last: dict[str, dict] = {}
    for rec in _lines(run / "epochs.jsonl"):
        if rec["epoch"] >= last.get(rec["trial_id"], {}).get("epoch", 0):
            last[rec["trial_id"]] = rec
    return last


@pytest.mark.slow
def test_records_and_results_carry_the_tasks_metrics(run: Path) -> None:
    from normbench.results import load_results
    from normbench.tasks import TASKS

    scoring = TASKS.get("digit_regression").obj.scoring  # the plugin, as the suite loaded it
    epochs = _lines(run / "epochs.jsonl")
    assert len({e["trial_id"] for e in epochs}) == 12 and len(epochs) == 24
    for e in epochs:
        assert e["scoring"] == scoring.to_dict()
        assert e.get("spec", {"task": "digit_regression"})["task"] == "digit_regression"
        assert {"train_loss", "train_mae", "val_rmse", "test_rmse", "test_mae"} <= set(e)
        assert "test_top1" not in e and e["test_rmse"] > 0
    resolved = json.loads((run / "suite.resolved.json").read_text())
    assert resolved["scoring"] == scoring.to_dict()
    df = load_results(run).set_index("trial_id")
    assert set(df["task"]) == {"digit_regression"} and set(df["headline"]) == {"rmse"}
    assert "final_test_top1" not in df
    for tid, trial in df.iterrows():  # best on val is the *lowest* val RMSE
        mine = sorted((e for e in epochs if e["trial_id"] == tid), key=lambda e: e["epoch"])
        best = min(mine, key=lambda e: e["val_rmse"])
        assert trial["best_val_rmse"] == best["val_rmse"]
        assert trial["test_rmse_at_best_val"] == best["test_rmse"]
        assert trial["final_test_rmse"] == mine[-1]["test_rmse"]
        assert trial["final_test_mae"] == mine[-1]["test_mae"]


@pytest.mark.slow
def test_leaderboard_reads_rmse_lower_is_better(run: Path) -> None:
    from normbench.reports.data import load_runs
    from normbench.reports.leaderboard import build_tables
    from normbench.reports.ranking import overall_ranking

    final = _final(run)
    specs = {t["trial_id"]: t["spec"] for t in _lines(run / "trials.jsonl")}
    tables = build_tables(load_runs([run]))
    assert [t.batch_size for t in tables] == [16, 32]
    ranks: dict[str, list[float]] = {"bn": [], "rbn": []}
    for t in tables:
        assert t.task == "digit_regression" and t.headline.name == "rmse"
        per = {
            v: {
                specs[r["trial_id"]]["seed"]: r["test_rmse"]
                for r in final.values()
                if specs[r["trial_id"]]["variant"] == v
                and specs[r["trial_id"]]["batch_size"] == t.batch_size
            }
            for v in ("bn", "rbn")
        }
        means = {v: float(np.mean(list(s.values()))) for v, s in per.items()}
        rows = t.rows.set_index("variant")
        assert list(t.rows["variant"]) == sorted(means, key=means.__getitem__)  # best first
        assert rows.loc["rbn", "rmse_mean"] == pytest.approx(means["rbn"])
        diff = [per["rbn"][s] - per["bn"][s] for s in (0, 1, 2)]
        assert rows.loc["rbn", "diff_vs_baseline"] == pytest.approx(np.mean(diff))
        p = sps.ttest_rel([per["rbn"][s] for s in (0, 1, 2)], [per["bn"][s] for s in (0, 1, 2)])
        assert rows.loc["rbn", "p_value"] == pytest.approx(p.pvalue)
        # time-to-target: BN's mean final RMSE, reached at the first epoch at or below it
        assert t.target_source == "baseline" and t.target == pytest.approx(means["bn"])
        for v in ("bn", "rbn"):
            firsts = []
            for r in final.values():
                spec = specs[r["trial_id"]]
                if spec["variant"] != v or spec["batch_size"] != t.batch_size:
                    continue
                curve = sorted(
                    (e["epoch"], e["test_rmse"])
                    for e in _lines(run / "epochs.jsonl")
                    if e["trial_id"] == r["trial_id"]
                )
                firsts += [next((ep for ep, x in curve if x <= t.target), None)]
            reached = [f for f in firsts if f is not None]
            assert rows.loc[v, "reached"] == f"{len(reached)}/3"
            if reached:
                assert rows.loc[v, "epochs_to_target_mean"] == pytest.approx(np.mean(reached))
        low = min(means, key=means.__getitem__)
        for v in means:
            ranks[v].append(1.0 if v == low else 2.0)
    ranking = overall_ranking(tables)
    assert ranking is not None
    assert dict(ranking.mean_rank) == pytest.approx({v: np.mean(r) for v, r in ranks.items()})
    text = (run / "report" / "leaderboard.md").read_text()
    assert "RMSE (final)" in text and "**lower is better**" in text
    assert "digit_regression · digits · resnet20" in text and "top-1" not in text.split("##")[2]


def test_search_defaults_to_the_headline_and_its_direction(tmp_path: Path) -> None:
    import optuna

    from normbench.suite.search import open_study, storage_url

    suite = tmp_path / "search.yaml"
    suite.write_text(SUITE + SEARCH)
    loaded = load_suite(suite)
    assert loaded.search is not None
    assert (loaded.search.metric, loaded.search.mode) == ("val_rmse", "min")
    study, created = open_study(loaded.search, storage_url(loaded.search, tmp_path), "s")
    assert created and study.direction == optuna.study.StudyDirection.MINIMIZE


@pytest.mark.parametrize(
    ("change", "where", "message"),
    [
        ("search:\n  mode: max\n  num_samples: 2\n  space: {recipe.lr: {type: float, low: "
         "0.01, high: 0.1}}\n", "search.mode", "mode max would optimise val_rmse the wrong way"),
        ("search:\n  metric: val_top1\n  num_samples: 2\n  space: {recipe.lr: {type: float, "
         "low: 0.01, high: 0.1}}\n", "search.metric",
         "'val_top1' is not a metric of task 'digit_regression'"),
        ("target_accuracy: 0.5\nreference: [{dataset: digits, backbone: resnet20, variant: bn, "
         "metrics: {AP: 3.0}, source: x}]\n", "reference[0].metrics.AP",
         "task 'digit_regression' has no test metric 'AP'"),
    ],
)  # fmt: skip
def test_suite_keys_are_read_in_the_tasks_metrics(
    tmp_path: Path, change: str, where: str, message: str
) -> None:
    suite = tmp_path / "bad.yaml"
    suite.write_text(SUITE + change)
    with pytest.raises(SuiteError) as err:
        load_suite(suite)
    assert f"{where}: {message}" in str(err.value)


def test_a_task_that_refuses_the_data_set_stops_the_run_before_ray(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    suite = tmp_path / "bad.yaml"
    suite.write_text(SUITE.replace("name: digits", "name: synthetic"))
    assert _main(["run", str(suite), "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "bad.yaml:5: task.options: task 'digit_regression': digit_regression needs the " in err
    assert not (tmp_path / "out").exists()


def test_an_unknown_task_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    suite = tmp_path / "bad.yaml"
    suite.write_text(SUITE.replace("task: digit_regression", "task: digit_regresion"))
    assert _main(["run", str(suite), "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "task.name: unknown task 'digit_regresion' (did you mean 'digit_regression'?)" in err


def test_normbench_tasks_lists_headlines_and_directions(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert _main(["tasks", "--json", "--plugin", PLUGIN]) == 0
    listed = {t["name"]: t for t in json.loads(capsys.readouterr().out)}
    assert (listed["classification"]["headline"], listed["classification"]["higher_is_better"]) == (
        "top1",
        True,
    )
    regression = listed["digit_regression"]
    assert (regression["headline"], regression["higher_is_better"]) == ("rmse", False)
    assert regression["options"] == {"huber_delta": 0.0}
    assert regression["source"] == f"file:{Path(PLUGIN).resolve()}"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ("{huber_delta: -1.0}", "task.options.huber_delta: task 'digit_regression': huber_delta "
         "must be >= 0, but got -1.0"),
        ("{huber_delta: big}", "task.options.huber_delta: task 'digit_regression' option "
         "'huber_delta' expects a float like the default 0.0, but got 'big'"),
        ("{huber: 1.0}", "task.options.huber: task 'digit_regression' has no option 'huber'"),
    ],
)  # fmt: skip
def test_task_options_pass_the_option_door(tmp_path: Path, options: str, message: str) -> None:
    suite = tmp_path / "bad.yaml"
    suite.write_text(
        SUITE.replace(
            "task: digit_regression", f"task: {{name: digit_regression, options: {options}}}"
        )
    )
    with pytest.raises(SuiteError) as err:
        load_suite(suite)
    assert message in str(err.value)


def test_dry_run_names_the_task_and_its_direction(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    suite = tmp_path / "regression.yaml"
    suite.write_text(SUITE)
    assert _main(["run", str(suite), "--dry-run"]) == 0
    assert "  task digit_regression: headline RMSE, lower is better" in capsys.readouterr().out
