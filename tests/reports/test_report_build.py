"""build_report on the committed fixture: golden Markdown, statistics recomputed by hand from
the JSONL, best-on-val selection, time-to-target, unfinished trials, merging and refusal.

Regenerate the golden file after an intended change of the report's text:

    NORMBENCH_REGEN_GOLDEN=1 pytest tests/reports/test_report_build.py
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fixtures import make_fixture
from scipy import stats as sps

from normbench.reports import ReportError, build_report

HERE = Path(__file__).resolve().parent
FIXTURE = HERE / "fixtures" / "run_small"
GOLDEN = HERE / "golden" / "leaderboard.md"


def _records(run: Path) -> dict[str, list[dict]]:
    """Epoch records per trial, read straight from the JSONL (not through the code under test)."""
    out: dict[str, list[dict]] = {}
    for line in (run / "epochs.jsonl").read_text().splitlines():
        rec = json.loads(line)
        out.setdefault(rec["trial_id"], []).append(rec)
    return out


def _completed(run: Path) -> dict[str, dict[int, list[dict]]]:
    """variant -> seed -> epoch records, for trials whose summary says completed."""
    recs = _records(run)
    out: dict[str, dict[int, list[dict]]] = {}
    for line in (run / "trials.jsonl").read_text().splitlines():
        t = json.loads(line)
        if t["status"] == "completed":
            out.setdefault(t["spec"]["variant"], {})[t["spec"]["seed"]] = recs[t["trial_id"]]
    return out


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory):
    return build_report([FIXTURE], tmp_path_factory.mktemp("report"))


def _row(report, variant: str):
    (table,) = report.tables
    return table.rows.set_index("variant").loc[variant]


def test_markdown_matches_golden(report) -> None:
    text = report.markdown.read_text()
    if os.environ.get("NORMBENCH_REGEN_GOLDEN"):
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text(), "run with NORMBENCH_REGEN_GOLDEN=1 after a wanted change"


def test_leaderboard_statistics_match_independent_computation(report) -> None:
    done = _completed(FIXTURE)
    final = {v: {s: r[-1]["test_top1"] for s, r in seeds.items()} for v, seeds in done.items()}
    for variant in ("bn", "ubn"):
        x = np.array([final[variant][s] for s in sorted(final[variant])])
        row = _row(report, variant)
        assert row["n"] == 3
        assert row["top1_mean"] == pytest.approx(x.mean())
        assert row["top1_std"] == pytest.approx(x.std(ddof=1))
        half = sps.t.ppf(0.975, df=len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x))
        assert (row["top1_ci_low"], row["top1_ci_high"], row["top1_ci_method"]) == (
            pytest.approx(x.mean() - half),
            pytest.approx(x.mean() + half),
            "t",
        )
        top5 = np.mean([r[-1]["test_top5"] for r in done[variant].values()])
        assert row["top5_mean"] == pytest.approx(top5)
    seeds = sorted(final["ubn"])
    a, b = [final["ubn"][s] for s in seeds], [final["bn"][s] for s in seeds]
    ubn = _row(report, "ubn")
    assert ubn["diff_vs_baseline"] == pytest.approx(np.mean(np.subtract(a, b)))
    p = sps.ttest_rel(a, b).pvalue
    assert ubn["p_value"] == pytest.approx(p) and ubn["n_pairs"] == 3
    assert ubn["p_holm"] == pytest.approx(p)  # one comparison with BN: Holm leaves it
    d = np.subtract(a, b)
    half = sps.t.ppf(0.975, df=2) * d.std(ddof=1) / np.sqrt(3)
    assert (ubn["diff_ci_low"], ubn["diff_ci_high"]) == (
        pytest.approx(d.mean() - half),
        pytest.approx(d.mean() + half),
    )
    src = "made-up paper, Table 1"
    assert ubn[f"paper_top1[{src}]"] == 62.5 and ubn[f"paper_top5[{src}]"] == 81.0
    assert ubn[f"diff_vs_paper[{src}]"] == pytest.approx(np.mean(a) - 62.5)
    bn = _row(report, "bn")
    assert bn["test_note"] == "baseline" and bn["paper_top1[other code base]"] == 61.0
    assert report.tables[0].sources == (src, "other code base")


def test_best_epoch_is_selected_on_val_and_reports_test_there(report) -> None:
    done = _completed(FIXTURE)
    differs = False
    for variant, seeds in done.items():
        tops, epochs = [], []
        for recs in seeds.values():
            best = max(recs, key=lambda r: r["val_top1"])  # first maximum on ties
            tops.append(best["test_top1"])
            epochs.append(best["epoch"])
            differs |= best["test_top1"] != max(r["test_top1"] for r in recs)
        row = _row(report, variant)
        assert row["best_top1_mean"] == pytest.approx(np.mean(tops))
        assert row["best_epoch_mean"] == pytest.approx(np.mean(epochs))
        assert row["best_selection"] == "val"
    assert differs, "the fixture should have a trial where best-on-val != best-on-test"


def test_epochs_and_training_time_to_the_bn_reference_target(report) -> None:
    """The target is BN's published top-1 for the cell (first source in suite order), not the
    suite's target_accuracy; the time is training time (train_time_s summed), not wall time."""
    (table,) = report.tables
    assert table.target == 56.0 and table.target_source == "reference"
    assert "made-up paper, Table 1" in table.target_note
    reached_any = False
    for variant, seeds in _completed(FIXTURE).items():
        hits = [
            next((i for i, r in enumerate(recs) if r["test_top1"] >= 56.0), None)
            for recs in seeds.values()
        ]
        train = [
            sum(r["train_time_s"] for r in recs[: i + 1])
            for recs, i in zip(seeds.values(), hits, strict=True)
            if i is not None
        ]
        reached = [i for i in hits if i is not None]
        reached_any |= bool(reached)
        row = _row(report, variant)
        assert row["reached"] == f"{len(reached)}/3"
        if reached:
            assert row["epochs_to_target_mean"] == pytest.approx(np.mean(reached) + 1)
            assert row["time_to_target_s_mean"] == pytest.approx(np.mean(train))
    assert reached_any


