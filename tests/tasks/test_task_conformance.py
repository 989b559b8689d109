"""The task contract (`normbench.testing.TaskConformance`) for every registered task and for a
plugin task loaded from a file, as a plugin author runs it; and what the kit catches."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from normbench.contract import SPLITS, Metric, Scoring
from normbench.registry import load_plugin
from normbench.tasks import TASKS, Step, register_task
from normbench.tasks.classification import Classification
from normbench.testing import TaskConformance

PLUGIN = str(Path(__file__).with_name("plugin_regression.py"))
load_plugin(PLUGIN)  # registers digit_regression, as a suite's `plugins:` does


class TestClassification(TaskConformance):
    task = "classification"


class TestDigitRegression(TaskConformance):
    task = "digit_regression"
    plugins = (PLUGIN,)


def test_every_registered_task_has_a_conformance_class() -> None:
    """A `TaskConformance` subclass naming each built-in task, here or beside the task's other
    tests (tests/tasks/<task>/)."""
    builtins = {e.name for e in TASKS.entries() if e.source == "built-in"}
    text = "\n".join(p.read_text() for p in Path(__file__).parent.rglob("test_*.py"))
    covered = set(re.findall(r'\(TaskConformance\):\n(?:    .*\n)*?    task = "(\w+)"', text))
    assert TestClassification.task in covered
    assert builtins <= covered, builtins - covered


def test_regression_metrics_match_a_numpy_computation() -> None:
    """The plugin's evaluation, through the engine, against RMSE and MAE computed in NumPy
    from the same model's predictions on the test images."""
    from normbench.engine.loop import evaluate

    kit = TestDigitRegression()
    trial = kit.build()
    values = evaluate(trial, trial.data.test)
    preds, targets = [], []
    trial.model.eval()
    with torch.no_grad():
        for x, y in trial.data.test:
            preds.append(trial.model(x).squeeze(1).double().numpy())
            targets.append(y.double().numpy())
    err = np.concatenate(preds) - np.concatenate(targets)
    assert values["rmse"] == pytest.approx(math.sqrt(np.mean(err**2)), rel=1e-6)
    assert values["mae"] == pytest.approx(np.mean(np.abs(err)), rel=1e-6)
    assert values["loss"] == pytest.approx(np.mean(err**2), rel=1e-5)


# -- what the kit catches -----------------------------------------------------------------
SCORING = Scoring((Metric("loss", "loss", "", False, SPLITS),), "loss")


class HeadWithBatchNorm(Classification):
    """A task whose head hard-codes BatchNorm1d instead of taking `norm_layer`."""

    def build_model(self, ctx):  # type: ignore[no-untyped-def]
        super().build_model(ctx)
        body = ctx.backbone(16, in_channels=ctx.in_channels)
        return nn.Sequential(body, nn.BatchNorm1d(16), nn.Linear(16, ctx.num_classes))


class HeadOfItsOwnWidth(Classification):
    """A task whose head normalises 24 channels, a width the backbone (4, 8, 16) lacks, and
    does not say so: validation would not check the variant's options there."""

    def build_model(self, ctx):  # type: ignore[no-untyped-def]
        super().build_model(ctx)
        body = ctx.backbone(24, in_channels=ctx.in_channels)
        head = [nn.Unflatten(1, (24, 1, 1)), ctx.norm_layer(24), nn.Flatten()]
        return nn.Sequential(body, *head, nn.Linear(24, ctx.num_classes))


class DeclaredHead(HeadOfItsOwnWidth):
    def norm_widths(self) -> dict[str, set[int]]:
        return {"head": {24}}


class ForgetsTheTrainMetric(Classification):
    """A task whose step leaves out the train top-1 its scoring declares."""

    def training_step(self, forward, batch):  # type: ignore[no-untyped-def]
        return Step(super().training_step(forward, batch).loss)


@pytest.mark.parametrize(
    ("cls", "check", "message"),
    [
        (HeadWithBatchNorm, "test_norm_layer_everywhere", "did not replace"),
        (HeadOfItsOwnWidth, "test_norm_layer_everywhere", r"does not declare in norm_widths"),
        (ForgetsTheTrainMetric, "test_training_step", "train sums"),
    ],
)
def test_the_kit_fails_a_broken_task(cls: type, check: str, message: str) -> None:
    name = f"broken_{cls.__name__.lower()}"
    register_task(name)(cls)
    try:
        kit = type("Kit", (TaskConformance,), {"task": name})()
        with pytest.raises(AssertionError, match=message):
            getattr(kit, check)()
    finally:
        TASKS.unregister(name)


def test_the_kit_passes_a_head_whose_width_is_declared() -> None:
    register_task("declared_head")(DeclaredHead)
    try:
        type("Kit", (TaskConformance,), {"task": "declared_head"})().test_norm_layer_everywhere()
    finally:
        TASKS.unregister("declared_head")


def test_registration_refuses_what_breaks_the_contract() -> None:
    from normbench.errors import PluginError

    class NoScoring:
        def build_model(self, ctx): ...  # type: ignore[no-untyped-def]

    class PositionalOption(Classification):
        scoring = SCORING

        def __init__(self, size: int) -> None:
            super().__init__()

    for bad, why in ((NoScoring, "no `scoring`"), (PositionalOption, "keyword-only")):
        with pytest.raises(PluginError, match=why):
            register_task("bad_task")(bad)
        assert "bad_task" not in TASKS


# -- a task whose batches are lists (the structure of detection's) -------------------------
SEGMENTATION = str(Path(__file__).with_name("plugin_segmentation.py"))
load_plugin(SEGMENTATION)  # registers the digit_masks data set and digit_segmentation


class TestDigitSegmentation(TaskConformance):
    task = "digit_segmentation"
    dataset = "digit_masks"
    plugins = (SEGMENTATION,)
    learn_lr = 0.5


def test_segmentation_batches_are_lists_and_miou_matches_sklearn() -> None:
    """The data set's own loader serves lists through the engine, and the task's mean IoU and
    pixel accuracy equal scikit-learn's on the model's own predictions."""
    from sklearn.metrics import accuracy_score, jaccard_score

    from normbench.engine.loop import evaluate

    kit = TestDigitSegmentation()
    trial = kit.build()
    images, targets = next(iter(trial.data.train))
    assert isinstance(images, list) and isinstance(targets, list) and len(images) == 16
    assert isinstance(trial.probe, list) and len(trial.probe) == 4  # the probe is a list too
    values = evaluate(trial, trial.data.test)
    truth, preds = [], []
    trial.model.eval()
    with torch.no_grad():
        for images, targets in trial.data.test:
            preds.append(trial.model(images).argmax(dim=1).flatten().numpy())
            truth.append(torch.stack([t["mask"] for t in targets]).flatten().numpy())
    y, p = np.concatenate(truth), np.concatenate(preds)
    assert values["miou"] == pytest.approx(100 * jaccard_score(y, p, average="macro"))
    assert values["pixel_acc"] == pytest.approx(100 * accuracy_score(y, p))
