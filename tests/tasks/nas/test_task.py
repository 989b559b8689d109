"""The task `darts` (normbench.tasks.nas.task) through the one loop: the conformance kit; the
architecture step is Adam on alpha alone with the architecture batch's gradient, and the loop's
optimiser never moves alpha; the found cell's score is the NAS-Bench-201 table's (a file in
the release layout) or the score of the same cell trained as a separate classification
trial; the task's rules at suite validation."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from test_table import write_table

from normbench.data.base import DatasetOptionError
from normbench.engine.build import build_trial
from normbench.engine.loop import evaluate, run_trial
from normbench.models.nas201 import OPERATIONS, RESNET_CELL, parse_genotype
from normbench.spec import Recipe, TrialSpec
from normbench.tasks import TASKS
from normbench.tasks.nas.data import ArchStream, arch_stream
from normbench.tasks.nas.search import retrain_spec
from normbench.tasks.nas.supernet import edges
from normbench.tasks.nas.task import genotype_of_record
from normbench.testing import TaskConformance

SIZE = {"channels": 4, "cells_per_stage": 1}


class TestDartsConformance(TaskConformance):
    task = "darts"
    # the variant in the skeleton too (the kit looks for it in every norm), a short retraining
    options = {"skeleton_norm": "variant", "retrain_epochs": 1, "retrain_batch_size": 16}
    backbone = "nas201"
    backbone_options = SIZE
    # small splits: each epoch's found cell is retrained and evaluated through the loop
    dataset = "synthetic"
    dataset_options = {"n_train": 96, "n_test": 32, "image_size": 8, "num_classes": 4,
                       "val_fraction": 0.25}  # fmt: skip
    limit_batches = 2
    learn_steps, learn_lr = 10, 0.1  # two forwards and backwards a step


def spec(**task_options: object) -> TrialSpec:
    return TrialSpec(
        variant="sabn", backbone="nas201", backbone_options=SIZE, dataset="digits",
        dataset_options={"val_fraction": 0.3}, task="darts",
        task_options={"retrain_epochs": 1, "retrain_batch_size": 16, **task_options},
        epochs=1, batch_size=16, eval_batch_size=64, limit_batches=2, probe=False,
        recipe=Recipe(lr=0.025, nesterov=True, schedule="cosine", warmup_epochs=0),
        device="cpu", num_threads=1,
    )  # fmt: skip


def test_architecture_step_is_adam_on_alpha_alone_and_the_loop_never_moves_alpha() -> None:
    trial = build_trial(spec())
    task, model = trial.task, trial.model
    ref = copy.deepcopy(model)
    # the batch the step will take, from a copy of the stream
    arch_x, arch_y = ArchStream(copy.copy(task.arch.loader)).next()
    batch = next(iter(trial.data.train))
    torch.manual_seed(0)  # the branches SaBN's indices sample, alike in both
    step = task.training_step(trial.forward, batch)
    # by hand: CE of the architecture batch at the old weights, d/d alpha; Adam's first step
    # (L2 in the gradient, bias corrections: lr * g / (|g| + eps))
    torch.manual_seed(0)
    loss = F.cross_entropy(ref(arch_x), arch_y)
    (grad,) = torch.autograd.grad(loss, [ref.alphas])
    g = grad + task.arch_weight_decay * ref.alphas.detach()
    want = ref.alphas.detach() - task.arch_lr * g / (g.abs() + 1e-8)
    torch.testing.assert_close(model.alphas.detach(), want)
    arch_loss = float(step.sums["arch_loss"])
    assert arch_loss == pytest.approx(float(loss.detach()) * len(arch_y), rel=1e-4)
    # the weight loss gives alpha no gradient; the loop's SGD then leaves alpha as it is
    trial.optimizer.zero_grad(set_to_none=True)
    step.loss.backward()
    assert model.alphas.grad is None
    assert any(p.grad is not None for p in model.weight_parameters())
    before = model.alphas.detach().clone()
    trial.optimizer.step()
    torch.testing.assert_close(model.alphas.detach(), before)


def test_without_gradients_only_the_weight_loss_is_computed() -> None:
    trial = build_trial(spec())
    before = trial.model.alphas.detach().clone()
    with torch.no_grad():
        step = trial.task.training_step(trial.forward, next(iter(trial.data.train)))
    assert float(step.sums["arch_loss"]) == 0.0 and trial.task.arch.steps == 0
    torch.testing.assert_close(trial.model.alphas.detach(), before)


def test_cell_score_is_the_tables_and_the_record_holds_the_found_cell(tmp_path) -> None:
    table = write_table(tmp_path / "NAS-Bench-201-v1_1-096897.pth")
    trial = build_trial(spec(nas201_table=str(table), trust_pickle=True, nas201_dataset="cifar10"))
    cell = {(i, j): op for i, node in enumerate(parse_genotype(RESNET_CELL), 1) for op, j in node}
    with torch.no_grad():  # alpha favouring the cell the table scores
        for row, edge in enumerate(edges()):
            trial.model.alphas[row] = 0.0
            trial.model.alphas[row, OPERATIONS.index(cell[edge])] = 1.0
    assert trial.model.genotype() == RESNET_CELL
    test = evaluate(trial, trial.data.test, split="test")
    assert test["cell_top1"] == pytest.approx(93.5)  # the table's cifar10 test set, ori-test
    # the table's cifar10 has no validation set of its own: the val headline is None
    assert evaluate(trial, trial.data.val, split="val")["cell_top1"] is None
    record = {"diagnostics": {"architecture": trial.model.architecture.diagnostics()}}
    assert genotype_of_record(record) == RESNET_CELL


def test_cell_score_by_retraining_is_the_separate_classification_trials() -> None:
    records = list(run_trial(spec()))
    (record,) = records
    genotype = genotype_of_record(record)  # the cell the search found
    alone = retrain_spec(
        genotype, "digits", **SIZE, epochs=1, batch_size=16, seed=0, eval_batch_size=64,
        dataset_options={"val_fraction": 0.3}, limit_batches=2, device="cpu", num_threads=1,
        probe=False,
    )  # fmt: skip
    (scored,) = list(run_trial(alone))
    assert record["val_cell_top1"] == scored["val_top1"]
    assert record["test_cell_top1"] == scored["test_top1"]
    assert record["scoring"]["headline"] == "cell_top1"


@pytest.mark.parametrize(
    ("options", "context", "option", "message"),
    [
        ({}, {"backbone": "resnet20"}, None, "its backbone must be 'nas201'"),
        ({"nas201_table": "t.pth"}, {}, "nas201_table", "add trust_pickle: true only"),
        ({"nas201_table": __file__, "trust_pickle": True}, {"dataset": "digits"},
         None, "set nas201_dataset"),
        ({"nas201_table": "t.pth", "trust_pickle": True}, {}, "nas201_table", "no file at t.pth"),
        ({"retrain_epochs": 0}, {}, "retrain_epochs", "nothing would score the found cell"),
        ({"skeleton_norm": "gn"}, {}, "skeleton_norm", "must be 'bn'"),
    ],
)  # fmt: skip
def test_options_refused_at_validation(options, context, option, message) -> None:
    problems = TASKS.check_options("darts", options, **context)
    # a problem points at its option's line when the suite wrote the option
    assert [p.option for p in problems] == [option], problems
    assert message in problems[0].message


def test_arch_stream_runs_pass_after_pass_and_seeks_where_it_was() -> None:
    stream = arch_stream("digits", batch_size=64, device="cpu", seed=0, val_fraction=0.5)
    per_pass = len(stream.loader)
    straight = [stream.next()[1].clone() for _ in range(per_pass + 2)]  # into the second pass
    assert sum(len(y) for y in straight[:per_pass]) == per_pass * 64
    assert not torch.equal(straight[0], straight[per_pass])  # the next pass, reshuffled
    again = arch_stream("digits", batch_size=64, device="cpu", seed=0, val_fraction=0.5)
    again.seek(per_pass + 1)  # a resumed trial: where the straight one was
    assert torch.equal(again.next()[1], straight[per_pass + 1]) and again.steps == per_pass + 2
    with pytest.raises(DatasetOptionError, match="val_fraction must be > 0"):
        arch_stream("digits", batch_size=64, device="cpu", seed=0, val_fraction=0.0)


def test_the_suite_refuses_a_table_without_trust_in_one_line(capsys, tmp_path) -> None:
    """suites/sabn_nas.yaml as a user points it at the table: without trust_pickle, one line
    naming the option and exit status 2 before Ray starts; nothing of the file is read."""
    from normbench.cli import main

    suite = Path(__file__).resolve().parents[3] / "suites" / "sabn_nas.yaml"
    table = write_table(tmp_path / "NAS-Bench-201-v1_1-096897.pth")
    argv = ["run", str(suite), "--dry-run", "-o", str(tmp_path / "run"), "--set",
            f"task.options.nas201_table={table}", "--set", "resources.cpus=1",
            "--set", "resources.gpus=0"]  # fmt: skip
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and len(err.splitlines()) == 1, err
    assert "task.options.nas201_table" in err and "add trust_pickle: true only" in err
    assert not (tmp_path / "run").exists()