def test_unfinished_trials_are_listed_with_reason(report) -> None:
    dnf = report.did_not_finish.set_index("status")
    assert dnf.loc["diverged", "variant"] == "ubn" and dnf.loc["diverged", "epoch"] == 2
    assert dnf.loc["diverged", "reason"] == "diverged at epoch 2"
    assert "DataLoader worker exited" in dnf.loc["failed", "reason"]
    assert _row(report, "ubn")["diverged"] == 1 and _row(report, "bn")["not_finished"] == 1
    csv = (report.output / "did_not_finish.csv").read_text()
    assert "diverged at epoch 2" in csv and "failed" in csv
    board = (report.output / "leaderboard.csv").read_text().splitlines()
    assert len(board) == 3 and board[0].startswith("dataset,backbone,batch_size")


def test_plots_are_written_as_png(report) -> None:
    names = sorted(p.name for p in (report.output / "plots").iterdir())
    assert [n.split("_")[0] for n in names] == ["condensation", "cost", "curves", "fct"]
    for n in names:
        assert (report.output / "plots" / n).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"(plots/{n})" in report.markdown.read_text()


def test_target_is_bns_final_in_the_same_table_without_reference_or_suite_target(
    tmp_path: Path,
) -> None:
    run = tmp_path / "run"
    make_fixture.write_run(run, target=None, unfinished=False, references=False)
    final = [recs[-1]["test_top1"] for recs in _completed(run)["bn"].values()]
    (table,) = build_report([run]).tables
    assert (table.target, table.target_source) == (pytest.approx(np.mean(final)), "baseline")
    # Not rounded before comparing: a BN seed reaches BN's target when one of its epochs is at
    # or above the unrounded mean (a 1-seed BN always reaches its own final accuracy).
    runs = _completed(run)["bn"].values()
    reaching = sum(max(r["test_top1"] for r in recs) >= np.mean(final) for recs in runs)
    bn = table.rows.set_index("variant").loc["bn"]
    assert bn["reached"] == f"{reaching}/{len(final)}"


