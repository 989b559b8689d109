"""Benchmark: data-parallel training steps on CPU (gloo), and the cost of per-device statistics.

Two measurements, written as Markdown with the machine described:

1. DDP step time: ResNet-20 (CIFAR layout, 32x32 inputs, BN), `--batch` images per device,
   with 1 and 2 gloo ranks (one process each, `--threads` torch threads per rank). A step is
   forward, backward (with DDP's gradient all-reduce) and SGD. Median over `--steps` steps
   after `--warmup`, per rank 0; images/s counts the images of all ranks.
2. Statistics scope per layer: a training step of ResNet-20 with each built-in layer on a batch
   of 2 x `--batch`, normalised as one batch (`stats_scope: global` in virtual mode) and as two
   virtual devices (`stats_scope: device`, `normbench.engine.distributed.split_statistics`).
   The ratio is what per-device statistics cost in one process.
3. Global vs device statistics under DDP, per layer: the step of 1. with 2 gloo ranks and each
   built-in batch-dependent layer, with `stats_scope: device` (plain DDP) and `global` (the
   per-instance moments all-reduced inside every norm layer, `global_statistics`). The ratio
   is what synchronised statistics cost (collective latency per layer, forward and backward).

`--quick` is a smoke run (tiny batch, 2 steps): it checks the script, not the numbers.

Run it on a quiet machine (numbers on a loaded one are meaningless):

    normbench bench ddp --output reports/bench_ddp.md   (or python -m normbench.bench.ddp)
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from normbench.bench.machine import describe_machine, machine_table


def _model(variant: str, **options: Any) -> nn.Module:
    from normbench.models import create_backbone
    from normbench.variants_api import norm_layer

    return create_backbone("resnet20", 10, norm_layer(variant, **options))


def _step_times(model: nn.Module, batch: int, steps: int, warmup: int) -> list[float]:
    """Seconds per SGD step on random 32x32 inputs (the last `steps` of warmup + steps)."""
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    times = []
    for i in range(warmup + steps):
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return times


def _ddp_rank(rank: int, world: int, init: str, args: Any, out: str) -> None:
    torch.set_num_threads(args.threads)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        model = nn.parallel.DistributedDataParallel(_model("bn"))
        times = _step_times(model, args.batch, args.steps, args.warmup)
        if rank == 0:
            torch.save(times, out)
    finally:
        dist.destroy_process_group()


def _scope_rank(rank: int, world: int, init: str, args: Any, out: str) -> None:
    """Per batch-dependent layer: median DDP step with device scope, then with global scope."""
    from normbench.variants import BUILTIN_VARIANTS, global_statistics

    torch.set_num_threads(args.threads)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        medians: dict[str, tuple[float, float]] = {}
        for name in sorted(n for n, c in BUILTIN_VARIANTS.items() if c.batch_dependent):
            pair = []
            for scope in ("device", "global"):
                torch.manual_seed(0)
                model = nn.parallel.DistributedDataParallel(
                    _model(name, **SCOPE_OPTIONS.get(name, {}))
                )
                with global_statistics() if scope == "global" else contextlib.nullcontext():
                    times = _step_times(model, args.batch, args.steps, args.warmup)
                pair.append(statistics.median(times))
            medians[name] = (pair[0], pair[1])
            if rank == 0:
                print(f"  global vs device scope, {name}: done", flush=True)
        if rank == 0:
            torch.save(medians, out)
    finally:
        dist.destroy_process_group()


# Options that keep every layer's statistics batch-dependent at small batches.
SCOPE_OPTIONS: dict[str, dict[str, Any]] = {"ghost_bn": {"num_splits": 2}}


def global_scope_rows(args: Any) -> list[str]:
    rows = [
        "| layer | device scope (ms) | global scope (ms) | ratio |",
        "|---|---|---|---|",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        init, out = f"file://{tmp}/init", f"{tmp}/scope.pt"
        mp.start_processes(_scope_rank, args=(2, init, args, out), nprocs=2, start_method="spawn")
        medians = torch.load(out)
    for name, (device, whole) in medians.items():
        rows.append(f"| {name} | {device * 1e3:.1f} | {whole * 1e3:.1f} | {whole / device:.2f} |")
    return rows


def ddp_rows(args: Any) -> list[str]:
    rows = ["| ranks | images/step | median step (ms) | images/s |", "|---|---|---|---|"]
    for world in (1, 2):
        with tempfile.TemporaryDirectory() as tmp:
            init, out = f"file://{tmp}/init", f"{tmp}/times.pt"
            mp.start_processes(
                _ddp_rank, args=(world, init, args, out), nprocs=world, start_method="spawn"
            )
            median = statistics.median(torch.load(out))
        images = world * args.batch
        rows.append(f"| {world} | {images} | {median * 1e3:.1f} | {images / median:.0f} |")
    return rows


def scope_rows(args: Any) -> list[str]:
    from normbench.engine.distributed import split_statistics
    from normbench.variants import BUILTIN_VARIANTS, plain_norm

    torch.set_num_threads(args.threads)
    rows = [
        "| layer | one batch (ms) | 2 virtual devices (ms) | ratio |",
        "|---|---|---|---|",
    ]
    for name in sorted(n for n, cls in BUILTIN_VARIANTS.items() if plain_norm(cls)):
        medians = []
        for split in (False, True):
            torch.manual_seed(0)
            model = _model(name)
            if split:
                split_statistics(model, 2)
            medians.append(
                statistics.median(_step_times(model, 2 * args.batch, args.steps, args.warmup))
            )
        whole, per_device = medians
        print(f"  virtual devices, {name}: done", flush=True)
        rows.append(
            f"| {name} | {whole * 1e3:.1f} | {per_device * 1e3:.1f} | {per_device / whole:.2f} |"
        )
    return rows


def run(
    output: Path,
    *,
    quick: bool = False,
    batch: int = 32,
    threads: int = 1,
    steps: int = 10,
    warmup: int = 2,
) -> Path:
    """Write the report to `output`; `quick` is a smoke run (batch 8, 2 steps)."""
    if quick:
        batch, steps, warmup = 8, 2, 1
    args = argparse.Namespace(batch=batch, threads=threads, steps=steps, warmup=warmup)
    load = os.getloadavg()
    lines = [
        "# Data-parallel steps on CPU (gloo) and per-device statistics",
        "",
        f"Command: `python -m normbench.bench.ddp --batch {batch} --threads "
        f"{threads} --steps {steps} --warmup {warmup}`"
        + (" (`--quick`: a smoke run, not a measurement)" if quick else "")
        + ". Method: see `normbench/bench/ddp.py`.",
        "",
        "## DDP step, ResNet-20 with BN, per-device batch fixed",
        "",
        *ddp_rows(args),
        "",
        "## Per-device statistics in one process (virtual devices), per layer",
        "",
        *scope_rows(args),
        "",
        "## Global vs device statistics under DDP (2 gloo ranks), per layer",
        "",
        f"ResNet-20, {batch} images per rank; global: every norm layer all-reduces the "
        "per-instance moments (forward) and their gradient (backward).",
        "",
        *global_scope_rows(args),
        "",
        *machine_table(describe_machine(load=load)),
        "",
    ]
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text("\n".join(lines))
    return output


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # options left out take run()'s defaults (argparse.SUPPRESS: absent from the namespace)
    unset = argparse.SUPPRESS
    parser.add_argument("--output", type=Path, default=Path("reports/bench_ddp.md"))
    parser.add_argument("--batch", type=int, default=unset, help="images per device")
    parser.add_argument("--threads", type=int, default=unset, help="torch threads per rank")
    parser.add_argument("--steps", type=int, default=unset)
    parser.add_argument("--warmup", type=int, default=unset)
    parser.add_argument("--quick", action="store_true", help="smoke run: batch 8, 2 steps")
    options = vars(parser.parse_args(argv))
    output = options.pop("output")
    print(f"wrote {run(output, **options)}")


if __name__ == "__main__":
    main()
