"""The registered task `generation` through normbench's one training loop: the task contract
(TaskConformance, on digits with a tiny SNGAN), the contract's `build_optimizer` hook (the
loop steps the generator's Adam; the task steps the discriminator's), the options' checks and
the Inception preflight, and the plain norm refused."""

from __future__ import annotations

import functools
from typing import ClassVar

import pytest
import torch

from normbench.engine.probes import norm_layers
from normbench.tasks import TASKS
from normbench.tasks.generation.metrics import FeatureWeightsMissing
from normbench.tasks.generation.models import GenerationError
from normbench.tasks.generation.task import Generation
from normbench.testing import TaskConformance

TINY = {
    "n_critic": 2,
    "g_batch_size": 8,
    "latent_dim": 8,
    "g_width": 8,
    "d_width": 8,
    "samples": 100,
    "isc_splits": 2,
    "ema_decay": 0.5,
    "feature_extractor": "normbench-digits",
}


class TestGeneration(TaskConformance):
    task = "generation"
    options: ClassVar = TINY
    variant = "ccbn"  # branch-indexed, no subclass of torch's norms
    opt_out: ClassVar = {
        "learns": "the generator's loss is adversarial: the discriminator, updated inside "
        "each step, moves it up as the generator moves it down"
    }

    def test_norm_layer_everywhere(self) -> None:
        """Every norm is the trial's variant but the generator's last one, plain BN in both
        arms of the paper (SNGAN's output BN is not class-conditional; SaBN replaces the
        class-conditional ones)."""
        from normbench.variants_api import VARIANTS

        ccbn = VARIANTS.get("ccbn").obj
        norms = dict(norm_layers(self.build().model))
        assert isinstance(norms.pop("generator.b5"), torch.nn.BatchNorm2d)
        assert norms and all(isinstance(m, ccbn) for m in norms.values()), norms


def test_the_declared_norm_widths_are_the_generators() -> None:
    """`norm_widths()` (what validation checks the variant's options at) is the width of every
    class-conditional norm the generator has, here 12, a width the backbone lacks."""
    from normbench.tasks import task_norm_widths

    options = {**TINY, "g_width": 12}
    norms = dict(norm_layers(TestGeneration().build(task_options=options).model))
    norms.pop("generator.b5")  # plain BN in both arms
    (declared,) = task_norm_widths("generation", options).values()
    assert {m.num_features for m in norms.values()} == declared == {12}


def test_the_loop_steps_the_generator_and_the_task_the_discriminator() -> None:
    """One training batch through the loop's pass: the loop's optimiser is the generator's
    Adam (betas from the task), n_critic discriminator steps and one generator step, the
    moving average and the iteration count follow, and the task's state holds the
    discriminator's optimiser, not the generator's."""
    from normbench.engine import distributed, memory
    from normbench.engine.training import Run, train_epoch

    kit = TestGeneration()
    trial = kit.build(limit_batches=1)
    gan = trial.model
    assert isinstance(trial.optimizer, torch.optim.Adam)
    assert trial.optimizer.param_groups[0]["betas"] == (0.0, 0.9)
    assert {id(p) for p in trial.optimizer.param_groups[0]["params"]} == {
        id(p) for p in gan.generator.parameters()
    }
    run = Run(trial, distributed.SINGLE, trial.forward)
    result = train_epoch(run, 1, None, memory.PeakMemory(torch.device("cpu"), lambda: []))
    assert result.diverged is None and set(result.metrics) == {"d_loss"}
    trainer = trial.task.trainer
    d_steps = {int(s["step"]) for s in trainer.optimizers["discriminator"].state.values()}
    g_steps = {int(s["step"]) for s in trial.optimizer.state.values()}
    assert d_steps == {2} and g_steps == {1} and trainer.iteration == 1
    assert all(p.grad is None for p in gan.discriminator.parameters())
    state = trial.task.state_dict()
    assert set(state["optimizers"]) == {"discriminator"} and state["iteration"] == 1


def test_without_gradients_a_step_updates_nothing() -> None:
    """The loop's divergence diagnosis and the statistics recalibration call the step under
    no_grad (on a copy of the model): losses are computed, no parameter moves."""
    import copy

    kit = TestGeneration()
    trial = kit.build()
    batch = next(iter(trial.data.train))
    copy_ = copy.deepcopy(trial.model)
    before = [p.detach().clone() for p in trial.model.parameters()]
    with torch.no_grad():
        step = trial.task.training_step(copy_, batch)
        step_own = trial.task.training_step(trial.forward, batch)
    assert torch.isfinite(step.loss) and torch.isfinite(step_own.loss)
    assert set(step.sums) == {"d_loss"}
    for a, b in zip(before, trial.model.parameters(), strict=True):
        assert torch.equal(a, b)
    assert trial.task.trainer.iteration == 0