def test_default_target_and_best_on_test_without_val(tmp_path: Path) -> None:
    run = tmp_path / "run"
    make_fixture.write_run(
        run, target=None, unfinished=False, references=False, variants=("ubn", "gn")
    )
    lines = [json.loads(x) for x in (run / "epochs.jsonl").read_text().splitlines()]
    for rec in lines:
        rec["val_top1"] = None  # a run without a validation split
    (run / "epochs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    rep = build_report([run])
    assert rep.output == run / "report"
    (table,) = rep.tables
    assert table.target_source == "default"
    assert table.target == pytest.approx(0.95 * table.rows["top1_mean"].max())
    assert table.selection == "test"
    best_test = np.mean(
        [max(r["test_top1"] for r in recs) for recs in _completed(run)["gn"].values()]
    )
    assert table.rows.set_index("variant").loc["gn", "best_top1_mean"] == pytest.approx(best_test)
    text = rep.markdown.read_text()
    assert "best-on-test top-1 @ epoch" in text and "default: 95%" in text


def test_merge_counts_duplicates_once_and_most_finished_copy_wins(tmp_path: Path) -> None:
    more = tmp_path / "more"
    make_fixture.write_run(more, seeds=(3, 4), unfinished=False)
    copy = tmp_path / "copy"
    shutil.copytree(FIXTURE, copy)
    rep = build_report([FIXTURE, more, copy], tmp_path / "out")
    assert len(rep.results.trials) == 10  # 2 variants x seeds 0-4, each trial id once
    rows = rep.tables[0].rows.set_index("variant")
    assert rows.loc["bn", "n"] == 5 and rows.loc["ubn", "n"] == 5
    assert rows.loc["ubn", "diverged"] == 0 and rep.did_not_finish.empty
    with pytest.raises(ReportError, match="--output"):
        build_report([FIXTURE, more])


def test_incompatible_runs_are_refused_naming_dirs_and_key(tmp_path: Path) -> None:
    other = tmp_path / "other_lr"
    make_fixture.write_run(other, lr=0.05)
    with pytest.raises(ReportError) as err:
        build_report([FIXTURE, other], tmp_path / "out")
    msg = str(err.value)
    assert str(FIXTURE) in msg and str(other) in msg and "recipe.lr" in msg and "0.05" in msg
    target = tmp_path / "other_target"
    make_fixture.write_run(target, target=60.0)
    with pytest.raises(ReportError, match="target_accuracy"):
        build_report([FIXTURE, target], tmp_path / "out")


def test_leaderboard_merge_needs_the_same_recipe_for_other_variants(tmp_path: Path) -> None:
    gn = tmp_path / "gn"
    make_fixture.write_run(gn, variants=("gn",), unfinished=False)
    rep = build_report([FIXTURE, gn], tmp_path / "out")
    assert list(rep.tables[0].rows["variant"].sort_values()) == ["bn", "gn", "ubn"]
    gn_lr = tmp_path / "gn_lr"
    make_fixture.write_run(gn_lr, variants=("gn",), lr=0.05, unfinished=False)
    with pytest.raises(ReportError, match=r"leaderboard synthetic/resnet20 .*recipe\.lr"):
        build_report([FIXTURE, gn_lr], tmp_path / "out2")


def _rewrite(path: Path, fn) -> None:
    rows = [fn(json.loads(x)) for x in path.read_text().splitlines()]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_option_labels_plugin_source_and_tau_plot_from_options(tmp_path: Path) -> None:
    """ubn seeds 0-2 get tau 0.1/0.2/0.3 and come from a plugin file: three labelled rows,
    a source column, and the FCT plot drawn from the trials' options (no optuna.db)."""
    run = tmp_path / "run"
    shutil.copytree(FIXTURE, run)

    def edit(rec: dict) -> dict:
        seed = rec.get("spec", {}).get("seed")
        if rec.get("spec", {}).get("variant") == "ubn" and seed is not None and seed < 3:
            rec["spec"]["variant_options"] = {"tau": round(0.1 * (seed + 1), 1)}
        if rec.get("variant_source") and rec["trial_id"] in ubn_ids:
            rec["variant_source"] = "file:/somewhere/my_plugin.py"
        return rec

    trials = [json.loads(x) for x in (run / "trials.jsonl").read_text().splitlines()]
    ubn_ids = {t["trial_id"] for t in trials if t["spec"]["variant"] == "ubn"}
    _rewrite(run / "trials.jsonl", edit)
    _rewrite(run / "epochs.jsonl", edit)
    rep = build_report([run])
    rows = rep.tables[0].rows.set_index("variant")
    assert {"ubn(tau=0.1)", "ubn(tau=0.2)", "ubn(tau=0.3)", "bn"} <= set(rows.index)
    assert rows.loc["ubn(tau=0.2)", "n"] == 1 and rows.loc["ubn(tau=0.2)", "source"] == (
        "file my_plugin.py"
    )
    text = rep.markdown.read_text()
    assert "| source |" in text and "file my_plugin.py" in text
    assert "too few seeds for any claim" in text  # one pair per tau row
    assert (rep.output / "plots" / "fct_search.png").exists()


def test_run_dir_without_trials_gives_an_empty_report(tmp_path: Path) -> None:
    run = tmp_path / "fresh"
    run.mkdir()
    shutil.copy(FIXTURE / "suite.resolved.json", run)
    rep = build_report([run])
    assert rep.tables == [] and "No trials are stored" in rep.markdown.read_text()


def test_frozen_share_from_ubn_counters_and_never_fired_sentence(report, tmp_path: Path) -> None:
    frozen = total = 0.0
    for recs in _completed(FIXTURE)["ubn"].values():
        for diag in recs[-1]["diagnostics"].values():  # counters are cumulative
            frozen += diag["frozen_steps"]
            total += diag["frozen_steps"] + diag["batch_steps"]
    assert frozen > 0 and _row(report, "ubn")["frozen_share"] == pytest.approx(frozen / total)
    assert np.isnan(_row(report, "bn")["frozen_share"])
    assert "never fired" not in report.markdown.read_text()
    run = tmp_path / "run"
    shutil.copytree(FIXTURE, run)

    def calm(rec: dict) -> dict:
        for diag in (rec.get("diagnostics") or {}).values():
            diag["batch_steps"] += diag["frozen_steps"]
            diag["frozen_steps"] = 0.0
        return rec

    _rewrite(run / "epochs.jsonl", calm)
    text = build_report([run]).markdown.read_text()
    assert "**The FCT threshold never fired for ubn** at τ = 0.3" in text
    assert "| 0.0% |" in text

    def untold(rec: dict) -> dict:  # records from before UBN logged its tau
        for diag in (rec.get("diagnostics") or {}).values():
            diag.pop("tau", None)
        return rec

    _rewrite(run / "epochs.jsonl", untold)
    rep = build_report([run], tmp_path / "untold")
    text = rep.markdown.read_text()
    assert "**The FCT threshold never fired for ubn**: in all" in text  # no invented τ
    assert "ubn" not in rep.tables[0].taus


def test_reference_sources_coexist_across_merged_runs(tmp_path: Path) -> None:
    """Two suites give BN's cell different numbers from different sources: both columns show,
    the merge is never refused (issue: 'reference ... differs in top1')."""
    other = tmp_path / "other"
    ref = {
        "dataset": "synthetic",
        "backbone": "resnet20",
        "variant": "bn",
        "batch_size": None,
        "top1": 57.39,
        "top5": 83.0,
        "source": "pytorch-cifar100",
        "note": None,
    }
    make_fixture.write_run(other, seeds=(5,), unfinished=False, suite_changes={"reference": [ref]})
    rep = build_report([FIXTURE, other], tmp_path / "out")
    (table,) = rep.tables
    assert table.sources == ("made-up paper, Table 1", "other code base", "pytorch-cifar100")
    bn = table.rows.set_index("variant").loc["bn"]
    assert bn["paper_top1[pytorch-cifar100]"] == 57.39 and bn["paper_top5[pytorch-cifar100]"] == 83
    text = rep.markdown.read_text()
    assert "[3] pytorch-cifar100" in text and "ref [3] top-5" in text


def test_smoke_run_is_labelled_in_heading_tables_csv_and_plots(tmp_path: Path) -> None:
    run = tmp_path / "smoke"
    make_fixture.write_run(
        run,
        seeds=(0,),
        unfinished=False,
        suite_changes={"max_epochs": 3, "limit_batches": 2, "overrides": ["seeds=1"]},
    )
    rep = build_report([run])
    text = rep.markdown.read_text()
    assert text.startswith(
        "# normbench report: fixture_small (SMOKE RUN: --max-epochs 3, --limit-batches 2)"
    )
    assert "- As run: 3 epoch(s) per trial, 1 seed(s) (0), full epochs" in text
    assert "- Overrides: `seeds=1`" in text
    assert "## synthetic · resnet20 · batch 32 · 3 epochs · SMOKE RUN (" in text
    board = (rep.output / "leaderboard.csv").read_text().splitlines()
    assert "smoke" in board[0].split(",") and "--max-epochs 3" in board[1]
    assert rep.tables[0].title in rep.tables[0].title  # plots take their title from the table


def test_search_over_a_recipe_key_gives_one_row_per_configuration(tmp_path: Path) -> None:
    """A search over recipe.lr: one row per sampled lr (never pooled as seeds), and the best
    configuration on validation over completed trials only (a pruned trial never wins)."""
    run = tmp_path / "search"
    search = {"metric": "val_top1", "mode": "max", "space": {"recipe.lr": {"type": "float"}}}
    make_fixture.write_run(
        run, variants=("bn",), unfinished=False, suite_changes={"search": search}
    )
    lrs = {0: 0.1, 1: 0.05, 2: 0.01}

    def sample(rec: dict) -> dict:
        if rec.get("spec") and rec["spec"]["variant"] == "bn":
            rec["spec"]["recipe"]["lr"] = lrs[rec["spec"]["seed"]]
        return rec

    _rewrite(run / "trials.jsonl", sample)
    _rewrite(run / "epochs.jsonl", sample)
    done = _completed(run)["bn"]
    finals = {lrs[s]: recs[-1]["val_top1"] for s, recs in done.items()}
    best_lr = max(finals, key=finals.__getitem__)
    # the best configuration's trial was in fact pruned: the next best must win
    trials = [json.loads(x) for x in (run / "trials.jsonl").read_text().splitlines()]
    for t in trials:
        if t["spec"]["variant"] == "bn" and t["spec"]["recipe"]["lr"] == best_lr:
            t["status"] = "pruned"
    (run / "trials.jsonl").write_text("".join(json.dumps(t) + "\n" for t in trials))
    rep = build_report([run])
    rows = rep.tables[0].rows.set_index("variant")
    labels = {f"bn(recipe.lr={lr:g})" for lr in lrs.values()}
    assert labels <= set(rows.index) and all(rows.loc[lb, "n"] <= 1 for lb in labels)
    runner_up = max((lr for lr in finals if lr != best_lr), key=finals.__getitem__)
    assert f"**bn(recipe.lr={runner_up:g})**" in rep.tables[0].best_config
    assert "chosen on validation" in rep.markdown.read_text()


def test_overall_ranking_across_leaderboards(tmp_path: Path) -> None:
    """Two leaderboards (batch 32 and 64) of bn/ubn/gn: mean ranks, Friedman's test against
    scipy, Nemenyi p-values from scikit-posthocs, and the critical-difference diagram."""
    a, b = tmp_path / "a", tmp_path / "b"
    make_fixture.write_run(a, variants=("bn", "ubn", "gn"), unfinished=False)
    make_fixture.write_run(b, variants=("bn", "ubn", "gn"), seeds=(7, 8), unfinished=False)

    def batch64(rec: dict) -> dict:
        for key in ("spec", "cell"):
            if rec.get(key):
                rec[key]["batch_size"] = 64
        return rec

    _rewrite(b / "trials.jsonl", batch64)
    _rewrite(b / "epochs.jsonl", batch64)
    rep = build_report([a, b], tmp_path / "out")
    assert len(rep.tables) == 2 and rep.ranking is not None
    scores = np.array(
        [
            [t.rows.set_index("variant").loc[v, "top1_mean"] for v in ("bn", "ubn", "gn")]
            for t in rep.tables
        ]
    )
    ranks = np.vstack([sps.rankdata(-row) for row in scores])
    expect = dict(zip(("bn", "ubn", "gn"), ranks.mean(axis=0), strict=True))
    assert rep.ranking.mean_rank.to_dict() == pytest.approx(expect)
    assert rep.ranking.friedman_p == pytest.approx(sps.friedmanchisquare(*scores.T).pvalue)
    assert rep.ranking.nemenyi.shape == (3, 3)
    text = rep.markdown.read_text()
    assert "## Overall ranking across 2 leaderboards" in text and "Friedman test" in text
    assert (rep.output / "plots" / "ranking_cd.png").read_bytes()[:4] == b"\x89PNG"


def test_a_multi_device_table_says_devices_step_batch_and_statistics_scope(
    tmp_path: Path,
) -> None:
    """The records of 3-device trials (batch 128 per device) head a table that says so."""
    run = tmp_path / "run"
    make_fixture.write_run(run, unfinished=False)
    batch = build_report([run]).tables[0].batch_size
    for name in ("epochs.jsonl", "trials.jsonl"):
        lines = [json.loads(x) for x in (run / name).read_text().splitlines()]
        for rec in lines:
            if "spec" in rec:
                rec["spec"] = {**rec["spec"], "devices": 3, "stats_scope": "global"}
        (run / name).write_text("".join(json.dumps(x) + "\n" for x in lines))
    (table,) = build_report([run]).tables
    assert f"batch {batch} per device x 3 devices ({3 * batch} a step, statistics over all " in (
        table.title
    )


def test_a_suite_baseline_other_than_bn_is_what_every_row_is_compared_with(tmp_path: Path) -> None:
    """`baseline: ubn` in the suite: Δ, the paired t-test and Holm compare every row with UBN
    (recomputed here from the JSONL), the header names it, and a run directory whose suite
    names another baseline does not merge."""
    run = tmp_path / "run"
    shutil.copytree(FIXTURE, run)
    resolved = json.loads((run / "suite.resolved.json").read_text())
    (run / "suite.resolved.json").write_text(json.dumps({**resolved, "baseline": "ubn"}))
    rep = build_report([run], tmp_path / "out")
    final = {
        v: {s: recs[-1]["test_top1"] for s, recs in seeds.items()}
        for v, seeds in _completed(run).items()
    }
    seeds = sorted(final["bn"])
    a, b = [final["bn"][s] for s in seeds], [final["ubn"][s] for s in seeds]
    (table,) = rep.tables
    rows = table.rows.set_index("variant")
    assert table.baseline == "ubn" and rows.loc["ubn", "test_note"] == "baseline"
    assert rows.loc["bn", "diff_vs_baseline"] == pytest.approx(np.mean(np.subtract(a, b)))
    assert rows.loc["bn", "p_value"] == pytest.approx(sps.ttest_rel(a, b).pvalue)
    assert "Δ vs ubn [95% CI]" in rep.markdown.read_text()
    with pytest.raises(ReportError, match="differ in baseline"):
        build_report([run, FIXTURE], tmp_path / "merged")


def test_report_baseline_flag_overrides_the_suites_and_refuses_an_unknown_name(
    tmp_path: Path,
) -> None:
    """`normbench report RUN --baseline ubn` equals a suite that wrote `baseline: ubn`: the
    legend and the headers name ubn (never BN), the CSV's `diff_vs_baseline` is each row's mean
    final top-1 minus ubn's over their common seeds (recomputed from the JSONL); a name no
    trial has is one line, exit 2, and no report is written."""
    from normbench.cli import main

    out = tmp_path / "out"
    with pytest.raises(SystemExit) as ok:
        main(["report", str(FIXTURE), "--output", str(out), "--baseline", "ubn"])
    assert ok.value.code == 0
    text = (out / "leaderboard.md").read_text()
    assert "Δ vs ubn [95% CI]" in text and "| **ubn** |" in text
    assert "the baseline (ubn) is in bold" in text and "(variant − ubn) final top-1" in text
    assert "vs BN" not in text and "BN baseline" not in text
    final = {
        v: {s: recs[-1]["test_top1"] for s, recs in seeds.items()}
        for v, seeds in _completed(FIXTURE).items()
    }
    csv = pd.read_csv(out / "leaderboard.csv").set_index("variant")
    assert "diff_vs_bn" not in csv.columns and np.isnan(csv.loc["ubn", "diff_vs_baseline"])
    for variant in set(final) - {"ubn"}:
        common = sorted(set(final[variant]) & set(final["ubn"]))
        mine = np.mean([final[variant][s] for s in common])
        base = np.mean([final["ubn"][s] for s in common])
        assert csv.loc[variant, "diff_vs_baseline"] == pytest.approx(mine - base)
    bad = tmp_path / "bad"
    with pytest.raises(SystemExit) as exc:
        main(["report", str(FIXTURE), "--output", str(bad), "--baseline", "ubm"])
    assert exc.value.code == 2 and not (bad / "leaderboard.md").exists()
