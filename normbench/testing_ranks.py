"""Does a layer's `global_stats = True` claim hold? Two gloo ranks against one process.

A layer that declares `global_stats = True` promises that, inside
`normbench.variants.global_statistics` (what a DDP trial with `stats_scope: global` installs),
its batch statistics span every rank's batch (docs/variants.md#plugin-global-statistics). This
module checks the promise the way it is used: each case runs two training steps and an eval
forward as a 2-rank DDP module (float64, gloo on the CPU), and the same layer runs in one
process on the concatenated 2 x 6 batch. Compared: outputs, input gradients, parameter
gradients (DDP averages them over ranks, so x 2 against the sum of the ranks' losses), every
buffer after each step (running statistics, counters, UBN's similarity) and the eval output.

One pair of processes runs every case given (process start-up dominates: seconds to tens of
seconds on a loaded machine). `VariantConformance.test_global_stats_claim` runs one case;
`tests/engine/test_global_stats.py` runs every built-in with several option settings.
"""

from __future__ import annotations

import contextlib
import importlib.util
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

RANKS, PER_RANK, C, HW = 2, 6, 8, 4
# Three steps: with momentum None the third factor, 1/3, is not a float32 number, so a factor
# built in float32 shows against the float64 reference (docs/variants.md#bncore).
STEPS = 3
# float64 throughout: the only differences are summation orders (measured on the built-ins:
# max |difference| <= 1.1e-15 x the largest |value| of the compared tensor).
RTOL = ATOL = 1e-12


@dataclass(frozen=True)
class Case:
    """A layer to check: a registry name (a built-in or an installed plugin), or a class
    another process can import, or a name a plugin file registers (`plugin`)."""

    variant: str | type
    options: dict[str, Any] = field(default_factory=dict)
    plugin: str | None = None


def case_for(cls: type, options: dict[str, Any]) -> Case:
    """A `Case` for `cls` that a fresh process can rebuild: by the plugin file that registered
    it, else by reference when its module is importable."""
    from normbench.variants_api import VARIANTS

    for entry in VARIANTS.entries():
        if entry.obj is cls and entry.source.startswith("file:"):
            return Case(entry.name, options, plugin=entry.source.removeprefix("file:"))
    module = getattr(cls, "__module__", "")
    with contextlib.suppress(ImportError, ValueError):
        if module != "__main__" and importlib.util.find_spec(module) is not None:
            return Case(cls, options)
    raise TypeError(f"{cls!r} is neither importable nor registered from a plugin file")


def layer_of(case: Case) -> nn.Module:
    """The case's layer (C channels, float64), its parameters moved off their initial values
    so every gradient matters; the same in every process."""
    cls = case.variant
    if not isinstance(cls, type):
        from normbench.registry import load_plugin
        from normbench.variants_api import VARIANTS

        if case.plugin:
            load_plugin(case.plugin)
        cls = VARIANTS.get(cls).obj
    torch.manual_seed(0)
    layer = cls(C, **case.options).double()
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return layer


def _data(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole batch (12, C, HW, HW) of a step and the loss weights: loss = sum(y * w)."""
    g = torch.Generator().manual_seed(100 + step)
    x = 2.0 + 3.0 * torch.randn(RANKS * PER_RANK, C, HW, HW, generator=g, dtype=torch.float64)
    x[:, :, 0, 0] += torch.arange(RANKS * PER_RANK, dtype=torch.float64)[:, None]
    w = torch.randn(x.shape, generator=g, dtype=torch.float64)
    return x, w


def run_steps(layer: nn.Module, rows: slice, scale: float, sync: bool) -> list[dict[str, Any]]:
    """Per step: output, input gradient, parameter gradients (x `scale`), buffers; then eval."""
    from normbench.variants import global_statistics

    out = []
    for step in range(STEPS):
        x, w = _data(step)
        x = x[rows].clone().requires_grad_(True)
        layer.zero_grad(set_to_none=True)
        with global_statistics() if sync else contextlib.nullcontext():
            y = layer(x)
        (y * w[rows]).sum().backward()
        raw = layer.module if isinstance(layer, nn.parallel.DistributedDataParallel) else layer
        out.append(
            {
                "y": y.detach(),
                "x.grad": x.grad,
                **{f"grad {k}": scale * p.grad for k, p in raw.named_parameters()},  # type: ignore[operator]
                **{f"buffer {k}": b.clone() for k, b in raw.named_buffers()},
            }
        )
        end_epoch = getattr(raw, "end_epoch", None)
        if callable(end_epoch):
            end_epoch()
    layer.eval()
    out.append({"eval y": layer(_data(STEPS)[0][rows]).detach()})
    return out


def _rank(rank: int, init: str, out: str, cases: dict[str, Case]) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=RANKS)
    try:
        results = {}
        for name, case in cases.items():
            ddp = nn.parallel.DistributedDataParallel(layer_of(case))
            rows = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
            results[name] = run_steps(ddp, rows, float(RANKS), sync=True)
        torch.save(results, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def run_ranks(cases: dict[str, Case]) -> list[dict[str, Any]]:
    """Every case as a 2-rank DDP module under `global_statistics`, in one pair of spawned
    gloo processes; per rank, {case: run_steps(...)}."""
    with tempfile.TemporaryDirectory(prefix="nbranks") as out:
        init = f"file://{Path(out) / 'init'}"
        mp.start_processes(_rank, args=(init, out, cases), nprocs=RANKS, start_method="spawn")
        return [torch.load(Path(out) / f"rank{r}.pt", weights_only=False) for r in range(RANKS)]


def mismatches(case: Case, ranks: list[dict[str, Any]], name: str) -> list[str]:
    """How the ranks' results of case `name` differ from the layer on the whole batch (empty
    when the claim holds)."""
    reference = run_steps(layer_of(case), slice(None), 1.0, sync=False)
    found = []
    for rank, result in enumerate(ranks):
        rows = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
        for step, (got, want) in enumerate(zip(result[name], reference, strict=True)):
            for key, value in want.items():
                if key in ("y", "x.grad", "eval y"):
                    value = value[rows]
                other = got.get(key)
                if other is None or other.shape != value.shape:
                    found.append(f"rank {rank} step {step}: {key}: missing or of another shape")
                elif not torch.allclose(other, value, rtol=RTOL, atol=ATOL):
                    diff = (other - value).abs().max().item()
                    found.append(f"rank {rank} step {step}: {key}: max |difference| {diff:.3g}")
    return found


def check_claims(cases: dict[str, Case]) -> dict[str, list[str]]:
    """{case: mismatches} for every case, from one pair of gloo processes."""
    ranks = run_ranks(cases)
    return {name: mismatches(case, ranks, name) for name, case in cases.items()}
