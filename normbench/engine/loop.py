"""`run_trial`: the only training loop. It yields one record per epoch (`normbench.contract`).

One epoch: train (at most `limit_batches` batches, lr stepped per batch), call `end_epoch()` on
every submodule that has it, check the weights, evaluate val and test, probe condensation and
collect `diagnostics()`, save the checkpoint atomically, then yield the record.

Every task goes through this loop (docs/tasks.md): the trial's task gives each batch's loss
(`training_step`) and each split's metrics (`evaluate`); the record holds them as
`{split}_{metric}` keys (`Scoring.keys()`), and a task other than classification adds its
`scoring`. The best epoch a checkpoint remembers is chosen on the headline metric on val.

Determinism: everything is seeded from `spec.seed`, and the checkpoint carries the RNG states,
so on a CPU two runs with one seed, or a run resumed from any checkpoint, yield the same
records apart from the timing keys (`TIMING_KEYS`).

Timing keys: `train_time_s` is the training pass alone (`images_per_s` = training images /
`train_time_s`); `epoch_time_s` is the whole epoch (training, hooks, evaluation, probes);
`elapsed_s` sums `epoch_time_s` over all epochs so far, across resumes. `peak_mem_mb` is the
trial's own peak (`normbench.engine.memory`: CUDA's allocator peak from the trial's second
step on, or on a CPU a profiled training step), and `peak_mem_method` says which. `lr` is the
rate the epoch's last training batch used.

Divergence: a non-finite training loss stops the epoch, and the optimiser never steps on it;
a non-finite parameter or buffer after an epoch has the same effect. Either way the trial
yields one last record with `status="diverged"`, `diverged_epoch` and `diverged_reason`, its
metrics set to None, and ends without raising. (Any other non-finite number in a record, e.g.
a layer diagnostic, is also written as None: records are strict JSON.)

No host sync per step: the training pass (`normbench.engine.training`) checks losses on the
device and reads the check every `Runtime.check_every` steps, and evaluation sums stay on the
device until the end of a split.

Compile (`compile: true`): the trial fails with Dynamo's reason rather than run eagerly (no
graph after its first step, or the recompile limit hit), and each record counts the graphs
compiled and graph breaks met since the trial started in this process (`compile_graphs`,
`compile_graph_breaks`; None without compile).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from normbench.contract import CLASSIFICATION, METRIC_KEYS, TIMING_KEYS, EpochRecord, Scoring
from normbench.engine import checkpoint as ckpt
from normbench.engine import distributed, memory, probes
from normbench.engine.build import Trial, build_trial
from normbench.engine.device import environment_difference
from normbench.engine.revisions import revisions
from normbench.engine.training import (
    BatchCallback,
    CompileError,
    Run,
    TrainResult,
    compile_record,
    non_finite_state,
    train_epoch,
)
from normbench.spec import TrialSpec

# the record keys come from normbench.contract (classification's: METRIC_KEYS)
__all__ = ["METRIC_KEYS", "TIMING_KEYS", "CompileError", "run_trial"]


@dataclass
class _State:
    """What a checkpoint carries besides the module and optimiser states."""

    epoch: int = 0  # finished epochs
    elapsed_s: float = 0.0
    status: str = "ok"
    best: dict[str, Any] = field(default_factory=dict)
    records: list[dict[str, Any]] = field(default_factory=list)


def run_trial(
    spec: TrialSpec,
    *,
    checkpoint_dir: str | Path | None = None,
    on_batch: BatchCallback | None = None,
) -> Iterator[EpochRecord]:
    """Train `spec`, yielding one `EpochRecord` per epoch; resume from `checkpoint_dir` if any.

    A resumed trial yields only the epochs after its checkpoint (with `checkpoint_every` > 1
    that can repeat epochs the caller already saw: key records by epoch). A finished or
    diverged checkpoint yields nothing; `checkpoint.read_records` returns its records.

    `on_batch`, when given, is called after every training batch with a small progress dict
    (epoch, batch, batches, loss, top1, images_per_s) for live displays.
    """
    spec.validate()
    par = distributed.setup(spec)
    payload = None
    if checkpoint_dir is not None:
        payload = ckpt.load_checkpoint(checkpoint_dir, trial_id=spec.trial_id)
    if payload is not None and (payload["status"] != "ok" or payload["epoch"] >= spec.epochs):
        return  # finished or diverged: nothing to build
    trial = build_trial(spec, shard=par.shard, run_trial=run_trial)
    if payload is not None:
        _check_environment(spec, payload, trial.runtime.environment())
    state = _restore(trial, payload, par.rank) if payload is not None else _State()
    meter = _memory_meter(trial)
    run = Run(trial, par, par.wrap(trial.model, trial.forward))
    for epoch in range(state.epoch + 1, spec.epochs + 1):
        started = time.perf_counter()
        record = _run_epoch(run, epoch, on_batch, meter)
        record["epoch_time_s"] = time.perf_counter() - started
        state.elapsed_s += record["epoch_time_s"]
        record["elapsed_s"] = state.elapsed_s
        record = _finite_or_none(record)
        _update_state(state, record, epoch, trial.task.scoring)
        if checkpoint_dir is not None and _should_save(spec, epoch, record):
            rng = par.gather(ckpt.rng_state(trial.runtime.device))  # every rank takes part
            if par.writer:
                ckpt.save_checkpoint(checkpoint_dir, _payload(trial, state, rng))
        yield cast(EpochRecord, record)
        if record["status"] != "ok":
            return


class EnvironmentChangedError(ckpt.CheckpointError):
    """A checkpoint written in another execution environment (threads, device, versions)."""


def _check_environment(spec: TrialSpec, payload: dict[str, Any], now: dict[str, Any]) -> None:
    diff = environment_difference(payload.get("environment"), now)
    if diff:
        raise EnvironmentChangedError(
            f"trial {spec.trial_id} cannot resume in a different environment ({diff}): its "
            "finished epochs would mix with epochs computed differently; rerun with the original "
            "settings, or run it into another --output"
        )


def _finite_or_none(value: Any) -> Any:
    """The record with every NaN/inf float replaced by None, so it is strict JSON."""
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _update_state(state: _State, record: dict[str, Any], epoch: int, scoring: Scoring) -> None:
    """The epoch's record kept, and the best epoch so far by the headline metric on val."""
    state.epoch = epoch
    state.status = record["status"]
    state.records.append(record)
    val_key, test_key = f"val_{scoring.headline}", f"test_{scoring.headline}"
    val = record.get(val_key)
    sign = 1.0 if scoring.best.higher_is_better else -1.0
    if val is not None and sign * val > sign * state.best.get(val_key, -sign * math.inf):
        state.best = {val_key: val, "epoch": epoch, test_key: record.get(test_key)}


