"""Searches driven by ask/tell on the study in the run directory (no Ray here; the fault tests
run the same sessions through `normbench run`): resume, growth, duplicates, lost studies,
define-by-run spaces and the space refusals, each through the suite file a user writes."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from normbench.cli import main
from normbench.suite.loader import load_suite
from normbench.suite.search import SearchSession, StudyError, best_per_variant

SUITE = """
version: 1
name: s
dataset: {name: synthetic, image_size: 16, n_train: 64, n_test: 32, num_classes: 4}
backbones: [{name: resnet20, options: {width: 4}}]
variants: [bn]
batch_sizes: [32]
train: {epochs: 2, lr: 0.05, schedule: constant, probe: false, device: cpu}
search:
  num_samples: NUM
  sampler: SAMPLER
  space:
SPACE
"""
LR = "    recipe.lr: {type: float, low: 0.01, high: 0.2, log: true}"
TWO = "    recipe.lr: {type: categorical, choices: [0.01, 0.1]}"
MULTI = """    variant: {type: categorical, choices: [bn, ubn]}
    variant_options.tau: {type: float, low: 0.1, high: 0.5}
    batch_size: {type: categorical, choices: [16, 32]}"""


def _suite(tmp_path: Path, space: str = LR, num: int = 3, sampler: str = "random") -> Path:
    path = tmp_path / "s.yaml"
    text = SUITE.replace("NUM", str(num)).replace("SAMPLER", sampler).replace("SPACE", space)
    path.write_text(text)
    return path


def _session(path: Path, done: dict, started: dict | None = None) -> SearchSession:
    suite = load_suite(path)
    url = f"sqlite:///{path.parent / 'optuna.db'}"
    return SearchSession(suite.search, url, "study", suite.trials()[0].spec, done, started or {})


def _finish(
    session: SearchSession, config: dict, done: dict, value: float, status: str = "completed"
) -> str:
    """What the driver does when a trial ends: store the summary, then tell the study."""
    tid = session.trial_id(config["params"])
    summary = {"status": status, "value": value, "params": config["params"], "study": "study",
               "study_trial": config["study_trial"]}  # fmt: skip
    done[tid] = summary
    session.finish(tid, summary)
    return tid


def _study(path: Path) -> optuna.Study:
    return optuna.load_study(study_name="study", storage=f"sqlite:///{path.parent / 'optuna.db'}")


@pytest.mark.parametrize("sampler", ["random", "tpe"])
def test_kill_after_one_sample_then_rerun_finishes_the_search(tmp_path: Path, sampler: str) -> None:
    """The issue's crash: kill a 3-sample search after its first sample; the rerun resumes the
    interrupted sample with its own parameters and asks for exactly one new one."""
    path = _suite(tmp_path, sampler=sampler)
    reference = _session(path, {})  # an uninterrupted run, in another study file
    ref_done: dict = {}
    ref_params = []
    while (c := reference.suggest()) is not None:
        ref_params.append(c["params"])
        _finish(reference, c, ref_done, value=len(ref_params))
    (tmp_path / "optuna.db").rename(tmp_path / "reference.db")

    done: dict = {}
    first = _session(path, done)
    a, b = first.suggest(), first.suggest()
    _finish(first, a, done, value=1.0)  # b was running when the driver died (no close)
    second = _session(path, done)
    assert [s.params for s in second.resume] == [b["params"]] and second.new == 1
    resumed = second.suggest()
    assert resumed == {"params": b["params"], "study_trial": b["study_trial"]}
    _finish(second, resumed, done, value=2.0)
    new = second.suggest()
    assert new is not None and second.suggest() is None
    _finish(second, new, done, value=3.0)
    # The same points as the uninterrupted search (samplers are seeded per trial number).
    assert [a["params"], b["params"], new["params"]] == ref_params
    trials = _study(path).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    assert len({repr(t.params) for t in trials}) == 3
    # A third run has nothing to do; growing num_samples asks for exactly the difference.
    assert _session(path, done).total == 0
    grown = _session(_suite(tmp_path, num=5, sampler=sampler), done)
    assert (len(grown.resume), grown.new) == (0, 2)


def test_store_finished_but_study_untold_is_told_not_rerun(tmp_path: Path) -> None:
    path = _suite(tmp_path, num=2)
    done: dict = {}
    first = _session(path, done)
    c = first.suggest()
    tid = first.trial_id(c["params"])
    done[tid] = {
        "status": "completed",
        "value": 7.0,
        "params": c["params"],
        "study": "study",
        "study_trial": c["study_trial"],
    }  # fmt: skip  (killed before the tell)
    second = _session(path, done)
    assert not second.resume and second.new == 1
    (t,) = _study(path).get_trials()
    assert (t.state, t.value) == (TrialState.COMPLETE, 7.0)


def test_pruned_and_diverged_trials_are_finished_samples(tmp_path: Path) -> None:
    path = _suite(tmp_path, num=3)
    done: dict = {}
    s = _session(path, done)
    _finish(s, s.suggest(), done, value=1.0, status="pruned")
    _finish(s, s.suggest(), done, value=None, status="diverged")  # type: ignore[arg-type]
    states = [t.state for t in _study(path).get_trials()]
    assert states == [TrialState.PRUNED, TrialState.FAIL]
    assert _session(path, done).new == 1


def test_a_repeated_point_gets_the_finished_result_and_another_point(tmp_path: Path) -> None:
    """2-value space, 2 samples: the sampler's repeats never run twice and never stop the
    search; every configuration runs exactly once, and the study's COMPLETE trials are the
    distinct points (a repeat is FAIL, pointing at its original: optuna-dashboard counts 2)."""
    path = _suite(tmp_path, space=TWO, num=2)
    done: dict = {}
    s = _session(path, done)
    ran = []
    while (c := s.suggest()) is not None:
        ran.append(c["params"]["recipe.lr"])
        _finish(s, c, done, value=10 * c["params"]["recipe.lr"])
    assert sorted(ran) == [0.01, 0.1]
    trials = _study(path).get_trials()
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert sorted(t.params["recipe.lr"] for t in complete) == [0.01, 0.1]
    assert all(t.value == 10 * t.params["recipe.lr"] for t in complete)
    assert len(trials) > 2  # the sampler did repeat a point
    for t in trials:
        if t.user_attrs["nb_status"] == "duplicate":
            original = trials[t.user_attrs["duplicate_of"]]
            assert t.state == TrialState.FAIL and t.value is None
            assert original.state == TrialState.COMPLETE and original.params == t.params


def test_num_samples_above_a_discrete_space_is_refused(tmp_path: Path, capsys) -> None:
    path = _suite(tmp_path, space=TWO, num=4)
    with pytest.raises(SystemExit) as exit_:
        main(["run", str(path), "--dry-run"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"normbench: error: {path}:10: search.num_samples: num_samples=4 exceeds the 2 "
        "distinct configurations of the search space; use num_samples: 2 to run each once"
    ]


def test_num_samples_above_a_conditional_discrete_space_is_refused(tmp_path: Path, capsys) -> None:
    """BN has no tau, so variant x tau holds 1 + 2 configurations, not 2 x 2."""
    space = """    variant: {type: categorical, choices: [bn, ubn]}
    variant_options.tau: {type: categorical, choices: [0.1, 0.3]}"""
    path = _suite(tmp_path, space=space, num=4)
    with pytest.raises(SystemExit) as exit_:
        main(["run", str(path), "--dry-run"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"normbench: error: {path}:10: search.num_samples: num_samples=4 exceeds the 3 "
        "distinct configurations of the search space; use num_samples: 3 to run each once"
    ]
    ok = _suite(tmp_path, space=space, num=3)
    with pytest.raises(SystemExit) as exit_:
        main(["run", str(ok), "--dry-run", "--output", str(tmp_path / "run")])
    assert exit_.value.code == 0


@pytest.mark.parametrize(
    "param, message",
    [
        ("{type: float, low: 0.01, high: 0.2, log: true, step: 0.01}",
         "search.space.recipe.lr.step: a log-scale parameter cannot have a step (step=0.01); "
         "drop `step` or `log`"),
        ("{type: int, low: 1, high: 4, step: 0.5}",
         "search.space.recipe.lr.step: an int parameter needs an integer step, but got step=0.5"),
        ("{type: float, low: 0.01, high: 0.05, step: 0.03}",
         "search.space.recipe.lr.step: high - low = 0.04 is not a whole number of steps of 0.03 "
         "(Optuna would lower high to 0.04)"),
    ],
)  # fmt: skip
def test_a_space_optuna_would_change_is_refused_with_file_and_line(
    tmp_path: Path, capsys, param: str, message: str
) -> None:
    path = _suite(tmp_path, space=f"    recipe.lr: {param}")
    with pytest.raises(SystemExit) as exit_:
        main(["run", str(path), "--output", str(tmp_path / "out")])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"normbench: error: {path}:13: {message}"]
    assert not (tmp_path / "out").exists()


def test_variant_options_are_sampled_only_for_their_variant(tmp_path: Path) -> None:
    """Define-by-run: tau (a UBN option) exists in a trial exactly when its variant is UBN;
    the sampled variant, batch size and options are what the trial's spec runs."""
    path = _suite(tmp_path, space=MULTI, num=12)
    done: dict = {}
    s = _session(path, done)
    seen = set()
    while (c := s.suggest()) is not None:
        p = c["params"]
        assert ("variant_options.tau" in p) == (p["variant"] == "ubn")
        spec = load_suite(path).trials()[0].spec
        from normbench.suite.matrix import apply_params

        run = apply_params(spec, p)
        assert (run.variant, run.batch_size) == (p["variant"], p["batch_size"])
        tau = {"tau": p["variant_options.tau"]} if "variant_options.tau" in p else {}
        assert run.variant_options == tau
        seen.add(p["variant"])
        _finish(s, c, done, value=p.get("variant_options.tau", 0.0) * 100)
    assert seen == {"bn", "ubn"}
    rows = [{"spec": {"variant": d["params"]["variant"]}, **d} for d in done.values()]
    best = best_per_variant(rows, "max")
    assert set(best) == {"bn", "ubn"}
    assert best["ubn"]["value"] == max(d["value"] for d in done.values())


