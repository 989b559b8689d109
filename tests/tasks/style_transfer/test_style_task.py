"""The style transfer task (normbench/tasks/style_transfer/task.py) on the contract: the
conformance kit with AdaIN's network (`adain_vgg19`, a random encoder at 1/16 width) on
generated content and style folders (`style_synthetic`); its metrics against the network's own
per-sample losses, weighted and averaged in NumPy; and AdaIN and SaAdaIN trained through the
one loop with the official recipe's optimiser and schedule (Adam, lr / (1 + decay·t)), their
validation losses falling."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from normbench.spec import Recipe
from normbench.testing import TaskConformance

NET = {"encoder_weights": "random", "width_divisor": 16}
DATA = {"val_fraction": 0.25, "n_train": 32, "n_test": 12, "size": 20, "image_size": 16}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("style_data")


@pytest.fixture(autouse=True)
def _generated_here(data_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The generated folders go under a temporary data root, not the user's."""
    monkeypatch.setenv("NORMBENCH_DATA", str(data_root))


class TestStyleTransfer(TaskConformance):
    task = "style_transfer"
    dataset = "style_synthetic"
    dataset_options = DATA
    backbone = "adain_vgg19"
    backbone_options = NET
    variant = "saadain"  # the one norm slot: the style layer, found by the kit
    batch_size = 4
    eval_batch_size = 5
    limit_batches = 2
    learn_lr = 0.005  # SGD with momentum on the decoder: the kit's 20 steps on one batch


def _trial(**changes: Any) -> Any:
    kit = TestStyleTransfer()
    return kit.build(**changes)


def test_metrics_are_the_weighted_per_sample_means() -> None:
    """evaluate's loss, content and style on the test split (12 pairs in batches of 5, 5, 2)
    equal the network's per-sample losses weighted by the task's options and averaged over the
    pairs in NumPy float64; the training step's sums are the batch's weighted sums."""
    from normbench.engine.loop import evaluate

    weights = {"content_weight": 2.0, "style_weight": 3.0}
    trial = _trial(task_options=weights)
    values = evaluate(trial, trial.data.test)
    content, style = [], []
    trial.model.eval()
    with torch.no_grad():
        for c, s in trial.data.test:
            losses = trial.model(c, s)
            content.append(losses.content.double().numpy())
            style.append(losses.style.double().numpy())
    c_np, s_np = 2.0 * np.concatenate(content), 3.0 * np.concatenate(style)
    assert len(c_np) == 12
    assert values["content"] == pytest.approx(c_np.mean(), rel=1e-9)
    assert values["style"] == pytest.approx(s_np.mean(), rel=1e-9)
    assert values["loss"] == pytest.approx((c_np + s_np).mean(), rel=1e-9)

    trial.model.train()
    batch = next(iter(trial.data.train))
    step = trial.task.training_step(trial.forward, batch)
    with torch.no_grad():
        losses = trial.model(*batch)
    c_sum, s_sum = 2.0 * losses.content.double().sum(), 3.0 * losses.style.double().sum()
    assert float(step.sums["content"]) == pytest.approx(float(c_sum), rel=1e-6)
    assert float(step.sums["style"]) == pytest.approx(float(s_sum), rel=1e-6)
    assert float(step.loss.detach()) == pytest.approx(
        float(c_sum + s_sum) / len(batch[0]), rel=1e-6
    )


@pytest.mark.parametrize("variant", ["adain", "saadain"])
def test_adain_and_saadain_train_through_the_loop(variant: str, tmp_path: Path) -> None:
    """Four epochs of the official recipe's optimiser and schedule through `run_trial` (lr
    3e-3, not the paper's 1e-4, so a few steps show it): only the decoder and SaAdaIN's shared
    affine train, and the validation loss falls."""
    from normbench.engine.loop import run_trial

    spec = TestStyleTransfer().spec(
        variant=variant,
        epochs=4,
        limit_batches=None,
        probe=False,
        recipe=Recipe(
            optimizer="adam", lr=3e-3, weight_decay=0.0, schedule="inverse_time", lr_decay=5e-5
        ),  # fmt: skip
    )
    records = list(run_trial(spec, checkpoint_dir=tmp_path))
    assert [r["status"] for r in records] == ["ok"] * 4
    val = [r["val_loss"] for r in records]
    assert val[-1] < 0.9 * val[0], val
    assert records[-1]["scoring"]["headline"] == "loss"
    trial = _trial(variant=variant)
    trainable = {n for n, p in trial.model.named_parameters() if p.requires_grad}
    affine = {"style_norm.weight", "style_norm.bias"} if variant == "saadain" else set()
    assert trainable == {n for n, _ in trial.model.named_parameters() if "decoder" in n} | affine