def _should_save(spec: TrialSpec, epoch: int, record: dict[str, Any]) -> bool:
    last = epoch == spec.epochs or record["status"] != "ok"
    return last or epoch % spec.checkpoint_every == 0


def _run_epoch(
    run: Run, epoch: int, on_batch: BatchCallback | None, meter: memory.PeakMemory
) -> dict[str, Any]:
    """Train, end-of-epoch hooks, checks, evaluation and probes for one epoch."""
    trial = run.trial
    result = train_epoch(run, epoch, on_batch, meter)
    run.par.sync_buffers(trial.model)  # rank 0's running statistics everywhere
    if result.diverged is None:
        _end_epoch(trial.model)
        result.diverged = non_finite_state(trial.model)
    record = _base_record(trial, epoch, result)
    record.update(peak_mem_mb=meter.mb(), peak_mem_method=meter.method)
    record.update(compile_record(trial))
    if result.diverged is not None:
        record.update(status="diverged", diverged_epoch=epoch, diverged_reason=result.diverged)
        return record
    for split in ("val", "test"):
        values = evaluate(trial, getattr(trial.data, split, None), run.par, split=split)
        record.update(
            {f"{split}_{m.name}": values.get(m.name) for m in trial.task.scoring.on(split)}
        )
    record["condensation"] = _condensation(trial)
    record["diagnostics"] = probes.diagnostics(trial.model)
    record.update(compile_record(trial))  # after evaluation compiled its graph
    return record


def _base_record(trial: Trial, epoch: int, result: TrainResult) -> dict[str, Any]:
    scoring: Scoring = trial.task.scoring
    record: dict[str, Any] = {"epoch": epoch, "status": "ok"}
    record.update(dict.fromkeys(scoring.keys()))
    record["train_loss"] = result.loss
    record.update({f"train_{m.name}": result.metrics.get(m.name) for m in scoring.on("train")[1:]})
    record.update(
        lr=result.lr,
        epoch_time_s=None,  # set by run_trial once evaluation and probes are done
        train_time_s=result.seconds,
        images_per_s=result.images / result.seconds if result.seconds > 0 else None,
        peak_mem_mb=None,  # set by _run_epoch from the trial's memory meter
        peak_mem_method=None,
        elapsed_s=None,
        params=trial.params,
        devices=trial.spec.devices,
        optimizer_batch_size=trial.spec.devices * trial.spec.batch_size,
        device=str(trial.runtime.device),
        environment=trial.runtime.environment(),
        revisions=revisions(trial.spec),
        variant_source=trial.variant_source,
        condensation={},
        diagnostics={},
    )
    if scoring != CLASSIFICATION:  # a reader takes classification's scoring without one
        record["scoring"] = scoring.to_dict()
    return record


