"""Data-parallel trials: N devices as DDP ranks, or N virtual devices in one process.

A trial with `devices: N` trains with an optimiser batch of N x `batch_size`, in the order one
process would draw it (every rank draws the epoch order from the same seed). With DDP each
rank's loaders load only that rank's part (`Parallel.shard`, the partition is decided in
`normbench.data.shard`): rows [r*B, (r+1)*B) of every global batch in training, which are
exactly the rows device r normalises in virtual mode, and every N-th evaluation batch. So a
rank decodes and augments only the images it uses (folder data: each sample's crop and flip
are seeded per sample, so they do not depend on who decodes it), and the loop never slices.

* `parallel: ddp`: one process per device (Ray Train workers, or any launcher that has set up
  `torch.distributed` with N ranks), `torch.nn.parallel.DistributedDataParallel` around the
  model: NCCL on GPUs, gloo on CPUs (the launcher picks the backend). Gradients are averaged
  over ranks, so the step is the gradient of the mean loss over the N x B batch.
* `parallel: virtual`: one process; every batch-dependent layer (class attribute
  `batch_dependent = True`) normalises each of the N slices with that slice's statistics, and
  the loss is the mean over the N x B batch. This equals the DDP trial with
  `stats_scope: device` step by step (tests/engine/test_distributed.py).

Running statistics follow DDP's `broadcast_buffers=True`: at every training forward each rank
starts from rank 0's buffers, so each step's update comes from device 0's slice, and the
buffers every rank evaluates with and rank 0 checkpoints are rank 0's. Virtual mode does the
same (each slice starts from the buffers device 0 ended the last step with; device 0's update
is kept). After each training epoch the ranks copy rank 0's buffers, so end-of-epoch hooks,
checks, evaluation and probes see one model.

`stats_scope: global` normalises with moments over all N slices (SyncBatchNorm's rule,
generalised: the layer computes what it computes on the whole N x B batch). In virtual mode
that is the unsplit batch. With DDP, `Parallel.statistics()` installs
`normbench.variants.global_statistics` around each training forward: inside a batch-dependent
layer the per-instance moments (N, C) of every rank are exchanged by one differentiable
all-reduce before the statistics are formed (variants/_fused.py, the one place), so ghost
batches, example groups and UBN's similarity span the ranks exactly as on one device. Each
rank then makes the same running-statistics update (that of the whole batch), so DDP's buffer
broadcast copies equal values. Equality with one process on the concatenated batch is tested
for every built-in layer (tests/engine/test_global_stats.py). A layer takes part only if it
declares `global_stats = True`; the suite loader refuses others with several devices.

Only rank 0 writes checkpoints (with every rank's RNG states, `Parallel.gather`); every rank
restores the same file, and its own RNG states from it. The training loss, the
divergence check and the evaluation sums are all-reduced, so every rank takes the same
decisions and rank 0's record describes the whole trial.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from normbench.data.shard import Shard
from normbench.engine.device import compile_module
from normbench.spec import SpecError, TrialSpec
from normbench.variants._fused import global_statistics


@dataclass(frozen=True)
class Parallel:
    """How this process takes part in a trial: `mode` "single", "ddp" or "virtual"."""

    devices: int
    mode: str
    rank: int
    stats_scope: str

    @property
    def ranks(self) -> int:
        """Processes taking part (N with DDP, else 1)."""
        return self.devices if self.mode == "ddp" else 1

    @property
    def writer(self) -> bool:
        """Whether this process writes checkpoints (rank 0)."""
        return self.rank == 0

    @property
    def shard(self) -> Shard:
        """The part of the data this process loads (`normbench.data.shard`): rank r of N with
        DDP, every whole batch otherwise."""
        return Shard(self.rank, self.ranks)

    def all_sum(self, t: torch.Tensor) -> torch.Tensor:
        """Sum of `t` over ranks (a new tensor); `t` itself in one process."""
        if self.mode != "ddp":
            return t
        t = t.clone()
        dist.all_reduce(t)
        return t

    def gather(self, obj: Any) -> list[Any]:
        """`obj` of every rank in rank order (`[obj]` in one process). Every rank must call it:
        the checkpoint writer collects each rank's RNG states this way."""
        if self.mode != "ddp":
            return [obj]
        out: list[Any] = [None] * self.devices
        dist.all_gather_object(out, obj)
        return out

    def sync_buffers(self, model: nn.Module) -> None:
        """Every rank takes rank 0's buffers (DDP does this before each training forward)."""
        if self.mode != "ddp":
            return
        with torch.no_grad():
            for buf in model.buffers():
                dist.broadcast(buf, 0)

    def statistics(self) -> contextlib.AbstractContextManager[None]:
        """The context of a training forward: with DDP and `stats_scope: global`, the
        batch-dependent layers normalise with the moments of every rank's batch
        (`normbench.variants._fused.global_statistics`); nothing otherwise."""
        if self.mode == "ddp" and self.stats_scope == "global":
            # every rank trains on B rows per step by construction (data/shard.py): the
            # equal-batch check would only add a host read per step
            return global_statistics(check_batches=False)
        return contextlib.nullcontext()

    def wrap(self, model: nn.Module, forward: nn.Module) -> nn.Module:
        """What a training step calls: DDP around `model`, or the virtual-device split."""
        if self.mode == "ddp":
            ids = [model_device(model)] if model_device(model).type == "cuda" else None
            ddp = nn.parallel.DistributedDataParallel(model, device_ids=ids)
            return compile_module(ddp) if forward is not model else ddp
        if self.mode == "virtual" and self.stats_scope == "device":
            split_statistics(model, self.devices)
        return forward


