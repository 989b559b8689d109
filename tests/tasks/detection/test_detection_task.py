"""The `detection` and `instance_segmentation` tasks through the task kit (TaskConformance: the
variant in every norm of body, FPN and heads, the loss and its parts, records that repeat and
resume from a checkpoint, a loss that falls), and their evaluation through the engine against
pycocotools run on the annotation file itself (the task scores the ground truth it gathers from
the batches, which must be the file's)."""

from __future__ import annotations

import contextlib
import io
from typing import Any

import pytest
from pycocotools.coco import COCO

from normbench.testing import TaskConformance

pytestmark = pytest.mark.slow
# 40 px canvases of 1-3 digits: a ResNet-18 body, 32-channel FPN and heads
CANVAS: dict[str, Any] = {"image_size": 40, "n_train": 20, "n_test": 6, "max_per_image": 3,
                          "min_side": 8, "max_side": 18, "val_fraction": 0.2}  # fmt: skip


# the kit's trial: dataset, its options, backbone, its options, task options; then sizes
TRIAL = ("digits_coco", CANVAS, "imagenet_resnet18", {}, {"layout": "small", "width": 32})
SIZES = (2, 3, 2, 8, 0.01)  # batch, eval batch, batches per epoch, learn steps, learn lr


class TestDetection(TaskConformance):
    task = "detection"
    dataset, dataset_options, backbone, backbone_options, options = TRIAL
    batch_size, eval_batch_size, limit_batches, learn_steps, learn_lr = SIZES


class TestInstanceSegmentation(TaskConformance):
    task = "instance_segmentation"
    dataset, dataset_options, backbone, backbone_options, options = TRIAL
    batch_size, eval_batch_size, limit_batches, learn_steps, learn_lr = SIZES


@pytest.mark.parametrize("kit", [TestDetection, TestInstanceSegmentation])
def test_ap_equals_pycocotools_on_the_annotation_file(kit: type[TaskConformance], tmp_path) -> None:
    """One trained step, then the engine's evaluation of the test split against
    `evaluate_detector` (the same model's predictions scored against COCO(the test file))."""
    from normbench.data.files import data_root
    from normbench.engine.loop import evaluate
    from normbench.tasks.detection.evaluate import evaluate_detector

    trial = kit().build(dataset_options={**CANVAS, "root": str(tmp_path)})
    trial.model.train()
    batch = next(iter(trial.data.train))
    trial.task.training_step(trial.forward, batch).loss.backward()
    trial.optimizer.step()
    got = evaluate(trial, trial.data.test)
    (folder,) = (data_root(str(tmp_path)) / "digits_coco").iterdir()
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(folder / "annotations" / "instances_val.json"))
    want = evaluate_detector(trial.model, trial.data.test, gt)
    assert set(got) == set(want) == {m.name for m in trial.task.scoring.on("test")}
    assert got == pytest.approx(want, abs=1e-9)
    assert got[trial.task.scoring.headline] is not None
