"""What a task's methods take and return (the contract is `normbench.contract.TaskClass`;
docs/tasks.md): the batch, a training step's result, and what model construction and
evaluation are given.

A **batch** is a pair `(inputs, targets)` on the training device, as the data set's loader
yields it (`normbench.data`): a tensor of images (N, C, H, W) and a tensor of labels (N,) for
classification; a list of images and a list of target dicts for detection. The loop counts
the samples of a batch as `len(inputs)` and hands tensor inputs to the task in the model's
memory format; everything else about a batch belongs to the task.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn

from normbench.contract import NormLayer
from normbench.spec import Recipe

Batch = tuple[Any, Any]  # (inputs, targets)


@dataclass
class Step:
    """One training batch: `loss`, the scalar the optimiser minimises (the mean over the batch,
    with its graph), and `sums`, for each train metric other than the loss, its sum over the
    batch's samples in the metric's unit, as a device tensor (the loop adds them up over the
    epoch and over ranks without a host sync, and divides by the samples seen)."""

    loss: torch.Tensor
    sums: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelContext:
    """What `build_model` is given. `backbone(num_outputs, *, in_channels)` builds the trial's
    registered backbone with the variant placed as the trial asks (`placement`), ending in a
    `num_outputs`-way linear layer; `norm_layer(C)` is the variant itself, for the norms of the
    task's own parts (a neck, heads). The data's facts: classes, channels, image side (px) and
    the data set's `info`. `recipe` is the trial's optimiser recipe (classification takes its
    label smoothing); `device` is where training runs."""

    backbone: Callable[..., nn.Module]
    norm_layer: NormLayer
    num_classes: int
    in_channels: int
    image_size: int
    recipe: Recipe
    device: torch.device
    info: dict[str, Any] = field(default_factory=dict)
    spec: Any = None  # the trial's TrialSpec, for a task that reads its data or runs trials itself
    # the one loop (`normbench.engine.loop.run_trial`), for a task that trains other networks
    # to score its own (NAS's found cell); None where no trial may run
    run_trial: Callable[..., Any] | None = None


class EvalContext(Protocol):
    """What `evaluate` is given besides the model and the batches: the device, autocast, the
    model's input memory format, and the sums and gathers across data-parallel ranks (every
    rank calls `evaluate` on its own share of the split's batches and must call these alike)."""

    device: torch.device
    split: str | None  # "val" or "test" (None: a caller that names no split)

    def autocast(self) -> contextlib.AbstractContextManager[Any]: ...
    def inputs(self, x: Any) -> Any: ...
    def all_sum(self, t: torch.Tensor) -> torch.Tensor: ...
    def gather(self, obj: Any) -> list[Any]: ...


def num_samples(inputs: Any) -> int:
    """Samples in a batch's inputs: a tensor's first dimension, a list's length."""
    return len(inputs)
