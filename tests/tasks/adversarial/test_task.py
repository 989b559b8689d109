"""The task `adversarial` through the engine: the task conformance kit (records through the
one loop, resumable, evaluation leaves the model alone) with SaAuxBN in a small pre-activation
ResNet-18 on digits, and what the loop hands the task (the data set's mean and std for pixel
space)."""

from __future__ import annotations

import pytest
import torch

from normbench.tasks import TASKS
from normbench.testing import TaskConformance


class TestAdversarialTask(TaskConformance):
    task = "adversarial"
    options = {"train_steps": 2}
    backbone = "preact_resnet18"
    backbone_options = {"width": 4}
    variant = "saauxbn"  # branch-indexed, no subclass of torch's norms
    dataset_options = {"val_fraction": 0.2, "image_size": 8}
    batch_size = 16
    eval_batch_size = 32
    limit_batches = 2


def test_the_loader_normalisation_is_undone_before_the_attack() -> None:
    kit = TestAdversarialTask()
    trial = kit.build()
    x, _ = next(iter(trial.data.train))
    pixels = trial.task.pixels(x)
    assert pixels.min() >= 0 and pixels.max() <= 1
    # digits are 17 grey levels: the pixels are multiples of 1/16 (up to rounding)
    levels = pixels * 16
    torch.testing.assert_close(levels, levels.round(), atol=2e-3, rtol=0)
    with torch.no_grad():  # the model normalises pixels back to the loader's input
        torch.testing.assert_close(trial.model.model(x), trial.model(pixels), atol=1e-4, rtol=0)


@pytest.mark.parametrize(
    ("options", "key"), [({"eps": -1.0}, "eps"), ({"train_steps": -1}, "train_steps")]
)
def test_bad_attack_options_are_refused_at_validation(options: dict, key: str) -> None:
    problems = TASKS.check_options("adversarial", options, dataset="digits", backbone="resnet20")
    assert [p.option for p in problems] == [key], problems