# One process, one device: what every plain trial and `normbench evaluate` run with.
SINGLE = Parallel(1, "single", 0, "device")


def setup(spec: TrialSpec) -> Parallel:
    """The `Parallel` of this process for `spec`; SpecError when DDP has no matching group."""
    if spec.devices == 1:
        return Parallel(1, "single", 0, spec.stats_scope)
    if spec.parallel == "virtual":
        return Parallel(spec.devices, "virtual", 0, spec.stats_scope)
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    if world != spec.devices:
        raise SpecError(
            f"devices={spec.devices} with parallel 'ddp' needs a torch.distributed process "
            f"group of {spec.devices} ranks (normbench run starts one through Ray Train), but "
            f"this process has {world}; use parallel 'virtual' to run it in one process"
        )
    return Parallel(spec.devices, "ddp", dist.get_rank(), spec.stats_scope)


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


# ------------------------------------------------------------------ virtual devices
def split_statistics(model: nn.Module, devices: int) -> None:
    """Make every batch-dependent layer of `model` normalise N equal batch slices separately.

    In training the layer runs once per slice; each slice starts from the buffers the first
    slice started from, and the first slice's buffer update is kept (DDP's buffer broadcast
    from rank 0). Eval is untouched. The forward is replaced on the instance, so parameter and
    buffer names (checkpoints, diagnostics) stay those of the plain model.
    """
    for module in model.modules():
        if getattr(type(module), "batch_dependent", False):
            module.forward = _split_forward(module, module.forward, devices)  # type: ignore[method-assign]


def _split_forward(
    module: nn.Module, forward: Callable[..., torch.Tensor], devices: int
) -> Callable[..., torch.Tensor]:
    def virtual_devices(x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if not module.training:
            return forward(x, *args, **kwargs)
        n = x.shape[0]
        if n % devices:
            raise ValueError(
                f"{type(module).__name__}: a batch of {n} cannot be split into {devices} "
                f"virtual devices"
            )
        slices = list(zip(x.chunk(devices), *(_split(a, n, devices) for a in args), strict=True))
        start = _snapshot(module)
        outputs = [forward(*slices[0], **kwargs)]
        first = _snapshot(module)
        for part in slices[1:]:
            _restore(module, start)
            outputs.append(forward(*part, **kwargs))
        _restore(module, first)
        return torch.cat(outputs)  # (N*B, ...) in slice order

    return virtual_devices


def _split(arg: Any, n: int, devices: int) -> list[Any]:
    """A per-sample tensor argument (SaBN's index) split like x; anything else repeated."""
    if isinstance(arg, torch.Tensor) and arg.dim() > 0 and arg.shape[0] == n:
        return list(arg.chunk(devices))
    return [arg] * devices


def _snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {name: b.detach().clone() for name, b in module.named_buffers()}


def _restore(module: nn.Module, saved: dict[str, torch.Tensor]) -> None:
    """Rebind each buffer to a copy of its saved value.

    NOTE: not `buf.copy_(value)`: a slice's forward may have saved the buffer for backward
    (`F.batch_norm` does), and an in-place write would invalidate that saved tensor.
    """
    for name, value in saved.items():
        owner, _, leaf = name.rpartition(".")
        target = module.get_submodule(owner) if owner else module
        target._buffers[leaf] = value.clone()