def _end_epoch(model: nn.Module) -> None:
    """Call `end_epoch()` once on every submodule that has it (UBN's epoch-level decision)."""
    for module in model.modules():
        hook = getattr(module, "end_epoch", None)
        if callable(hook):
            hook()


@dataclass(frozen=True)
class _EvalContext:
    """`normbench.tasks.EvalContext` from the trial's runtime and its data-parallel ranks."""

    runtime: Any  # normbench.engine.device.Runtime
    par: distributed.Parallel
    split: str | None = None

    @property
    def device(self) -> torch.device:
        return self.runtime.device

    def autocast(self) -> Any:
        return self.runtime.autocast()

    def inputs(self, x: Any) -> Any:
        return self.runtime.to_input(x) if isinstance(x, torch.Tensor) else x

    def all_sum(self, t: torch.Tensor) -> torch.Tensor:
        return self.par.all_sum(t)

    def gather(self, obj: Any) -> list[Any]:
        return self.par.gather(obj)


@torch.no_grad()
def evaluate(
    trial: Trial, loader: Any, par: distributed.Parallel | None = None, *, split: str | None = None
) -> dict[str, float | None]:
    """The task's metrics of the model in eval mode on `loader` ({metric name: value}, e.g.
    classification's loss, top1 and top5); {} without a loader.

    With DDP (`par`) each rank's loader serves its batches (every N-th, `Parallel.shard`) and
    the task sums (or gathers) over ranks through its context."""
    if loader is None:
        return {}
    model = trial.model
    model.eval()
    try:
        ctx = _EvalContext(trial.runtime, par or distributed.SINGLE, split)
        return dict(trial.task.evaluate(trial.forward, loader, ctx))
    finally:
        model.train()


def _condensation(trial: Trial) -> dict[str, float]:
    probe = trial.probe
    if probe is None:
        return {}
    x = trial.runtime.to_input(probe) if isinstance(probe, torch.Tensor) else probe
    return probes.condensation(trial.model, x, trial.runtime.autocast())


def _memory_meter(trial: Trial) -> memory.PeakMemory:
    """The trial's peak-memory meter, started (see `normbench.engine.memory`)."""
    meter = memory.PeakMemory(
        trial.runtime.device, lambda: memory.trial_tensors(trial.model, trial.optimizer)
    )
    meter.start()
    return meter


def _payload(trial: Trial, state: _State, rng: list[dict[str, Any]]) -> dict[str, Any]:
    """The checkpoint; `rng` holds every rank's RNG states, in rank order."""
    return {
        "trial_id": trial.spec.trial_id,
        "spec": trial.spec.to_dict(),
        "epoch": state.epoch,
        "status": state.status,
        "elapsed_s": state.elapsed_s,
        "best": state.best,
        "records": state.records,
        "model": trial.model.state_dict(),
        "optimizer": trial.optimizer.state_dict(),
        "scheduler": trial.scheduler.state_dict(),
        "rng": rng,
        "environment": trial.runtime.environment(),
        **_task_state(trial.task),
    }


def _task_state(task: Any) -> dict[str, Any]:
    """A task's own training state, when it keeps one (`state_dict()`, e.g. a GAN's second
    optimiser or a NAS controller; docs/tasks.md): saved beside the model's."""
    state = getattr(task, "state_dict", None)
    return {"task": state()} if callable(state) else {}


def _restore(trial: Trial, payload: dict[str, Any], rank: int) -> _State:
    """Load a checkpoint into the built trial (this rank's RNG states) and return the loop
    state it carried."""
    trial.model.load_state_dict(payload["model"])
    fused = trial.optimizer.defaults.get("fused")
    trial.optimizer.load_state_dict(payload["optimizer"])
    for group in trial.optimizer.param_groups:  # the saved groups carry the saver's choice
        group["fused"] = fused
    trial.scheduler.load_state_dict(payload["scheduler"])
    if "task" in payload:
        trial.task.load_state_dict(payload["task"])
    ckpt.set_rng_state(ckpt.rank_rng_state(payload["rng"], rank), trial.runtime.device)
    return _State(
        epoch=int(payload["epoch"]),
        elapsed_s=float(payload["elapsed_s"]),
        status=str(payload["status"]),
        best=dict(payload["best"]),
        records=list(payload["records"]),
    )
