"""`normbench evaluate` on a finished small digits run, against independent computations:
alpha chosen on validation (models rebuilt with the option set at construction and scored by
hand), and recalibrated statistics (torch's own `update_bn`)."""

from __future__ import annotations

import itertools
import json
import textwrap
from pathlib import Path

import pytest
import torch
from torch.optim.swa_utils import update_bn

from normbench.cli import main
from normbench.engine import checkpoint as ckpt
from normbench.engine.build import build_model, build_trial
from normbench.engine.loop import run_trial
from normbench.results.store import EVALUATIONS, RunStore
from normbench.suite.loader import load_suite

SUITE = """
version: 1
name: eval_smoke
dataset: {name: digits, image_size: 8, val_fraction: 0.25}
backbones: [{name: resnet20, options: {width: 8}}]
variants:
  - {name: fourthings, options: {channel_groups: 4, examples_per_group: 8}}
  - bn
batch_sizes: [32]
seeds: [0]
train: {epochs: 1, lr: 0.05, schedule: constant, limit_batches: 6, device: cpu, probe: false}
"""


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run directory as the driver leaves it: epochs, summaries and final checkpoints."""
    root = tmp_path_factory.mktemp("eval")
    (root / "suite.yaml").write_text(textwrap.dedent(SUITE))
    suite = load_suite(root / "suite.yaml")
    run_dir = root / "run"
    with RunStore(run_dir) as store:
        for t in suite.trials():
            tid = t.spec.trial_id
            for record in run_trial(t.spec, checkpoint_dir=run_dir / "checkpoints" / tid):
                store.append_epoch(tid, record)
            store.finish_trial(tid, t.spec.to_dict(), t.cell, "completed")
    return run_dir


def _trial_ids(run_dir: Path) -> dict[str, str]:
    lines = [json.loads(x) for x in (run_dir / "trials.jsonl").read_text().splitlines()]
    return {x["spec"]["variant"]: x["trial_id"] for x in lines}


@torch.no_grad()
def _top1(model: torch.nn.Module, loader) -> float:  # type: ignore[no-untyped-def]
    model.eval()
    hits = seen = 0
    for x, y in loader:
        hits += int((model(x).argmax(1) == y).sum())
        seen += len(y)
    return 100.0 * hits / seen


def _rebuilt(run_dir: Path, tid: str, **variant_options: float):  # type: ignore[no-untyped-def]
    """The trial's data and, separately, its model built with `variant_options` and the
    checkpoint's weights loaded: no code of normbench.engine.evaluate involved."""
    payload = ckpt.load_checkpoint(run_dir / "checkpoints" / tid)
    assert payload is not None
    from normbench.spec import TrialSpec

    spec = TrialSpec.from_dict(payload["spec"])
    trial = build_trial(spec)
    spec = spec.replace(variant_options={**spec.variant_options, **variant_options})
    model = build_model(spec, num_classes=trial.data.num_classes, in_channels=1)
    model.load_state_dict(payload["model"])
    return trial, model


