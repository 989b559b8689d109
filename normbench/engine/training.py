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

BatchCallback = Callable[[dict[str, Any]], None]


@dataclass
class TrainResult:
    loss: float | None
    top1: float | None
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
    input batch, kept on the device so that checking a loss needs no host sync; `read()` is
    the one sync. (Keeping the batch costs one batch of memory and a select per step; it lets
    a check that reads the flag steps later name the layer as the step itself would have.)"""

    def __init__(self, device: torch.device, *, keep: bool) -> None:
        self.first = torch.full((), -1, dtype=torch.int64, device=device)  # -1: none yet
        # 1.0 from the first non-finite loss on: the fused SGD step's `found_inf`
        self.found = torch.zeros((), dtype=torch.float32, device=device)
        self.keep = keep
        self.batch: torch.Tensor | None = None  # with `keep`: the first bad step's input

    def update(self, loss: torch.Tensor, step: int, x: torch.Tensor) -> None:
        bad = ~torch.isfinite(loss)
        new = bad & (self.first < 0)
        if self.keep:
            self.batch = x.clone() if self.batch is None else torch.where(new, x, self.batch)
        self.first = torch.where(new, step, self.first)
        self.found = torch.maximum(self.found, bad.float())

    def read(self) -> int | None:
        first = int(self.first)
        return None if first < 0 else first


@dataclass
class _Epoch:
    """What a training pass has added up, on the device, and its steps' (lr, images)."""

    loss_sum: torch.Tensor  # float64: sum over steps of mean loss x images
    correct: torch.Tensor  # int64
    steps: list[tuple[float, int]] = field(default_factory=list)

    @property
    def seen(self) -> int:
        return sum(images for _, images in self.steps)


def train_epoch(
    run: Run, epoch: int, on_batch: BatchCallback | None, meter: memory.PeakMemory
) -> TrainResult:
    """One pass over the training loader; stops at a non-finite loss (see the module doc).

    With DDP the loader serves this rank's slice of each optimiser batch (`Parallel.shard`);
    the loss (so the divergence check) and the hits are summed over ranks, and the image
    counts are those of the optimiser batch.
    """
    trial, par = run.trial, run.par
    rt = trial.runtime
    trial.model.train()
    trial.data.train.set_epoch(epoch - 1)
    sums = _Epoch(
        torch.zeros((), dtype=torch.float64, device=rt.device),
        torch.zeros((), dtype=torch.int64, device=rt.device),
    )
    watch = _Divergence(rt.device, keep=rt.check_every > 1)
    lr = current_lr(trial.optimizer)
    synchronize(rt.device)
    start = time.perf_counter()
    x = None
    for i, (x, y) in enumerate(trial.data.train):
        if i >= trial.batches_per_epoch:
            break
        lr = current_lr(trial.optimizer)  # the lr this batch trains with
        x = rt.to_input(x)
        with meter.step():
            loss, logits = _forward_backward(run, x, y)
            watch.update(loss, i, x)
            if (i + 1) % rt.check_every == 0 and watch.read() is not None:
                return _diverged(run, epoch, watch, sums, x, time.perf_counter() - start)
            _optimizer_step(trial, watch)
        if i == 0 and rt.compile:
            _require_graphs()
        images = int(y.shape[0]) * par.ranks  # every rank holds as many
        sums.loss_sum += loss * images
        sums.correct += (logits.argmax(dim=1) == y).sum()
        sums.steps.append((lr, images))
        if on_batch is not None and (i + 1) % rt.check_every == 0:
            on_batch(_progress(epoch, i, trial, sums, start))
    if x is not None and watch.read() is not None:  # the steps since the last read
        return _diverged(run, epoch, watch, sums, x, time.perf_counter() - start)
    synchronize(rt.device)
    seconds = meter.training_seconds(time.perf_counter() - start)
    correct, seen = int(par.all_sum(sums.correct)), sums.seen
    if seen == 0:
        return TrainResult(None, None, 0, seconds, lr, "the training loader yielded no batch")
    return TrainResult(float(sums.loss_sum) / seen, 100.0 * correct / seen, seen, seconds, lr)


def _diverged(
    run: Run, epoch: int, watch: _Divergence, sums: _Epoch, x: torch.Tensor, seconds: float
) -> TrainResult:
    """The result of an epoch whose step `watch.first` had a non-finite loss, read when `x`
    was the latest batch. The parameters are still those that step computed with (later
    steps were skipped on the device), and its input is `watch.batch` (or `x` itself)."""
    first = watch.read()
    assert first is not None
    lr, _ = sums.steps[first] if first < len(sums.steps) else (current_lr(run.trial.optimizer), 0)
    why = f"non-finite training loss at batch {first + 1} of epoch {epoch}"
    source = non_finite_source(run.trial, x if watch.batch is None else watch.batch)
    seen = sum(images for _, images in sums.steps[:first])
    return TrainResult(None, None, seen, seconds, lr, f"{why}; {source}")


def _progress(epoch: int, i: int, trial: Trial, sums: _Epoch, start: float) -> dict[str, Any]:
    """The live-display numbers after batch i (0-based) of an epoch."""
    elapsed = time.perf_counter() - start
    seen = sums.seen
    return {
        "epoch": epoch,
        "epochs": trial.spec.epochs,
        "batch": i + 1,
        "batches": trial.batches_per_epoch,
        "loss": float(sums.loss_sum) / seen,
        "top1": 100.0 * int(sums.correct) / seen,
        "images_per_s": seen / elapsed if elapsed > 0 else 0.0,
    }


def _forward_backward(run: Run, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, Any]:
    """Forward and backward of one batch: (the mean loss over the optimiser batch as a float64
    device scalar, all ranks agreeing on it; the detached logits)."""
    trial = run.trial
    with trial.runtime.autocast(), run.par.statistics():
        logits = run.train_forward(x)
    loss = trial.criterion(logits.float(), y)
    trial.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    return run.par.all_sum(loss.detach()).double() / run.par.ranks, logits.detach()


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


def non_finite_source(trial: Trial, x: torch.Tensor) -> str:
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
    name = non_finite_tensor(trial.model)
    if name is not None:
        return f"non-finite values in {name}"
    return "every layer's output is finite (the loss itself overflowed)"
