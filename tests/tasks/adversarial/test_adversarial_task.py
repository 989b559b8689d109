"""The task `adversarial` through the engine: the task conformance kit (records through the
one loop, resumable, evaluation leaves the model alone) with SaAuxBN in a small pre-activation
ResNet-18 on tiny synthetic images, and what the task makes of the loader's batches (the
data set's pixels, for an ε in grey levels)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from normbench.data.synthetic import synthetic
from normbench.errors import SuiteError
from normbench.suite.loader import load_suite
from normbench.tasks import TASKS
from normbench.tasks.adversarial.evaluate import HEADLINE
from normbench.testing import TaskConformance

DATA = {"n_train": 64, "n_test": 16, "num_classes": 4, "val_fraction": 0.25, "image_size": 8}


class TestAdversarialTask(TaskConformance):
    task = "adversarial"
    options = {"train_steps": 2}
    dataset = "synthetic"
    dataset_options = DATA
    backbone = "preact_resnet18"
    backbone_options = {"width": 4}
    variant = "saauxbn"  # branch-indexed, no subclass of torch's norms
    batch_size = 16
    eval_batch_size = 16
    limit_batches = 2


def test_the_loader_normalisation_is_undone_before_the_attack() -> None:
    trial = TestAdversarialTask().build()
    x, _ = next(iter(trial.data.test))  # the test split in its stored order
    raw = synthetic(**DATA).test.images[: x.shape[0]]  # uint8, as the data set stores them
    pixels = trial.task.pixels(x)
    torch.testing.assert_close(pixels, raw.float() / 255, atol=1e-6, rtol=0)
    with torch.no_grad():  # the model normalises the pixels back to the loader's input
        torch.testing.assert_close(trial.model.model(x), trial.model(pixels), atol=1e-5, rtol=0)


def test_scoring_headline_and_branches() -> None:
    scoring = TASKS.get("adversarial").obj.scoring
    assert scoring.headline == HEADLINE == "adv_pgd20_ra"
    assert scoring.metric(HEADLINE).higher_is_better
    assert set(scoring.keys()) >= {
        f"{split}_{branch}_{m}"
        for split in ("val", "test")
        for branch in ("clean", "adv")
        for m in ("sa", "pgd10_ra", "pgd20_ra")
    }


@pytest.mark.parametrize(
    ("options", "key"),
    [({"eps": -1.0}, "eps"), ({"eps": 300.0}, "eps"), ({"train_steps": -1}, "train_steps")],
)
def test_bad_attack_options_are_refused_at_validation(options: dict, key: str) -> None:
    problems = TASKS.check_options("adversarial", options, dataset="digits", backbone="resnet20")
    assert [p.option for p in problems] == [key], problems


SUITE = """version: 1
name: one_branch
task: adversarial
dataset: {name: digits, image_size: 8}
backbones: [{name: preact_resnet18, options: {width: 4}}]
variants: [bn, VARIANT]
batch_sizes: [16]
train: {epochs: 1}
"""


def test_a_layer_with_one_branch_is_refused_at_its_suite_line(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(SUITE.replace("VARIANT", "sabn"))  # SaBN: one branch unless told
    with pytest.raises(SuiteError) as err:
        load_suite(path)
    assert str(err.value).splitlines() == [
        f"{path}:6: variants[1]: task 'adversarial': adversarial training needs 2 branches "
        "(0 clean, 1 adversarial) in every branch-indexed layer, but variant 'sabn' "
        "(SandwichBatchNorm2d) has num_branches=1; set the variant option num_branches: 2"
    ]
    path.write_text(SUITE.replace("VARIANT", "{name: sabn, options: {num_branches: 2}}"))
    assert {t.spec.variant for t in load_suite(path).trials()} == {"bn", "sabn"}
