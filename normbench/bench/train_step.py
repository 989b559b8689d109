"""Benchmark: one full training step (forward, backward, SGD step) of whole backbones with each
built-in variant against BN, written as Markdown (default `reports/bench_train_step.md`).

What is measured, and why:
- The step `run_trial` takes: forward under the trial's autocast, cross-entropy, zero_grad,
  backward, SGD (momentum 0.9, weight decay 5e-4). The optimiser and runtime come from
  `normbench.engine` so the numbers describe the harness's own loop, not a copy of it.
- Backbones: resnet20 (small) and resnet18 (standard, CIFAR layout) at 32x32, 100 classes,
  CIFAR-shaped random inputs (standard normal, as after normalisation) and random labels.
  Batch 64 on CPU, 128 on CUDA (bf16 autocast, channels_last, as trials run there).
- Every built-in variant with default options, plus Ghost BN with ghost_batch_size = N/4
  (the default 128 equals BN at these batch sizes).
- Interleaved repeats: each repeat times every variant once, in an order rotated per repeat,
  so drift on a shared machine hits all alike. Other processes only ever add time, so the
  fastest sample (min over repeats) is the estimate least disturbed by them: ms/step,
  images/s and the target ratio use it. The median of the per-repeat paired ratio is shown
  beside it; when the two disagree, the machine was too busy to judge the target.
- Target (ResNet-18 at 32x32): no variant's step exceeds 1.5x BN's.
- UBN's path depends on its similarity decision; the share of its steps that took the batch
  (BN) path is shown under the table, since its frozen path is cheaper.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from normbench.bench.machine import describe_machine
from normbench.engine.device import Runtime, build_runtime, synchronize
from normbench.engine.recipe import build_optimizer
from normbench.spec import Recipe

BACKBONES = ("resnet20", "resnet18")
TARGET_BACKBONE, TARGET_RATIO = "resnet18", 1.5
NUM_CLASSES, IMAGE_SIZE = 100, 32


@dataclass
class Case:
    label: str
    model: nn.Module
    step: Callable[[], None]
    times: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class Plan:
    batch: int
    repeats: int
    steps: int  # timed steps per sample
    warmup: int


def run(output: Path, *, quick: bool = False, devices: list[str] | None = None) -> Path:
    """Time every variant on each backbone and device (default: the CPU, and CUDA when there
    is one); write Markdown to `output`."""
    if devices is None:
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    sections = []
    for name in devices:
        rt = build_runtime(name, amp=None, channels_last=None, compile=False, num_threads=None)
        plan = _plan(rt, quick)
        for backbone in BACKBONES:
            cases = _cases(backbone, rt, plan)
            _measure(cases, rt, plan)
            sections.append(_section(backbone, cases, rt, plan))
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(_header(quick) + "\n".join(sections))
    return output


def _plan(rt: Runtime, quick: bool) -> Plan:
    if quick:
        return Plan(batch=8, repeats=1, steps=1, warmup=1)
    if rt.device.type == "cuda":
        return Plan(batch=128, repeats=5, steps=20, warmup=5)
    return Plan(batch=64, repeats=5, steps=1, warmup=1)  # a shared 2-core CPU is slow


def _configs(batch: int) -> list[tuple[str, str, dict[str, Any]]]:
    """(label, variant, options): BN first, then every built-in, then Ghost BN at N/4."""
    from normbench.registry import BUILTIN
    from normbench.variants_api import VARIANTS, plain_norm

    names = sorted(
        e.name
        for e in VARIANTS.entries()
        if e.source == BUILTIN and e.name != "bn" and plain_norm(e.obj)
    )
    configs: list[tuple[str, str, dict[str, Any]]] = [("bn", "bn", {})]
    configs += [(n, n, {}) for n in names]
    gbs = max(batch // 4, 2)
    configs.append((f"ghost_bn ghost_batch_size={gbs}", "ghost_bn", {"ghost_batch_size": gbs}))
    return configs


def _cases(backbone: str, rt: Runtime, plan: Plan) -> list[Case]:
    from normbench.models import create_backbone
    from normbench.variants_api import norm_layer

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(plan.batch, 3, IMAGE_SIZE, IMAGE_SIZE, generator=gen)
    y = torch.randint(0, NUM_CLASSES, (plan.batch,), generator=gen)
    x, y = rt.to_input(x.to(rt.device)), y.to(rt.device)
    cases = []
    for label, variant, options in _configs(plan.batch):
        torch.manual_seed(0)
        model = create_backbone(backbone, NUM_CLASSES, norm_layer(variant, **options))
        forward = rt.prepare(model)
        model.train()
        cases.append(Case(label, model, _step_fn(forward, model, rt, x, y)))
    return cases


def _step_fn(
    forward: nn.Module, model: nn.Module, rt: Runtime, x: torch.Tensor, y: torch.Tensor
) -> Callable[[], None]:
    opt = build_optimizer(model, Recipe(lr=0.01))

    def step() -> None:
        with rt.autocast():
            logits = forward(x)
        loss = F.cross_entropy(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def _measure(cases: list[Case], rt: Runtime, plan: Plan) -> None:
    for case in cases:
        for _ in range(plan.warmup):
            case.step()
    for r in range(plan.repeats):
        for i in range(len(cases)):
            case = cases[(r + i) % len(cases)]
            synchronize(rt.device)
            start = time.perf_counter()
            for _ in range(plan.steps):
                case.step()
            synchronize(rt.device)
            case.times.append((time.perf_counter() - start) / plan.steps)


def _section(backbone: str, cases: list[Case], rt: Runtime, plan: Plan) -> str:
    bn = cases[0]
    amp = "bf16 autocast, channels_last" if rt.amp else "fp32"
    lines = [
        f"## {backbone}, {rt.device.type}, batch {plan.batch}, {IMAGE_SIZE}x{IMAGE_SIZE}, {amp}",
        "",
        f"n = {plan.repeats} interleaved repeats of {plan.steps} step(s); "
        f"{plan.warmup} warm-up step(s) per variant.",
        "",
        "| variant | ms/step (min) | images/s | ratio to BN (min) "
        "| ratio to BN (median, paired) | target |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for case in cases:
        paired = statistics.median(t / b for t, b in zip(case.times, bn.times, strict=True))
        step = min(case.times)
        ratio = step / min(bn.times)
        target = ""
        if backbone == TARGET_BACKBONE:
            target = "ok" if ratio <= TARGET_RATIO else f"EXCEEDS {TARGET_RATIO}x"
        speed = f"{step * 1e3:.1f} | {plan.batch / step:.0f}"
        lines.append(f"| {case.label} | {speed} | {ratio:.2f} | {paired:.2f} | {target} |")
    lines += ["", _ubn_note(cases), ""]
    return "\n".join(lines)


def _ubn_note(cases: list[Case]) -> str:
    """Share of UBN's training steps (over all layers) that used batch statistics."""
    ubn = next((c for c in cases if c.label == "ubn"), None)
    if ubn is None:
        return ""
    batch = frozen = 0.0
    for module in ubn.model.modules():
        diag = getattr(module, "diagnostics", None)
        if callable(diag):
            d = diag()
            batch += float(d.get("batch_steps", 0.0))
            frozen += float(d.get("frozen_steps", 0.0))
    if batch + frozen == 0:
        return "UBN: no diagnostics."
    share = 100.0 * batch / (batch + frozen)
    return f"UBN took the batch-statistics path in {share:.0f}% of its layer-steps."


def _header(quick: bool) -> str:
    return "\n".join(
        [
            "# Training-step benchmark: every variant vs BN in whole backbones",
            "",
            f"Written by `normbench bench step{' --quick' if quick else ''}` "
            f"on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC. "
            + ("QUICK smoke run: numbers are not meaningful. " if quick else "")
            + "See `normbench/bench/train_step.py` for what is timed.",
            "",
            "Machine: " + _machine(),
            "",
            "",
        ]
    )


def _machine() -> str:
    return "; ".join(f"{key} {value}" for key, value in describe_machine().items())
