"""`run_trial`: the only training loop. It yields one record per epoch (`normbench.contract`).

One epoch: train (at most `limit_batches` batches, lr stepped per batch), call `end_epoch()` on
every submodule that has it, check the weights, evaluate val and test, probe condensation and
collect `diagnostics()`, save the checkpoint atomically, then yield the record.

Determinism: everything is seeded from `spec.seed`, and the checkpoint carries the RNG states,
so on a CPU two runs with one seed, or a run resumed from any checkpoint, yield the same
records apart from the timing keys (`TIMING_KEYS`).

Timing keys: `train_time_s` is the training pass alone (`images_per_s` = training images /
`train_time_s`); `epoch_time_s` is the whole epoch (training, hooks, evaluation, probes);
`elapsed_s` sums `epoch_time_s` over all epochs so far, across resumes. `peak_mem_mb` is the
trial's own peak (`normbench.engine.memory`: CUDA's allocator peak since the trial started, or
on a CPU a profiled training step), and `peak_mem_method` says which. `lr` is the rate the
epoch's last training batch used.

Divergence: a non-finite training loss stops the epoch before the optimiser steps on it; a
non-finite parameter or buffer after an epoch has the same effect. Either way the trial yields
one last record with `status="diverged"`, `diverged_epoch` and `diverged_reason`, its metrics
set to None, and ends without raising. (Any other non-finite number in a record, e.g. a
layer diagnostic, is also written as None: records are strict JSON.)
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from normbench.contract import METRIC_KEYS, TIMING_KEYS, EpochRecord
from normbench.engine import checkpoint as ckpt
from normbench.engine import distributed, memory, probes
from normbench.engine.build import Trial, build_trial
from normbench.engine.device import environment_difference, synchronize
from normbench.engine.recipe import current_lr
from normbench.spec import TrialSpec

__all__ = ["METRIC_KEYS", "TIMING_KEYS", "run_trial"]  # the record keys: normbench.contract

BatchCallback = Callable[[dict[str, Any]], None]


@dataclass
class _State:
    """What a checkpoint carries besides the module and optimiser states."""

    epoch: int = 0  # finished epochs
    elapsed_s: float = 0.0
    status: str = "ok"
    best: dict[str, Any] = field(default_factory=dict)
    records: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class _TrainResult:
    loss: float | None
    top1: float | None
    images: int
    seconds: float
    lr: float
    diverged: str | None = None  # why, when it diverged


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
    trial = build_trial(spec, shard=par.shard)
    if payload is not None:
        _check_environment(spec, payload, trial.runtime.environment())
    state = _restore(trial, payload) if payload is not None else _State()
    meter = _memory_meter(trial)
    run = _Run(trial, par, par.wrap(trial.model, trial.forward))
    for epoch in range(state.epoch + 1, spec.epochs + 1):
        started = time.perf_counter()
        record = _run_epoch(run, epoch, on_batch, meter)
        record["epoch_time_s"] = time.perf_counter() - started
        state.elapsed_s += record["epoch_time_s"]
        record["elapsed_s"] = state.elapsed_s
        record = _finite_or_none(record)
        _update_state(state, record, epoch)
        if checkpoint_dir is not None and par.writer and _should_save(spec, epoch, record):
            ckpt.save_checkpoint(checkpoint_dir, _payload(trial, state))
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


def _update_state(state: _State, record: dict[str, Any], epoch: int) -> None:
    state.epoch = epoch
    state.status = record["status"]
    state.records.append(record)
    val = record.get("val_top1")
    if val is not None and val > state.best.get("val_top1", -math.inf):
        state.best = {"val_top1": val, "epoch": epoch, "test_top1": record.get("test_top1")}


def _should_save(spec: TrialSpec, epoch: int, record: dict[str, Any]) -> bool:
    last = epoch == spec.epochs or record["status"] != "ok"
    return last or epoch % spec.checkpoint_every == 0


@dataclass
class _Run:
    """A trial as this process trains it: `train_forward` is what a training step calls (the
    DDP wrapper or the virtual-device split); `trial.forward` evaluates."""

    trial: Trial
    par: distributed.Parallel
    train_forward: nn.Module


def _run_epoch(
    run: _Run, epoch: int, on_batch: BatchCallback | None, meter: memory.PeakMemory
) -> dict[str, Any]:
    """Train, end-of-epoch hooks, checks, evaluation and probes for one epoch."""
    trial = run.trial
    result = _train_epoch(run, epoch, on_batch, meter)
    run.par.sync_buffers(trial.model)  # rank 0's running statistics everywhere
    if result.diverged is None:
        _end_epoch(trial.model)
        result.diverged = _non_finite_state(trial.model)
    record = _base_record(trial, epoch, result)
    record.update(peak_mem_mb=meter.mb(), peak_mem_method=meter.method)
    if result.diverged is not None:
        record.update(status="diverged", diverged_epoch=epoch, diverged_reason=result.diverged)
        return record
    for split in ("val", "test"):
        loss, top1, top5 = evaluate(trial, getattr(trial.data, split, None), run.par)
        record.update({f"{split}_loss": loss, f"{split}_top1": top1, f"{split}_top5": top5})
    record["condensation"] = _condensation(trial)
    record["diagnostics"] = probes.diagnostics(trial.model)
    return record


def _base_record(trial: Trial, epoch: int, result: _TrainResult) -> dict[str, Any]:
    record: dict[str, Any] = {"epoch": epoch, "status": "ok"}
    record.update(dict.fromkeys(METRIC_KEYS))
    record.update(
        train_loss=result.loss,
        train_top1=result.top1,
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
        variant_source=trial.variant_source,
        condensation={},
        diagnostics={},
    )
    return record


def _train_epoch(
    run: _Run, epoch: int, on_batch: BatchCallback | None, meter: memory.PeakMemory
) -> _TrainResult:
    """One pass over the training loader; stops before stepping on a non-finite loss.

    With DDP the loader serves this rank's slice of each optimiser batch (`Parallel.shard`);
    the loss (so the divergence check) and the hits are summed over ranks, and the image
    counts are those of the optimiser batch.
    """
    trial, par = run.trial, run.par
    rt = trial.runtime
    trial.model.train()
    trial.data.train.set_epoch(epoch - 1)
    loss_sum, seen = 0.0, 0
    correct = torch.zeros((), dtype=torch.int64, device=rt.device)
    lr = current_lr(trial.optimizer)
    synchronize(rt.device)
    start = time.perf_counter()
    for i, (x, y) in enumerate(trial.data.train):
        if i >= trial.batches_per_epoch:
            break
        lr = current_lr(trial.optimizer)  # the lr this batch trains with
        images = int(y.shape[0]) * par.ranks  # every rank holds as many
        x = rt.to_input(x)
        with meter.step():
            loss, logits = _train_step(run, x, y)
        if loss is None:
            why = f"non-finite training loss at batch {i + 1} of epoch {epoch}"
            why += f"; {_non_finite_source(trial, x)}"
            return _TrainResult(None, None, seen, time.perf_counter() - start, lr, why)
        loss_sum, seen = loss_sum + loss * images, seen + images
        correct += (logits.argmax(dim=1) == y).sum()
        if on_batch is not None:
            on_batch(_progress(epoch, i, trial, loss_sum, int(correct), seen, start))
    synchronize(rt.device)
    seconds = meter.training_seconds(time.perf_counter() - start)
    correct = par.all_sum(correct)
    if seen == 0:
        return _TrainResult(None, None, 0, seconds, lr, "the training loader yielded no batch")
    return _TrainResult(loss_sum / seen, 100.0 * int(correct) / seen, seen, seconds, lr)


def _progress(
    epoch: int, i: int, trial: Trial, loss_sum: float, correct: int, seen: int, start: float
) -> dict[str, Any]:
    """The live-display numbers after batch i (0-based) of an epoch."""
    elapsed = time.perf_counter() - start
    return {
        "epoch": epoch,
        "epochs": trial.spec.epochs,
        "batch": i + 1,
        "batches": trial.batches_per_epoch,
        "loss": loss_sum / seen,
        "top1": 100.0 * correct / seen,
        "images_per_s": seen / elapsed if elapsed > 0 else 0.0,
    }


def _train_step(run: _Run, x: torch.Tensor, y: torch.Tensor) -> tuple[float | None, Any]:
    """Forward, backward and (only for a finite loss) an optimiser and scheduler step.

    The returned loss is the mean over the optimiser batch (all ranks agree on it)."""
    trial = run.trial
    with trial.runtime.autocast(), run.par.statistics():
        logits = run.train_forward(x)
    loss = trial.criterion(logits.float(), y)
    trial.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    # one sync per batch: the divergence check needs it
    value = float(run.par.all_sum(loss.detach())) / run.par.ranks
    if not math.isfinite(value):
        return None, None
    if trial.spec.recipe.grad_clip is not None:
        nn.utils.clip_grad_norm_(trial.model.parameters(), trial.spec.recipe.grad_clip)
    trial.optimizer.step()
    trial.scheduler.step()
    return value, logits.detach()


def _end_epoch(model: nn.Module) -> None:
    """Call `end_epoch()` once on every submodule that has it (UBN's epoch-level decision)."""
    for module in model.modules():
        hook = getattr(module, "end_epoch", None)
        if callable(hook):
            hook()


def _non_finite_tensor(model: nn.Module) -> str | None:
    """The name of the first parameter or floating buffer holding a NaN or inf, else None."""
    tensors = [*model.named_parameters(), *model.named_buffers()]
    for name, t in tensors:
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            return name
    return None


def _non_finite_state(model: nn.Module) -> str | None:
    """Why the model is unusable after an epoch (a NaN/inf parameter or buffer), else None."""
    name = _non_finite_tensor(model)
    return None if name is None else f"non-finite values in {name} after the epoch"


def _non_finite_source(trial: Trial, x: torch.Tensor) -> str:
    """Where a non-finite loss came from: the first layer (in forward order) whose output is
    not finite on the batch, else a NaN/inf parameter or buffer. The forward runs on a copy
    of the model, so the trial's own state is untouched; this runs once, when a trial diverges."""
    model = copy.deepcopy(trial.model)
    found: list[str] = []

    def check(label: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any, out: Any) -> None:
            bad = isinstance(out, torch.Tensor) and out.is_floating_point()
            if not found and bad and not bool(torch.isfinite(out).all()):
                found.append(f"{label} ({type(module).__name__})")

        return hook

    for label, module in model.named_modules():
        if label:  # a child's hook fires before its parent's: the first hit is the innermost
            module.register_forward_hook(check(label))
    with torch.no_grad(), trial.runtime.autocast():
        model(x)
    if found:
        return f"first non-finite output: {found[0]}"
    name = _non_finite_tensor(trial.model)
    if name is not None:
        return f"non-finite values in {name}"
    return "every layer's output is finite (the loss itself overflowed)"


@torch.no_grad()
def evaluate(
    trial: Trial, loader: Any, par: distributed.Parallel | None = None
) -> tuple[float | None, ...]:
    """(loss, top-1 %, top-5 %) of the model in eval mode on `loader`; Nones without one.

    With DDP (`par`) each rank's loader serves its batches (every N-th, `Parallel.shard`) and
    the sums are all-reduced."""
    if loader is None:
        return None, None, None
    par = par or distributed.SINGLE
    model, rt = trial.model, trial.runtime
    model.eval()
    loss = torch.zeros((), dtype=torch.float64, device=rt.device)
    hits = torch.zeros(3, dtype=torch.int64, device=rt.device)  # top-1, top-5, seen
    for x, y in loader:
        with rt.autocast():
            logits = trial.forward(rt.to_input(x)).float()
        loss += nn.functional.cross_entropy(logits, y, reduction="sum").double()
        k = min(5, logits.shape[1])
        top = logits.topk(k, dim=1).indices  # (N, k)
        match = top == y[:, None]  # (N, k)
        hits += torch.stack([match[:, 0].sum(), match.any(dim=1).sum(), hits.new_tensor(len(y))])
    model.train()
    loss, h = par.all_sum(loss), par.all_sum(hits).tolist()
    seen = h[2]
    if seen == 0:
        return None, None, None
    return float(loss) / seen, 100.0 * h[0] / seen, 100.0 * h[1] / seen


def _condensation(trial: Trial) -> dict[str, float]:
    probe = trial.probe
    if probe is None:
        return {}
    return probes.condensation(trial.model, trial.runtime.to_input(probe), trial.runtime.autocast())


def _memory_meter(trial: Trial) -> memory.PeakMemory:
    """The trial's peak-memory meter, started (see `normbench.engine.memory`)."""
    meter = memory.PeakMemory(
        trial.runtime.device, lambda: memory.trial_tensors(trial.model, trial.optimizer)
    )
    meter.start()
    return meter


def _payload(trial: Trial, state: _State) -> dict[str, Any]:
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
        "rng": ckpt.rng_state(),
        "environment": trial.runtime.environment(),
    }


def _restore(trial: Trial, payload: dict[str, Any]) -> _State:
    """Load a checkpoint into the built trial and return the loop state it carried."""
    trial.model.load_state_dict(payload["model"])
    trial.optimizer.load_state_dict(payload["optimizer"])
    trial.scheduler.load_state_dict(payload["scheduler"])
    ckpt.set_rng_state(payload["rng"])
    return _State(
        epoch=int(payload["epoch"]),
        elapsed_s=float(payload["elapsed_s"]),
        status=str(payload["status"]),
        best=dict(payload["best"]),
        records=list(payload["records"]),
    )
