"""Detection and instance segmentation through `normbench run` on the embedded `digits_coco`
canvases, to leaderboards with AP columns, intervals and paired tests (each checked against a
computation from the stored epochs); a detector started from a classification run of
normbench (`init_from`), and the refusals of a bad `init_from`.

The runs join the module's Ray cluster (tests/suite/conftest.py) with `--address`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from scipy import stats as sps

pytestmark = pytest.mark.slow
ray = pytest.importorskip("ray")

from normbench.cli import main  # noqa: E402

CANVAS = ("{name: digits_coco, image_size: 40, n_train: 16, n_test: 4, max_per_image: 3, "
          "min_side: 8, max_side: 18, val_fraction: 0.25}")  # fmt: skip
COMMON = """
backbones: [imagenet_resnet18]
variants: [bn, {name: gn, options: {num_groups: 8}}]
resources: {cpus: 1, gpus: 0}
"""
CLASSIFIER = f"""
version: 1
name: classifier
dataset: {{name: synthetic, image_size: 16, n_train: 32, n_test: 8, num_classes: 4}}
{COMMON}
batch_sizes: [8]
seeds: [0]
train: {{epochs: 1, lr: 0.05, schedule: constant, probe: false, device: cpu, limit_batches: 2}}
"""
DETECTOR = (
    """
version: 1
name: TASK
task: {name: TASK, options: {layout: small, width: 16}}
dataset: CANVAS
"""
    + COMMON
    + """batch_sizes: [2]
seeds: 3
train: {epochs: 1, lr: 0.02, weight_decay: 1.0e-4, schedule: constant, probe: false,
        device: cpu, limit_batches: 3, eval_batch_size: 4INIT}
"""
).replace("CANVAS", CANVAS)


def _detector(task: str, init: str = "") -> str:
    return DETECTOR.replace("TASK", task).replace("INIT", init)


def _run(argv: list[str]) -> int:
    try:
        return int(main(argv) or 0)
    except SystemExit as exc:
        return int(exc.code or 0)


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


@pytest.fixture(scope="module")
def classifier(ray_cluster: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A classification run (BN and GN ResNet-18s) in the folder the detection suites use."""
    folder = tmp_path_factory.mktemp("det")
    (folder / "classifier.yaml").write_text(CLASSIFIER)
    argv = ["run", str(folder / "classifier.yaml"), "-o", str(folder / "classifier"),
            "--address", ray_cluster.address]  # fmt: skip
    assert _run(argv) == 0
    return folder / "classifier"


@pytest.fixture(scope="module")
def runs(ray_cluster: Any, classifier: Path) -> dict[str, Path]:
    folder = classifier.parent
    out: dict[str, Path] = {"classifier": classifier}
    init = ", init_from: {run: classifier, cell: {seed: 0}}"  # relative to the suite file
    for name, text in (
        ("detection", _detector("detection", init)),
        ("instance_segmentation", _detector("instance_segmentation")),
    ):
        suite = folder / f"{name}.yaml"
        suite.write_text(text)
        out[name] = folder / name
        argv = ["run", str(suite), "-o", str(out[name]), "--address", ray_cluster.address]
        assert _run(argv) == 0, name
    return out


def _final(run: Path) -> dict[tuple[str, int], dict[str, Any]]:
    """(variant, seed) -> the final epoch record."""
    specs = {t["trial_id"]: t["spec"] for t in _lines(run / "trials.jsonl")}
    out = {}
    for e in _lines(run / "epochs.jsonl"):
        spec = specs[e["trial_id"]]
        out[(spec["variant"], spec["seed"])] = e
    return out


@pytest.mark.parametrize(
    ("task", "headline", "columns"),
    [("detection", "box_AP", ["box AP50", "box APs"]),
     ("instance_segmentation", "mask_AP", ["mask AP50", "box AP", "box AP75"])],
)  # fmt: skip
def test_leaderboard_reads_ap(runs: dict[str, Path], task: str, headline: str,
                              columns: list[str]) -> None:  # fmt: skip
    from normbench.reports.data import load_runs
    from normbench.reports.leaderboard import build_tables

    run = runs[task]
    final = _final(run)
    assert len(final) == 6 and all(e["status"] == "ok" for e in final.values())
    for e in final.values():
        assert e["scoring"]["headline"] == headline and "test_top1" not in e
        assert e["train_loss"] > 0 and e["train_loss_objectness"] > 0
    (table,) = build_tables(load_runs([run]))
    assert table.task == task and table.headline.name == headline
    rows = table.rows.set_index("variant")
    per = {v: [final[(v, s)][f"test_{headline}"] for s in (0, 1, 2)] for v in ("bn", "gn")}
    label = {"bn": "bn", "gn": next(i for i in rows.index if i.startswith("gn"))}
    for v, values in per.items():
        row = rows.loc[label[v]]
        assert row[f"{headline}_mean"] == pytest.approx(np.mean(values))
        if np.std(values) > 0:  # the t-interval of the mean over seeds
            low, high = sps.t.interval(0.95, 2, loc=np.mean(values), scale=sps.sem(values))
            assert (row[f"{headline}_ci_low"], row[f"{headline}_ci_high"]) == pytest.approx(
                (low, high)
            )
    diff = np.subtract(per["gn"], per["bn"])
    assert rows.loc[label["gn"], "diff_vs_baseline"] == pytest.approx(diff.mean())
    if np.std(diff) > 0:
        p = sps.ttest_rel(per["gn"], per["bn"]).pvalue
        assert rows.loc[label["gn"], "p_value"] == pytest.approx(p)
    text = (run / "report" / "leaderboard.md").read_text()
    assert f"**Task {task}**" in text and "**higher is better**" in text
    for column in columns:
        assert f"| {column} |" in text


