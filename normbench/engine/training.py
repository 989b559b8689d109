"""One training pass of `run_trial` (`normbench.engine.loop`): steps without a host sync, the
device-side divergence check, and the reason a diverged step gives.

No host sync per step: the loss check runs on the device (`_Divergence`), and the host reads
its flag every `Runtime.check_every` steps (every step on a CPU, where a read costs nothing;
`normbench.engine.device.CHECK_EVERY`) and at the end of the pass, so a diverging trial stops
within that many steps. Between reads, SGD's fused step skips its update on the device once a
loss was non-finite (`found_inf`, the mechanism of torch's GradScaler), so the parameters stay
those the first non-finite loss was computed with, and the batch of that step is kept: the
reason names the layer as a check at that very step would have. Loss sums and hits stay on the
device until the end of the pass; `on_batch` is called at each read.

The task (`Trial.task`) computes each batch's loss and its train metrics' sums
(`training_step`, normbench/tasks/base.py); this pass does everything else, for every task.
A batch is `(inputs, targets)`; tensor inputs are handed over in the model's memory format.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from normbench.engine import distributed, memory
from normbench.engine.build import Trial
from normbench.engine.device import DeviceError, compile_counts, synchronize
from normbench.engine.recipe import current_lr
from normbench.tasks.base import Batch, num_samples

BatchCallback = Callable[[dict[str, Any]], None]


@dataclass
class TrainResult:
    loss: float | None
    metrics: dict[str, float | None]  # the task's train metrics but the loss, by name
    images: int
    seconds: float
    lr: float
    diverged: str | None = None  # why, when it diverged


@dataclass
class Run:
    """A trial as this process trains it: `train_forward` is what a training step calls (the
    DDP wrapper or the virtual-device split); `trial.forward` evaluates."""

    trial: Trial
    par: distributed.Parallel
    train_forward: nn.Module


class _Divergence:
    """The first step of an epoch (0-based) whose loss was not finite, and with `keep` its
    batch, kept on the device so that checking a loss needs no host sync; `read()` is the one
    sync. (Keeping the batch costs one batch of memory and a select per step; it lets a check
    that reads the flag steps later name the layer as the step itself would have. A batch
    that is not a pair of tensors, e.g. detection's lists, cannot be selected on the device:
    the latest one is kept, and the layer is named on it.)"""

    def __init__(self, device: torch.device, *, keep: bool) -> None:
        self.first = torch.full((), -1, dtype=torch.int64, device=device)  # -1: none yet
        # 1.0 from the first non-finite loss on: the fused SGD step's `found_inf`
        self.found = torch.zeros((), dtype=torch.float32, device=device)
        self.keep = keep
        self.batch: Batch | None = None  # with `keep`: the first bad step's batch

    def update(self, loss: torch.Tensor, step: int, batch: Batch) -> None:
        bad = ~torch.isfinite(loss)
        new = bad & (self.first < 0)
        if self.keep:
            self.batch = _keep(new, batch, self.batch)
        self.first = torch.where(new, step, self.first)
        self.found = torch.maximum(self.found, bad.float())

    def read(self) -> int | None:
        first = int(self.first)
        return None if first < 0 else first


def _keep(new: torch.Tensor, batch: Batch, kept: Batch | None) -> Batch:
    """`batch` where `new` (a device bool) is set, else `kept`, selected on the device."""
    if not all(isinstance(t, torch.Tensor) for t in batch):
        return batch
    if kept is None:
        return tuple(t.clone() for t in batch)  # type: ignore[return-value]
    return tuple(torch.where(new, t, k) for t, k in zip(batch, kept, strict=True))  # type: ignore[return-value]


@dataclass
class _Epoch:
    """What a training pass has added up, on the device, and its steps' (lr, images)."""

    loss_sum: torch.Tensor  # float64: sum over steps of mean loss x images
    sums: dict[str, torch.Tensor] = field(default_factory=dict)  # the train metrics' sums
    steps: list[tuple[float, int]] = field(default_factory=list)

    def add(self, sums: dict[str, torch.Tensor]) -> None:
        for name, value in sums.items():
            value = value.detach().double()
            self.sums[name] = self.sums[name] + value if name in self.sums else value

    @property
    def seen(self) -> int:
        return sum(images for _, images in self.steps)


def train_epoch(
    run: Run, epoch: int, on_batch: BatchCallback | None, meter: memory.PeakMemory
) -> TrainResult:
    """One pass over the training loader; stops at a non-finite loss (see the module doc).

    With DDP the loader serves this rank's slice of each optimiser batch (`Parallel.shard`);
    the loss (so the divergence check) and the metric sums are summed over ranks, and the
    sample counts are those of the optimiser batch.
    """
    trial, par = run.trial, run.par
    rt = trial.runtime
    trial.model.train()
    trial.data.train.set_epoch(epoch - 1)
    sums = _Epoch(torch.zeros((), dtype=torch.float64, device=rt.device))
    watch = _Divergence(rt.device, keep=rt.check_every > 1)
    lr = current_lr(trial.optimizer)
    synchronize(rt.device)
    start = time.perf_counter()
    batch = None
    for i, (x, y) in enumerate(trial.data.train):
        if i >= trial.batches_per_epoch:
            break
        lr = current_lr(trial.optimizer)  # the lr this batch trains with
        batch = (rt.to_input(x) if isinstance(x, torch.Tensor) else x, y)
        with meter.step():
            loss, step_sums = _forward_backward(run, batch)
            watch.update(loss, i, batch)
            if (i + 1) % rt.check_every == 0 and watch.read() is not None:
                return _diverged(run, epoch, watch, sums, batch, time.perf_counter() - start)
            _optimizer_step(trial, watch)
        if i == 0 and rt.compile:
            _require_graphs()
        images = num_samples(batch[0]) * par.ranks  # every rank holds as many
        sums.loss_sum += loss * images
        sums.add(step_sums)
        sums.steps.append((lr, images))
        if on_batch is not None and (i + 1) % rt.check_every == 0:
            on_batch(_progress(epoch, i, trial, sums, start))
    if batch is not None and watch.read() is not None:  # the steps since the last read
        return _diverged(run, epoch, watch, sums, batch, time.perf_counter() - start)
    synchronize(rt.device)
    seconds = meter.training_seconds(time.perf_counter() - start)
    seen = sums.seen
    if seen == 0:
        return TrainResult(None, {}, 0, seconds, lr, "the training loader yielded no batch")
    metrics: dict[str, float | None] = {
        name: float(par.all_sum(v)) / seen for name, v in sums.sums.items()
    }
    return TrainResult(float(sums.loss_sum) / seen, metrics, seen, seconds, lr)