def test_options_are_checked_at_their_names(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    problems = Generation.check_options(
        {"n_critic": 0, "beta2": 1.0, "samples": 4, "isc_splits": 10, "g_width": -1,
         "feature_extractor": "normbench-digits"}
    )  # fmt: skip
    assert set(problems) == {"n_critic", "beta2", "isc_splits", "g_width"}
    assert "n_critic must be an integer >= 1" in problems["n_critic"]
    assert (
        "unknown feature extractor 'nope'"
        in Generation.check_options({"feature_extractor": "nope"})["feature_extractor"]
    )
    # the Inception preflight: no weights in an empty hub cache -> one line naming the file
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(FeatureWeightsMissing) as missing:
        Generation.preflight({})
    line = str(missing.value)
    assert "\n" not in line and "weights-inception-2015-12-05-6726825d.pth" in line
    assert str(tmp_path / "checkpoints") in line
    with pytest.raises(FeatureWeightsMissing, match="w.pth is not a file"):
        Generation.preflight({"feature_extractor_weights": str(tmp_path / "w.pth")})
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "weights-inception-2015-12-05-6726825d.pth").write_bytes(b"")
    assert "Inception weights" in Generation.preflight({})
    assert "not comparable" in Generation.preflight({"feature_extractor": "normbench-digits"})
    (tmp_path / "checkpoints" / "weights-inception-2015-12-05-6726825d.pth").unlink()
    with pytest.raises(FeatureWeightsMissing):  # a trial (normbench train) stops at once
        Generation()
    assert not TASKS.check_options("generation", dict(TINY), dataset="digits")


def test_a_plain_norm_is_refused_in_one_line(tmp_path, capsys: pytest.CaptureFixture) -> None:
    """At suite validation (exit status 2 before Ray, at the task's line), when a trial is
    built, and by the generator itself."""
    from pathlib import Path

    from normbench.cli import main
    from normbench.errors import UserError
    from normbench.tasks.generation.models import class_conditional
    from normbench.variants_api import VARIANTS

    suite = Path(__file__).resolve().parents[3] / "suites" / "sabn_gan.yaml"
    with pytest.raises(SystemExit) as exit_:
        main(["run", str(suite), "--dry-run", "--set", "variants=[ccbn, gn]"])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and "\n" not in err
    assert "sabn_gan.yaml:" in err and "variant 'gn' is a plain norm layer" in err
    kit = TestGeneration()
    with pytest.raises(UserError, match="variant .bn. is a plain norm layer"):
        kit.build(variant="bn")
    with pytest.raises(GenerationError, match="variant 'in' is a plain norm layer"):
        class_conditional(functools.partial(VARIANTS.get("in").obj), 10)


def test_run_without_the_inception_weights_stops_in_one_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path, capsys: pytest.CaptureFixture
) -> None:
    """`normbench run suites/sabn_gan.yaml` on a machine without the weights: exit status 2,
    one line naming the file and the folder, before Ray starts, nothing written."""
    from pathlib import Path

    from normbench.cli import main

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    suite = Path(__file__).resolve().parents[3] / "suites" / "sabn_gan.yaml"
    out = tmp_path / "run"
    flags = ["--set", "resources.cpus=1", "--set", "resources.gpus=0"]
    with pytest.raises(SystemExit) as exit_:
        main(["run", str(suite), "-o", str(out), *flags])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and "\n" not in err
    assert "sabn_gan.yaml: task: Inception weights" in err
    assert str(tmp_path / "hub" / "checkpoints") in err and not out.exists()


def test_the_shipped_suite_carries_the_papers_recipe_and_numbers() -> None:
    """suites/sabn_gan.yaml against SaBN's SNGAN scripts and GAN table, written here."""
    from pathlib import Path

    from normbench.suite.loader import load_suite

    suite = load_suite(Path(__file__).resolve().parents[3] / "suites" / "sabn_gan.yaml")
    trials = list(suite.trials())
    assert {t.spec.variant for t in trials} == {"ccbn", "sabn"} and len(trials) == 6
    spec = trials[0].spec
    assert spec.task == "generation" and spec.batch_size == 5 * 64
    opts = spec.task_options
    assert (opts["n_critic"], opts["g_batch_size"], opts["d_lr"]) == (5, 128, 2e-4)
    assert (opts["beta1"], opts["beta2"], opts["ema_decay"]) == (0.0, 0.9, 0.999)
    r = spec.recipe
    assert (r.lr, r.weight_decay, r.schedule, r.warmup_epochs) == (2e-4, 0.0, "constant", 0.0)
    # 50,000 generator iterations at 50,000 // 320 = 156 per epoch
    assert spec.epochs == 321 and (spec.epochs - 1) * 156 < 50_000 <= spec.epochs * 156
    refs = {r["variant"]: r["metrics"] for r in suite.reference}
    assert refs == {"ccbn": {"FID": 10.18, "IS": 8.76}, "sabn": {"FID": 8.97, "IS": 8.89}}
