"""`normbench report` exit codes, and that reports never import torch."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

from normbench.cli import main

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "run_small"


def _main(argv: list[str]) -> int:
    try:
        main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def test_missing_run_dir_is_one_line_and_exit_2(tmp_path: Path, capsys) -> None:
    missing = tmp_path / "nope"
    assert _main(["report", str(missing)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(missing) in err and "does not exist" in err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _main(["report", str(empty)]) == 2
    assert "not a run directory" in capsys.readouterr().err


def test_report_command_writes_report_and_prints_summary(tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    assert _main(["report", str(FIXTURE), "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "ubn" in printed and str(out / "leaderboard.md") in printed
    assert "Did not finish: 1 diverged, 1 failed" in printed
    assert (out / "leaderboard.md").exists() and (out / "leaderboard.csv").exists()


def test_reports_never_import_torch(tmp_path: Path) -> None:
    """A fresh interpreter builds a full report without torch, including the search plot that
    Optuna renders from the study (one cheap test for both: importing optuna is the slow part);
    the pruned trial with the best value is not drawn (completed trials only)."""
    run = tmp_path / "run"
    shutil.copytree(FIXTURE, run)
    code = textwrap.dedent(f"""
        import sys
        import optuna
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        from optuna.distributions import FloatDistribution
        s = optuna.create_study(storage="sqlite:///{run}/optuna.db", study_name="fct")
        d = {{"variant_options.tau": FloatDistribution(0.05, 0.5)}}
        for tau, v in ((0.1, 50.0), (0.3, 52.0)):
            s.add_trial(optuna.trial.create_trial(params={{"variant_options.tau": tau}},
                                                  distributions=d, value=v))
        s.add_trial(optuna.trial.create_trial(params={{"variant_options.tau": 0.2}},
            distributions=d, intermediate_values={{1: 99.0}},
            state=optuna.trial.TrialState.PRUNED))
        import normbench.reports
        from normbench.reports import build_report, print_summary
        rep = build_report([{str(run)!r}])
        print_summary(rep)
        png = rep.output / "plots" / "search_fct.png"
        assert png.read_bytes()[:4] == b"\\x89PNG"
        assert "## Search" in rep.markdown.read_text()
        assert "(plots/search_fct.png)" in rep.markdown.read_text()
        assert "torch" not in sys.modules, sorted(m for m in sys.modules if "torch" in m)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_a_running_trial_is_running_and_a_stopped_one_interrupted(tmp_path: Path) -> None:
    """A trial with epochs and no summary line is 'running' while a `normbench run` holds the
    run directory, 'interrupted' once nobody does (or only `normbench evaluate` does)."""
    import json

    from normbench.reports import build_report
    from normbench.results import RunStore

    run = tmp_path / "run"
    shutil.copytree(FIXTURE, run)
    lines = (run / "trials.jsonl").read_text().splitlines()
    (run / "trials.jsonl").write_text("\n".join(lines[1:]) + "\n")  # its summary not yet written
    tid = json.loads(lines[0])["trial_id"]

    def status(role: str | None) -> str:
        if role is None:
            report = build_report([run], tmp_path / "out")
        else:
            with RunStore(run, role=role):
                report = build_report([run], tmp_path / "out")
        row = report.did_not_finish.set_index("trial_id").loc[tid]
        return f"{row['status']}: {row['reason']}"

    assert status("run").startswith("running: running (a normbench run holds this run directory")
    assert status(None).startswith("interrupted: interrupted (no summary line")
    assert status("evaluate").startswith("interrupted")


def test_one_sample_search_report_prints_no_matplotlib_warning(tmp_path: Path, capsys) -> None:
    """A study with one finished sample (optuna's own storage, as a search writes it): its
    slice plot is drawn without matplotlib's singular-axis warning on stderr."""
    import optuna

    run = tmp_path / "run"
    shutil.copytree(FIXTURE, run)
    study = optuna.create_study(study_name="one", storage=f"sqlite:///{run / 'optuna.db'}",
                                direction="maximize")  # fmt: skip
    study.add_trial(optuna.trial.create_trial(
        params={"recipe.lr": 0.05}, value=50.0,
        distributions={"recipe.lr": optuna.distributions.FloatDistribution(0.01, 0.2, log=True)},
    ))  # fmt: skip
    before = (run / "optuna.db").read_bytes()
    assert _main(["report", str(run), "--output", str(tmp_path / "out")]) == 0
    assert not capsys.readouterr().err
    assert (tmp_path / "out" / "plots" / "search_one.png").exists()
    assert (run / "optuna.db").read_bytes() == before  # opened read-only


def test_all_tied_ranking_says_why_friedman_is_undefined_without_a_warning(
    tmp_path: Path, capsys
) -> None:
    """bn, ubn, gn at chance (every score 10.03) in two leaderboards: the report says the
    Friedman statistic is undefined because every variant ties, no scipy RuntimeWarning, and
    no critical-difference diagram (there is nothing to separate)."""
    import json
    import warnings

    from fixtures import make_fixture

    a, b = tmp_path / "a", tmp_path / "b"
    make_fixture.write_run(a, variants=("bn", "ubn", "gn"), unfinished=False)
    make_fixture.write_run(b, variants=("bn", "ubn", "gn"), seeds=(7, 8), unfinished=False)
    for run in (a, b):
        for name in ("trials.jsonl", "epochs.jsonl"):
            rows = [json.loads(x) for x in (run / name).read_text().splitlines()]
            for rec in rows:
                for key in ("spec", "cell"):
                    if rec.get(key) and run == b:
                        rec[key]["batch_size"] = 64
                for key in ("val_top1", "test_top1"):
                    if key in rec:
                        rec[key] = 10.03
            (run / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert _main(["report", str(a), str(b), "--output", str(out)]) == 0
    assert not [w for w in caught if issubclass(w.category, RuntimeWarning)]
    assert "RuntimeWarning" not in capsys.readouterr().err
    text = (out / "leaderboard.md").read_text()
    assert "## Overall ranking across 2 leaderboards" in text
    assert (
        "Friedman test: every variant ties in every leaderboard: "
        "the Friedman statistic is undefined." in text
    )
    assert "3 variants" not in text
    assert not (out / "plots" / "ranking_cd.png").exists()


def test_merging_runs_with_other_plugin_lists_says_plugins_are_identity(
    tmp_path: Path, capsys
) -> None:
    """A run whose trials listed my_norm.py beside one whose trials did not: `normbench
    report A B` refuses in one line, exit 2, naming plugins as part of the trials' identity."""
    import json

    from fixtures import make_fixture

    other = tmp_path / "other"
    make_fixture.write_run(other, seeds=(7, 8), unfinished=False)
    for name in ("trials.jsonl", "epochs.jsonl"):
        rows = [json.loads(x) for x in (other / name).read_text().splitlines()]
        for rec in rows:
            if rec.get("spec"):
                rec["spec"]["plugins"] = ["my_norm.py"]
        (other / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    assert _main(["report", str(FIXTURE), str(other), "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "differs in plugins ([] vs ['my_norm.py'])" in err
    assert "the plugin files are part of every trial's identity" in err
    assert not out.exists()