def test_evaluate_picks_alpha_on_validation(finished_run: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    grid = [0.0, 0.1, 0.3, 0.6, 1.0]
    with pytest.raises(SystemExit) as exit_:
        main(["evaluate", str(finished_run), "--set", f"example_weights={grid}",
              "--set", "recalibrate_batches=0"])  # fmt: skip
    assert exit_.value.code == 0
    lines = [json.loads(x) for x in (finished_run / EVALUATIONS).read_text().splitlines()]
    tid = _trial_ids(finished_run)["fourthings"]
    (line,) = [x for x in lines if x["trial_id"] == tid and x["setting"] == "example_weight"]
    assert not [x for x in lines if x["trial_id"] != tid]  # bn has no example weight

    expected_val = {}
    for alpha in grid:
        trial, model = _rebuilt(finished_run, tid, eval_example_weight=alpha)
        expected_val[alpha] = _top1(model, trial.data.val)
    best = max(grid, key=lambda a: (expected_val[a], -a))  # ties: the smaller alpha
    assert line["value"] == best
    assert line["val_top1_by_value"] == {repr(a): pytest.approx(v) for a, v in expected_val.items()}
    assert len(set(expected_val.values())) > 1  # the grid matters on this model
    trial, model = _rebuilt(finished_run, tid, eval_example_weight=best)
    assert line["test_top1"] == pytest.approx(_top1(model, trial.data.test))
    assert line["device"] == "cpu" and line["torch"] == torch.__version__

    # the report's extra row, labelled with the setting, beside the trained score
    from normbench.reports.evaluations import evaluation_markdown

    rows = [r for r in evaluation_markdown([finished_run]).splitlines() if "chosen on val" in r]
    trained = [
        json.loads(x)["test_top1"]
        for x in (finished_run / "epochs.jsonl").read_text().splitlines()
        if json.loads(x)["trial_id"] == tid
    ][-1]
    delta = f"{line['test_top1'] - trained:+.2f}"
    delta = "0.00" if float(delta) == 0 else delta  # a shown zero carries no sign
    assert rows == [
        f"| digits | resnet20 | fourthings | 32 | example weight alpha chosen on val | 1 | "
        f"{line['test_top1']:.2f} | {trained:.2f} | {delta} | {best:g} |"
    ]

    # a rerun resumes: nothing evaluated twice
    with pytest.raises(SystemExit):
        main(["evaluate", str(finished_run), "--set", f"example_weights={grid}",
              "--set", "recalibrate_batches=0"])  # fmt: skip
    assert len((finished_run / EVALUATIONS).read_text().splitlines()) == len(lines)


def test_recalibrated_statistics_match_torch_update_bn(finished_run: Path) -> None:
    tid = _trial_ids(finished_run)["bn"]
    with pytest.raises(SystemExit) as exit_:
        main(["evaluate", str(finished_run), "--set", "example_weights=[]",
              "--set", "recalibrate_batches=4", "--set", f"trials=[{tid}]"])  # fmt: skip
    assert exit_.value.code == 0
    lines = [json.loads(x) for x in (finished_run / EVALUATIONS).read_text().splitlines()]
    (line,) = [x for x in lines if x["setting"] == "recalibrated_stats"]
    assert line["value"] == 4 and line["trial_id"] == tid

    trial, model = _rebuilt(finished_run, tid)
    trial.data.train.set_epoch(0)
    update_bn(itertools.islice(iter(trial.data.train), 4), model)
    assert line["val_top1"] == pytest.approx(_top1(model, trial.data.val))
    assert line["test_top1"] == pytest.approx(_top1(model, trial.data.test))
    stored = ckpt.load_checkpoint(finished_run / "checkpoints" / tid)
    assert stored is not None
    bn = "stem.1.running_mean"  # the stem norm: recalibration changed it, update_bn agrees
    assert not torch.allclose(stored["model"][bn], model.state_dict()[bn])


def test_evaluate_refuses_a_folder_without_finished_trials(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(SystemExit) as exit_:
        main(["evaluate", str(tmp_path)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"normbench: error: evaluate: {tmp_path} is not a run directory with finished trials "
        "(no trials.jsonl)"
    )
    assert list(tmp_path.iterdir()) == []  # nothing written, not even a lock


def test_evaluate_refuses_an_unknown_setting(finished_run: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(SystemExit) as exit_:
        main(["evaluate", str(finished_run), "--set", "recalibrate_batches=-1"])
    assert exit_.value.code == 2
    assert "evaluate: --set recalibrate_batches: Input should be greater than or equal to 0" in (
        capsys.readouterr().err
    )


def test_evaluate_refused_by_a_running_run_names_no_flag_it_lacks(
    finished_run: Path, capsys
) -> None:  # type: ignore[no-untyped-def]
    with RunStore(finished_run):  # a run (or another evaluation) holds the directory
        with pytest.raises(SystemExit) as exit_:
            main(["evaluate", str(finished_run)])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and "--output" not in err
    assert err.startswith(f"normbench: error: run directory {finished_run} is in use by another")
    assert err.endswith("wait for it to finish, then evaluate")
