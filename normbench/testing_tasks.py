"""Reusable conformance tests for tasks (`normbench.testing.TaskConformance`), the way
`VariantConformance` checks a layer: any task, built-in or plugin, runs the contract
(docs/tasks.md#conformance) with a few lines:

    from normbench.testing import TaskConformance

    class TestMyTask(TaskConformance):
        task = "my_task"          # the registry name (or the registered class)
        options = {}              # its options, as a suite's `task: {options: ...}`
        dataset = "digits"        # a data set the task trains on, and a backbone
        backbone = "resnet20"

Each check builds tiny trials through the engine (`build_trial`, `run_trial`: the one loop,
on the CPU, one thread) and checks what the loop relies on:

* the class passes the registry's contract check, and its options pass the option door;
* its metric record keys (`Scoring.keys()`) collide with no other key of a record;
* `norm_layer` is everywhere the model has a norm: every norm layer of the built model (the
  backbone's and the task's own parts') is the trial's variant (`variant`, a layer that is
  no subclass of torch's norms, so a hard-coded `nn.BatchNorm2d` in a head is found);
* `training_step` returns a finite scalar loss with a graph that reaches the parameters, and
  one device scalar per train metric but the loss;
* `evaluate` returns exactly the metrics its scoring measures on the split (None or finite;
  a percent within [0, 100]), and leaves every parameter and buffer as it found them;
* through `run_trial`: the records hold the task's keys (and its `scoring`, unless it is
  classification's), two runs with one seed give the same records, and a run resumed from
  its first epoch's checkpoint gives the uninterrupted records;
* it learns: `learn_steps` SGD steps on one batch lower its training loss below
  `learn_ratio` of the first (opt out with a reason: `opt_out = {"learns": "why"}`).
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch

from normbench.contract import CLASSIFICATION, METRIC_KEYS, RECORD_KEYS, TIMING_KEYS, Scoring
from normbench.spec import Recipe, TrialSpec

OPTIONAL_TASK_CHECKS = ("learns",)


class TaskConformance:
    """Subclass as `TestSomething` and set `task` (and the trial's parts) to run the contract."""

    task: ClassVar[type | str | None] = None
    options: ClassVar[dict[str, Any]] = {}
    dataset: ClassVar[str] = "digits"
    dataset_options: ClassVar[dict[str, Any]] = {"val_fraction": 0.2}
    backbone: ClassVar[str] = "resnet20"
    backbone_options: ClassVar[dict[str, Any]] = {"width": 4}
    # the norm looked for everywhere: a normbench layer, not a subclass of torch's norms
    variant: ClassVar[str] = "rbn"
    variant_options: ClassVar[dict[str, Any]] = {}
    batch_size: ClassVar[int] = 16
    eval_batch_size: ClassVar[int] = 64
    limit_batches: ClassVar[int] = 3
    plugins: ClassVar[tuple[str, ...]] = ()  # plugin files a trial loads (e.g. the task's own)
    learn_steps: ClassVar[int] = 20
    learn_lr: ClassVar[float] = 0.05
    learn_ratio: ClassVar[float] = 0.8
    opt_out: ClassVar[dict[str, str]] = {}  # check name ("learns") -> why it cannot hold

    # -- helpers --------------------------------------------------------------------------
    @pytest.fixture(autouse=True)
    def _threads(self) -> Any:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        yield
        torch.set_num_threads(threads)

    def task_name(self) -> str:
        """The task's registry name (a class is looked up among the registered ones), after
        `plugins` are loaded (again, if a test emptied the registries)."""
        from normbench.registry import load_plugin
        from normbench.tasks import TASKS

        for path in self.plugins:
            load_plugin(path)

        if self.task is None:
            raise TypeError(f"{type(self).__name__}: set the class attribute `task`")
        if isinstance(self.task, str):
            return TASKS.get(self.task).name
        for entry in TASKS.entries():
            if entry.obj is self.task:
                return entry.name
        raise TypeError(
            f"{type(self).__name__}: {self.task!r} is not registered; register it with "
            "@register_task or name its plugin file in `plugins`"
        )

    def task_class(self) -> Any:
        from normbench.tasks import TASKS

        return TASKS.get(self.task_name()).obj

    @property
    def scoring(self) -> Scoring:
        scoring: Scoring = self.task_class().scoring
        return scoring

    def spec(self, **changes: Any) -> TrialSpec:
        """A tiny trial of the task: 2 epochs of `limit_batches` batches on the CPU."""
        spec = TrialSpec(
            variant=self.variant,
            variant_options=dict(self.variant_options),
            backbone=self.backbone,
            backbone_options=dict(self.backbone_options),
            dataset=self.dataset,
            dataset_options=dict(self.dataset_options),
            task=self.task_name(),
            task_options=dict(self.options),
            epochs=2,
            batch_size=self.batch_size,
            eval_batch_size=self.eval_batch_size,
            recipe=Recipe(lr=0.02, weight_decay=0.0),
            limit_batches=self.limit_batches,
            probe_batch_size=4,
            device="cpu",
            num_threads=1,
            plugins=tuple(str(Path(p).resolve()) for p in self.plugins),
        )
        return spec.replace(**changes)

    def build(self, **changes: Any) -> Any:
        from normbench.engine.build import build_trial

        return build_trial(self.spec(**changes))

    def skip_if_opted_out(self, check: str) -> None:
        reason = self.opt_out.get(check)
        if reason is not None:
            if check not in OPTIONAL_TASK_CHECKS or not str(reason).strip():
                raise TypeError(
                    f"{type(self).__name__}.opt_out must map {list(OPTIONAL_TASK_CHECKS)} to "
                    f"a non-empty reason, but got {check!r}: {reason!r}"
                )
            pytest.skip(f"{self.task_name()} opts out of {check}: {reason}")

    # -- the contract ---------------------------------------------------------------------
    def test_registered_and_options_pass(self) -> None:
        from normbench.tasks import TASKS
        from normbench.tasks.registry import task_problem

        assert task_problem(self.task_class()) is None, task_problem(self.task_class())
        problems = TASKS.check_options(
            self.task_name(), dict(self.options), dataset=self.dataset, backbone=self.backbone
        )
        assert not problems, [p.message for p in problems]

    def test_cost_is_a_task_cost_or_a_reason(self) -> None:
        """The dry run's estimate: `cost(options)`, when the task has it, answers with a
        TaskCost (forwards per image, >= 0) or a sentence saying why it cannot."""
        from normbench.tasks.registry import task_cost

        if not callable(getattr(self.task_class(), "cost", None)):
            pytest.skip(f"{self.task_name()} has no cost hook: the dry run gives no estimate")
        cost = task_cost(
            self.task_name(), dict(self.options), variant=self.variant,
            variant_options=dict(self.variant_options), backbone=self.backbone,
            dataset=self.dataset,
        )  # fmt: skip
        assert not str(cost).startswith("gave no TaskCost"), cost

    def test_metric_keys_are_free(self) -> None:
        taken = (RECORD_KEYS - set(METRIC_KEYS) - {"scoring"}) | set(TIMING_KEYS)
        keys = self.scoring.keys()
        assert len(set(keys)) == len(keys), keys
        assert not taken & set(keys), f"metric keys collide with record keys: {taken & set(keys)}"

    def test_norm_layer_everywhere(self) -> None:
        from normbench.engine.probes import norm_layers
        from normbench.variants_api import VARIANTS

        cls = VARIANTS.get(self.variant).obj
        norms = list(norm_layers(self.build().model))
        assert norms, "the model has no norm layer"
        others = [f"{name} ({type(m).__name__})" for name, m in norms if not isinstance(m, cls)]
        assert not others, f"norms the trial's variant {self.variant!r} did not replace: {others}"
        self._widths_are_known(norms)

    def _widths_are_known(self, norms: list[tuple[str, Any]]) -> None:
        """Every norm's width is one of the backbone's or one the task declares
        (`norm_widths()`), so suite validation checks the variant's options at each."""
        from normbench.models.registry import norm_widths
        from normbench.options import freeze
        from normbench.tasks import task_norm_widths

        backbone = norm_widths(self.backbone, freeze(self.backbone_options), False)
        declared = task_norm_widths(self.task_name(), dict(self.options)).values()
        known = set(backbone).union(*declared)
        unknown = {n: m.num_features for n, m in norms if getattr(m, "num_features", 0) not in known
                   and isinstance(getattr(m, "num_features", None), int)}  # fmt: skip
        assert not unknown, (
            f"norms of widths the backbone does not have ({sorted(backbone)}) and the task does "
            f"not declare in norm_widths() (docs/tasks.md): {unknown}"
        )

    def test_training_step(self) -> None:
        trial = self.build()
        trial.model.train()
        batch = next(iter(trial.data.train))
        step = trial.task.training_step(trial.forward, batch)
        loss = step.loss
        assert isinstance(loss, torch.Tensor) and loss.ndim == 0, "the loss must be a scalar"
        assert loss.requires_grad and bool(torch.isfinite(loss)), f"loss {loss}"
        loss.backward()
        grads = [p.grad for p in trial.model.parameters() if p.grad is not None]
        assert grads, "the loss's graph reaches no parameter"
        assert all(bool(torch.isfinite(g).all()) for g in grads)
        want = {m.name for m in self.scoring.on("train")[1:]}
        assert set(step.sums) == want, f"train sums {sorted(step.sums)}, scoring {sorted(want)}"
        for name, value in step.sums.items():
            assert isinstance(value, torch.Tensor) and value.numel() == 1, name
            assert bool(torch.isfinite(value)), name

    def test_evaluate_reports_its_metrics_and_leaves_the_model(self) -> None:
        from normbench.engine.loop import evaluate

        trial = self.build()
        before = copy.deepcopy(trial.model.state_dict())
        for split in ("val", "test"):
            loader = getattr(trial.data, split)
            if loader is None:
                continue
            values = evaluate(trial, loader, split=split)
            assert set(values) == {m.name for m in self.scoring.on(split)}, values
            for m in self.scoring.on(split):
                value = values[m.name]
                assert value is None or (isinstance(value, float) and math.isfinite(value))
                if value is not None and m.unit == "%":
                    assert 0.0 <= value <= 100.0, (m.name, value)
        assert trial.model.training, "evaluate must hand the model back in training mode"
        after = trial.model.state_dict()
        changed = [k for k in before if not torch.equal(before[k], after[k])]
        assert not changed, f"evaluation changed {changed}"

    def test_records_through_the_loop(self, tmp_path: Path) -> None:
        from normbench.contract import scoring_of
        from normbench.engine.loop import run_trial

        spec = self.spec()
        straight = [_strip(r) for r in run_trial(spec, checkpoint_dir=tmp_path / "a")]
        assert [r["epoch"] for r in straight] == [1, 2]
        assert {r["status"] for r in straight} == {"ok"}
        for record in straight:
            assert set(self.scoring.keys()) <= set(record)
            assert ("scoring" in record) == (self.scoring != CLASSIFICATION)
            assert scoring_of(record) == self.scoring
            assert record["train_loss"] is not None
            # the headline is defined on test; another metric may not be (COCO's APl
            # without large objects)
            assert record[f"test_{self.scoring.headline}"] is not None
        # the same seed gives the same records; a resume gives the uninterrupted ones
        again = iter(run_trial(spec, checkpoint_dir=tmp_path / "b"))
        first = _strip(next(again))
        del again  # stopped after epoch 1, its checkpoint saved
        rest = [_strip(r) for r in run_trial(spec, checkpoint_dir=tmp_path / "b")]
        assert [first, *rest] == straight

    def test_learns(self) -> None:
        self.skip_if_opted_out("learns")
        trial = self.build()
        trial.model.train()
        batch = next(iter(trial.data.train))
        opt = torch.optim.SGD(trial.model.parameters(), lr=self.learn_lr, momentum=0.9)
        losses = []
        for _ in range(self.learn_steps):
            step = trial.task.training_step(trial.forward, batch)
            opt.zero_grad(set_to_none=True)
            step.loss.backward()
            opt.step()
            losses.append(float(step.loss.detach()))
        assert losses[-1] < self.learn_ratio * losses[0], losses


def _strip(record: Any) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k not in TIMING_KEYS}