def test_detector_starts_from_the_classification_run(runs: dict[str, Path]) -> None:
    """The detection trials name their classification trial by cell; a trial built from the
    stored spec holds that trial's checkpointed weights in its body (same variant)."""
    from normbench.engine.build import build_trial
    from normbench.engine.checkpoint import load_checkpoint
    from normbench.spec import TrialSpec

    classifiers = {t["spec"]["variant"]: t["trial_id"]
                   for t in _lines(runs["classifier"] / "trials.jsonl")}  # fmt: skip
    stored = _lines(runs["detection"] / "trials.jsonl")
    assert {t["spec"]["init_from"]["run"] for t in stored} == {str(runs["classifier"])}
    spec = TrialSpec.from_dict(stored[0]["spec"])
    tid = classifiers[spec.variant]
    source = load_checkpoint(runs["classifier"] / "checkpoints" / tid, trial_id=tid)
    assert source is not None
    body = build_trial(spec).model.backbone.body.state_dict()
    for name, tensor in body.items():  # every body tensor: conv weights and norm statistics
        assert torch.equal(tensor, source["model"][name]), name
    scratch = build_trial(spec.replace(init_from=None)).model.backbone.body
    assert not torch.equal(scratch.conv1.weight, body["conv1.weight"])


@pytest.mark.parametrize(
    ("init", "message"),
    [("{run: nowhere, cell: {seed: 0}}", "is not a normbench run directory"),
     ("{run: classifier, cell: {seed: 7}}", "init_from: 0 trials of"),
     ("{run: classifier, cell: {seed: 0}, trial: x}", "init_from must be {run: DIR")],
)  # fmt: skip
def test_bad_init_from_is_refused_at_its_line(
    classifier: Path, init: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = classifier.parent
    suite = folder / "bad.yaml"
    text = _detector("detection", f", init_from: {init}")
    suite.write_text(text)
    line = next(i for i, x in enumerate(text.splitlines()) if "init_from:" in x)
    assert _run(["run", str(suite), "-o", str(folder / "bad"), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()  # one line per problem
    assert err and all(f"bad.yaml:{line + 1}: train.init_from:" in x for x in err), err
    assert any(message in x for x in err), err
    assert not (folder / "bad").exists()


def _classifier_trial(classifier: Path, variant: str) -> str:
    return next(t["trial_id"] for t in _lines(classifier / "trials.jsonl")
                if t["spec"]["variant"] == variant)  # fmt: skip


@pytest.mark.parametrize(
    ("task", "dataset", "backbone", "cell", "misfit"),
    [("classification", "{name: digits, image_size: 16}", "imagenet_resnet18", "{seed: 0}",
      "conv1.weight is (64, 3, 7, 7) in its checkpoint and (64, 1, 7, 7) here"),
     ("detection", CANVAS, "imagenet_resnet34", "{seed: 0, backbone: imagenet_resnet18}",
      "layer1.2.conv1.weight is missing from its checkpoint ((64, 64, 3, 3) here)")],
    ids=["channels", "depth"],
)  # fmt: skip
def test_a_checkpoint_that_does_not_fit_is_refused_before_ray(
    classifier: Path, task: str, dataset: str, backbone: str, cell: str, misfit: str,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """The source trial exists, but its tensors do not fit the trial's backbone (1-channel
    digits into a 3-channel classifier's conv1; a ResNet-34 from a ResNet-18): refused at
    `train.init_from`'s line naming the first tensor and both shapes, exit status 2, nothing
    written, Ray never started (the real run, not a dry run)."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("Ray was started for a bad input")

    monkeypatch.setattr(ray, "init", refuse)
    folder = classifier.parent
    text = (f"version: 1\nname: misfit\ntask: {{name: {task}, options: {{}}}}\n"
            f"dataset: {dataset}\nbackbones: [{backbone}]\nvariants: [bn]\nbatch_sizes: [2]\n"
            "train: {epochs: 1, device: cpu,\n"
            f"        init_from: {{run: classifier, cell: {cell}}}}}\n")  # fmt: skip
    if task == "detection":
        text = text.replace("options: {}", "options: {layout: small, width: 16}")
    (folder / "misfit.yaml").write_text(text)
    before = sorted(p.name for p in folder.iterdir())
    assert _run(["run", str(folder / "misfit.yaml"), "-o", str(folder / "misfit")]) == 2
    tid = _classifier_trial(classifier, "bn")
    assert capsys.readouterr().err.strip().splitlines() == [
        f"normbench: error: {folder / 'misfit.yaml'}:9: train.init_from: init_from: trial "
        f"{tid} of {classifier} does not fit this trial's backbone: {misfit}"
    ]
    assert sorted(p.name for p in folder.iterdir()) == before