def _diverged(
    run: Run, epoch: int, watch: _Divergence, sums: _Epoch, batch: Batch, seconds: float
) -> TrainResult:
    """The result of an epoch whose step `watch.first` had a non-finite loss, read when
    `batch` was the latest. The parameters are still those that step computed with (later
    steps were skipped on the device), and its batch is `watch.batch` (or `batch` itself)."""
    first = watch.read()
    assert first is not None
    lr, _ = sums.steps[first] if first < len(sums.steps) else (current_lr(run.trial.optimizer), 0)
    why = f"non-finite training loss at batch {first + 1} of epoch {epoch}"
    source = non_finite_source(run.trial, batch if watch.batch is None else watch.batch)
    seen = sum(images for _, images in sums.steps[:first])
    return TrainResult(None, {}, seen, seconds, lr, f"{why}; {source}")


def _progress(epoch: int, i: int, trial: Trial, sums: _Epoch, start: float) -> dict[str, Any]:
    """The live-display numbers after batch i (0-based) of an epoch: the loss and each train
    metric (this rank's) so far, by name (classification: `top1`)."""
    elapsed = time.perf_counter() - start
    seen = sums.seen
    return {
        "epoch": epoch,
        "epochs": trial.spec.epochs,
        "batch": i + 1,
        "batches": trial.batches_per_epoch,
        "loss": float(sums.loss_sum) / seen,
        **{name: float(v) / seen for name, v in sums.sums.items()},
        "images_per_s": seen / elapsed if elapsed > 0 else 0.0,
    }


def _forward_backward(run: Run, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The task's training step on one batch, and backward: (the mean loss over the optimiser
    batch as a float64 device scalar, all ranks agreeing on it; the step's metric sums)."""
    trial = run.trial
    with trial.runtime.autocast(), run.par.statistics():
        step = trial.task.training_step(run.train_forward, batch)
    trial.optimizer.zero_grad(set_to_none=True)
    step.loss.backward()
    return run.par.all_sum(step.loss.detach()).double() / run.par.ranks, step.sums


def _optimizer_step(trial: Trial, watch: _Divergence) -> None:
    """Clip, step and schedule. A fused SGD step is skipped on the device after a non-finite
    loss; an unfused one (every step checked on the host first) never sees one."""
    if trial.spec.recipe.grad_clip is not None:
        nn.utils.clip_grad_norm_(trial.model.parameters(), trial.spec.recipe.grad_clip)
    if trial.optimizer.defaults.get("fused"):
        trial.optimizer.found_inf = watch.found  # type: ignore[attr-defined]
    trial.optimizer.step()
    trial.scheduler.step()


class CompileError(DeviceError):
    """A trial that asked for compile, but Dynamo compiled nothing of its model."""


def _require_graphs() -> None:
    """Refuse to train on eagerly after a first step that compiled no graph."""
    if compile_counts()["compile_graphs"] == 0:
        raise CompileError(
            "compile: true, but torch.compile captured no graph of the model in its first "
            "training step, so the trial would run eagerly while its records say compiled; "
            "run with TORCH_LOGS=graph_breaks to see why, or set compile: false"
        )


def compile_record(trial: Trial) -> dict[str, int | None]:
    """The record's compile counts (None without compile)."""
    if not trial.runtime.compile:
        return {"compile_graphs": None, "compile_graph_breaks": None}
    return dict(compile_counts())


def non_finite_tensor(model: nn.Module) -> str | None:
    """The name of the first parameter or floating buffer holding a NaN or inf, else None."""
    tensors = [*model.named_parameters(), *model.named_buffers()]
    for name, t in tensors:
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            return name
    return None


def non_finite_state(model: nn.Module) -> str | None:
    """Why the model is unusable after an epoch (a NaN/inf parameter or buffer), else None."""
    name = non_finite_tensor(model)
    return None if name is None else f"non-finite values in {name} after the epoch"


def non_finite_source(trial: Trial, batch: Batch) -> str:
    """Where a non-finite loss came from: the first layer (in forward order) whose output is
    not finite on the batch (the task's training step, run again), else a NaN/inf parameter or
    buffer. The step runs on a copy of the model without gradients, so the trial's own state
    is untouched; this runs once, when a trial diverges."""
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
        trial.task.training_step(model, batch)
    if found:
        return f"first non-finite output: {found[0]}"
    name = non_finite_tensor(trial.model)
    if name is not None:
        return f"non-finite values in {name}"
    return "every layer's output is finite (the loss itself overflowed)"