def test_an_option_no_searched_variant_has_is_refused(tmp_path: Path, capsys) -> None:
    path = _suite(tmp_path, space="    variant: {type: categorical, choices: [bn, gn]}\n"
                  "    variant_options.tau: {type: float, low: 0.1, high: 0.5}")  # fmt: skip
    with pytest.raises(SystemExit):
        main(["run", str(path), "--dry-run"])
    err = capsys.readouterr().err
    assert "no variant searched here has option 'tau' (searched: bn, gn)" in err


def test_a_deleted_study_is_rebuilt_from_the_run_directory(tmp_path: Path) -> None:
    path = _suite(tmp_path, num=3)
    done: dict = {}
    s = _session(path, done)
    a, b = s.suggest(), s.suggest()
    _finish(s, a, done, value=5.0)
    (tmp_path / "optuna.db").unlink()
    started = {s.trial_id(b["params"]): {"study": "study", "search_params": b["params"]}}
    rebuilt = _session(path, done, started)
    assert rebuilt.notes[0] == "study study rebuilt from trials.jsonl (1 finished)"
    assert rebuilt.finished == 1 and rebuilt.new == 2
    first = rebuilt.suggest()  # the interrupted sample comes back first (its checkpoint)
    assert first is not None and first["params"] == b["params"]
    (t0, *_) = _study(path).get_trials()
    assert (t0.state, t0.value, t0.params) == (TrialState.COMPLETE, 5.0, a["params"])


def test_a_corrupt_study_is_refused_in_one_line(tmp_path: Path) -> None:
    path = _suite(tmp_path)
    (tmp_path / "optuna.db").write_bytes(b"this is not a database" * 100)
    with pytest.raises(StudyError) as exc:
        _session(path, {})
    msg = str(exc.value)
    assert "\n" not in msg and msg.startswith(f"{tmp_path / 'optuna.db'}: the Optuna study 'study'")
    assert msg.endswith("move the file away and rerun to rebuild the study from trials.jsonl")
