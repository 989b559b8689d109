"""`run_trial` end to end on tiny synthetic data: determinism, resume, divergence, hooks,
and that the data is actually learned."""

from __future__ import annotations

from pathlib import Path

import pytest

from normbench.contract import RECORD_KEYS, REQUIRED_RECORD_KEYS
from normbench.engine.loop import TIMING_KEYS, run_trial
from normbench.spec import Recipe, TrialSpec
from normbench.variants_api import VARIANTS

PLUGIN = str(Path(__file__).with_name("plugin_tiny.py"))
DATA = {"image_size": 8, "n_train": 200, "n_test": 64, "noise": 20.0}


def tiny(variant: str = "bn", **changes) -> TrialSpec:
    base = TrialSpec(
        variant=variant,
        backbone="engine_tinynet",
        dataset="synthetic",
        epochs=3,
        batch_size=16,
        seed=3,
        dataset_options=DATA,
        recipe=Recipe(lr=0.05, warmup_epochs=1, milestones=(2,)),
        device="cpu",
        limit_batches=3,
        eval_batch_size=64,
        probe_batch_size=8,
        plugins=(PLUGIN,),
        num_threads=1,
    )
    return base.replace(**changes)


def strip(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in records]


def test_same_seed_same_records_and_keys() -> None:
    spec = tiny("ubn", variant_options={"decide": "epoch"})
    a, b = list(run_trial(spec)), list(run_trial(spec))
    assert strip(a) == strip(b)
    assert [r["epoch"] for r in a] == [1, 2, 3] and {r["status"] for r in a} == {"ok"}
    assert REQUIRED_RECORD_KEYS <= set(a[0]) <= RECORD_KEYS  # the keys of normbench.contract
    assert set(a[0]["condensation"]) == {"1", "4"}  # the two norm layers of the tiny net
    assert set(a[0]["diagnostics"]) == {"1", "4"}  # UBN reports its diagnostics
    assert a[0]["variant_source"] == "built-in" and a[0]["device"] == "cpu"
    other = strip(list(run_trial(spec.replace(seed=4))))
    assert other != strip(a)


def test_resume_gives_the_uninterrupted_records(tmp_path) -> None:
    spec = tiny("ubn")
    straight = list(run_trial(spec, checkpoint_dir=tmp_path / "straight"))
    gen = run_trial(spec, checkpoint_dir=tmp_path / "resumed")
    first = next(gen)
    gen.close()  # interrupted after epoch 1 (its checkpoint was written before the yield)
    rest = list(run_trial(spec, checkpoint_dir=tmp_path / "resumed"))
    assert [r["epoch"] for r in rest] == [2, 3]
    assert strip([first, *rest]) == strip(straight)
    assert rest[-1]["elapsed_s"] >= first["elapsed_s"]  # carried over the resume
    assert list(run_trial(spec, checkpoint_dir=tmp_path / "resumed")) == []  # finished


def test_end_epoch_called_once_per_epoch_after_training() -> None:
    calls = None
    records = list(run_trial(tiny("engine_counting_bn")))
    calls = VARIANTS.get("engine_counting_bn").obj.CALLS[-6:]  # 2 layers x 3 epochs
    assert len(records) == 3
    by_layer: dict[int, list[int]] = {}
    for layer, forwards in calls:
        by_layer.setdefault(layer, []).append(forwards)
    assert len(by_layer) == 2
    for forwards in by_layer.values():
        assert forwards == [3, 6, 9]  # after each epoch's 3 training batches, once


def test_non_finite_loss_diverges_at_that_epoch_without_raising() -> None:
    # 3 training batches per epoch: the 7th training forward is batch 1 of epoch 3
    records = list(run_trial(tiny("engine_inf_norm", variant_options={"blow_at": 7})))
    assert [r["status"] for r in records] == ["ok", "ok", "diverged"]
    last = records[-1]
    assert last["diverged_epoch"] == 3 and "batch 1 of epoch 3" in last["diverged_reason"]
    # the cause names the quantity and the first layer whose output was not finite
    assert "first non-finite output: " in last["diverged_reason"]
    assert "(InfNorm)" in last["diverged_reason"]
    assert last["test_top1"] is None and last["train_loss"] is None


def test_non_finite_weights_after_an_epoch_diverge(tmp_path) -> None:
    spec = tiny("engine_counting_bn", variant_options={"poison_at_epoch": 2})
    records = list(run_trial(spec, checkpoint_dir=tmp_path))
    assert [r["status"] for r in records] == ["ok", "diverged"]
    assert records[-1]["diverged_epoch"] == 2 and ".weight" in records[-1]["diverged_reason"]
    assert list(run_trial(spec, checkpoint_dir=tmp_path)) == []  # a diverged trial stays ended


def test_huge_lr_diverges_cleanly() -> None:
    records = list(run_trial(tiny(recipe=Recipe(lr=1e6), epochs=4)))
    assert records[-1]["status"] == "diverged"
    assert records[-1]["diverged_epoch"] == records[-1]["epoch"]
    assert all(r["status"] == "ok" for r in records[:-1])


def test_synthetic_data_is_learned() -> None:
    spec = tiny(
        epochs=6,
        limit_batches=None,
        dataset_options={**DATA, "n_train": 400},
        backbone_options={"width": 16},
        recipe=Recipe(lr=0.1, warmup_epochs=1, schedule="cosine"),
        probe=False,
    )
    records = list(run_trial(spec))
    assert records[-1]["condensation"] == {}
    assert records[-1]["test_top1"] > 60.0  # 10 classes: chance is 10%


def test_bad_spec_is_a_user_error() -> None:
    from normbench.errors import UserError

    with pytest.raises(UserError, match=r"epochs must be an integer in \[1, 10000\]"):
        next(run_trial(tiny(epochs=0)))
    with pytest.raises(UserError, match="unknown variant"):
        next(run_trial(tiny("no_such_norm")))


def test_environment_in_every_record_and_a_resume_elsewhere_is_refused(tmp_path: Path) -> None:
    """The thread count (like device, dtype and versions) is recorded, and a trial never
    resumes from a checkpoint written with another one: one line naming the difference."""
    from normbench.engine.loop import EnvironmentChangedError

    longer = tiny(epochs=3)
    ckpt = list(run_trial(longer))  # uninterrupted
    env = ckpt[0]["environment"]
    assert env["num_threads"] == 1 and env["device_type"] == "cpu"
    assert env["dtype"] == "float32" and env["torch"] and "deterministic_algorithms" in env
    assert {r["environment"]["num_threads"] for r in ckpt} == {1}
    # A 3-epoch trial killed after epoch 2 (its checkpoint), resumed with 2 threads.
    stopped = list(zip(range(2), run_trial(longer, checkpoint_dir=tmp_path / "c"), strict=False))
    assert len(stopped) == 2
    with pytest.raises(EnvironmentChangedError) as exc:
        list(run_trial(longer.replace(num_threads=2), checkpoint_dir=tmp_path / "c"))
    msg = str(exc.value)
    assert "\n" not in msg and f"trial {longer.trial_id} cannot resume" in msg
    assert "num_threads=1 then, 2 now" in msg
    # Same environment: it resumes and ends exactly like the uninterrupted run.
    resumed = list(run_trial(longer, checkpoint_dir=tmp_path / "c"))
    assert strip(resumed) == strip(ckpt[2:])
