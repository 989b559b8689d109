"""Statistics over every data-parallel rank's batch (`stats_scope: global`).

Inside `global_statistics()` (a data-parallel trial with `stats_scope: global` installs it
around each training forward) every batch-dependent layer computes what it computes on the
batch of all ranks together (docs/variants.md#statistics-scope-across-devices). The layers
exchange their per-instance moments through `gather_rows` (differentiable: its backward sends
each rank the gradient of the sum of all ranks' losses, SyncBatchNorm's rule) and sums
through `all_sum`.

The collectives are torch's functional collectives (`torch.distributed._functional_collectives`),
which Dynamo traces: a compiled model under the context is one graph per step, not a graph per
norm layer. The exchange needs equal batches on every rank (the moments are all-reduced in
rank-order slots of (R x N, C)); the first exchange of each context checks this in eager mode
(one all-reduce of two integers) and raises ValueError on every rank instead of letting the
backend abort on a size mismatch. Under `torch.compile` the check is not traced.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F


class _Scope:
    """The process group whose ranks' batches the statistics span (None: this batch only).

    A plain module attribute, not a ContextVar: Dynamo guards on it, so a compiled layer
    outside the context traces no collective (the single-device path stays one graph).
    `checked`: whether this context's batches were found equal across ranks.
    """

    group: Any = None
    checked: bool = False


@contextlib.contextmanager
def global_statistics(group: Any = None, *, check_batches: bool = True) -> Iterator[None]:
    """Batch statistics over every rank's batch of `group` (default: the whole world).

    Every rank must run the same layers on batches of equal size inside the context (a
    training step of a DDP trial); unequal sizes raise ValueError on every rank at the first
    layer (eager mode). That check reads two integers on the host once per context; a caller
    whose ranks get equal batches by construction may skip it (`check_batches=False`; unequal
    batches then fail in the backend). Nested use is not supported.
    """
    import torch.distributed as dist

    _Scope.group = group if group is not None else dist.group.WORLD
    _Scope.checked = not check_batches
    try:
        yield
    finally:
        _Scope.group = None


def global_scope() -> bool:
    """Whether the statistics span every rank's batch (inside `global_statistics`)."""
    return _Scope.group is not None


def statistics_ranks() -> int:
    """Ranks whose batches the statistics span: the world size inside `global_statistics`,
    else 1. A layer's whole batch is `statistics_ranks() * N` samples."""
    if _Scope.group is None:
        return 1
    return _world(_Scope.group)[1]


def _world(group: Any) -> tuple[int, int]:
    import torch.distributed as dist

    return dist.get_rank(group), dist.get_world_size(group)


def _all_reduce(t: torch.Tensor, group: Any, op: str = "sum") -> torch.Tensor:
    """A functional (traceable) all-reduce of `t` over `group`, waited for."""
    from torch.distributed import _functional_collectives as fc

    return fc.wait_tensor(fc.all_reduce(t.contiguous(), op, group))


def _check_equal_batches(t: torch.Tensor) -> None:
    """ValueError on every rank unless every rank passes N = t.shape[0] rows (eager only)."""
    if _Scope.checked or torch.compiler.is_compiling():
        return
    n = t.shape[0]
    extremes = _all_reduce(torch.tensor([n, -n], device=t.device), _Scope.group, "max")
    largest, smallest = (int(v) for v in extremes.tolist())
    smallest = -smallest
    if largest != smallest:
        raise ValueError(
            f"global statistics need the same batch size on every rank, but the ranks' batches "
            f"range from {smallest} to {largest} samples (this rank: {n}); make the per-rank "
            "batches equal (e.g. drop_last=True) or leave the step out of global_statistics()"
        )
    _Scope.checked = True


def gather_rows(t: torch.Tensor) -> torch.Tensor:
    """Every rank's `t` (N, ...) stacked in rank order, (R x N, ...); `t` outside the context.

    Differentiable (the backward sends each rank the gradient of the sum of all ranks' losses
    with respect to its own rows). Every rank must pass the same shape.
    """
    if _Scope.group is None:
        return t
    _check_equal_batches(t)
    rank, world = _world(_Scope.group)
    n = t.shape[0]
    pad = [0, 0] * (t.dim() - 1) + [rank * n, (world - 1 - rank) * n]
    return _AllReduceSum.apply(F.pad(t, pad), _Scope.group)


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks; backward: the sum over ranks of the gradients (d of Σ_r loss_r).

    What `torch.distributed.nn.functional.all_reduce` does (deprecated in torch 2.14); the
    backward is this Function again, so a double backward works too.
    """

    @staticmethod
    def forward(ctx: Any, t: torch.Tensor, group: Any) -> torch.Tensor:
        ctx.group = group
        return _all_reduce(t, group)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> Any:
        return _AllReduceSum.apply(grad, ctx.group), None


def own_rows(t: torch.Tensor, n: int) -> torch.Tensor:
    """This rank's N rows of a (R x N, ...) tensor from `gather_rows`; `t` outside the context."""
    if _Scope.group is None:
        return t
    rank = _world(_Scope.group)[0]
    return t[rank * n : (rank + 1) * n]


def all_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum of `t` over the ranks inside `global_statistics` (no gradient); `t` outside it."""
    if _Scope.group is None:
        return t
    return _all_reduce(t.detach(), _Scope.group)
