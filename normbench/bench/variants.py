"""Benchmark: forward+backward time and peak memory of every built-in variant against
`torch.nn.BatchNorm2d`, written as a Markdown table (default: a new folder under `runs/bench/`).

What is measured, and why:
- One training step of the layer alone: `y = layer(x); y.backward(g)` with `x` requiring grad
  and a fixed upstream gradient `g` (no `.sum()`, whose cost would dilute the ratios), grads
  set to None before each step as `zero_grad()` does. Eager mode, training mode.
- Interleaved repeats: every repeat times each layer once, in an order rotated per repeat,
  so drift on a shared machine hits all layers alike. Ratios are the median over repeats of
  the per-repeat ratio to BatchNorm2d timed in the same repeat (paired); times are medians.
- The input is post-ReLU Gaussian (what a norm often sees), which keeps UBN on its condensed
  (BN) path: random zero-mean vectors are nearly orthogonal and would put UBN on its cheaper
  frozen path. UBN's diagnostics after the run are printed under the table.
- Ghost BN's default ghost batch (128) equals BN at N = 128, so it is also run with
  ghost_batch_size = N/4 (four ghost batches); the Ghost BN target is judged on that row.
- BNET and UBN are judged against the sum of their parts, BN plus a depthwise 3x3 conv (with
  bias), both timed in the same repeat.
- Peak memory on CPU: the largest net number of bytes the CPU allocator holds above the
  starting point during one forward+backward, from the allocation events of
  `torch.profiler` (`profile_memory=True`): outputs, saved tensors, temporaries and the new
  gradients; the input, parameters and `g` exist before and are not counted. On CUDA:
  `torch.cuda.max_memory_allocated()` minus the allocation before the step.
- CUDA (when present): bf16 input under bf16 autocast, as after an autocast conv;
  `torch.cuda.synchronize()` before every clock read.
- `compile=True` adds a "(compiled)" row per layer: `torch.compile(layer, fullgraph=True)`
  (Inductor), warmed up (compiled) before timing; its ratio is to eager BN, and BNET's and
  UBN's ratio to the parts is to compiled BN + compiled dwconv. Targets are judged on the
  eager rows.
"""

from __future__ import annotations

import copy
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from normbench.bench.machine import describe_machine
from normbench.engine.memory import quiet_native_stderr
from normbench.errors import UserError

SHAPES = ((128, 64, 32, 32), (128, 256, 8, 8))
QUICK_SHAPES = ((16, 32, 16, 16), (16, 64, 8, 8))
REF, DWCONV = "torch BatchNorm2d", "dwconv3x3"
# variant -> ratio to BN it must not exceed; "parts" variants are judged against BN + dwconv.
RATIO_TARGETS = {"ghost_bn": 1.3, "bgn": 1.8, "iebn": 1.8, "sabn": 1.8, "rbn": 2.2}
PARTS_TARGETS = {"bnet": 1.2, "ubn": 1.2}


@dataclass
class Case:
    """One timed layer: a label, the variant name ("" for the references) and its options."""

    label: str
    variant: str
    options: dict[str, object]
    layer: nn.Module
    times: list[float] = field(default_factory=list)  # seconds per step, one per repeat
    peak_bytes: int = 0
    compiled: bool = False  # a torch.compile copy: judged on no target


@dataclass(frozen=True)
class Settings:
    device: torch.device
    repeats: int
    min_sample_s: float  # each timed sample runs enough steps to last about this long


def run(
    output: Path,
    *,
    quick: bool = False,
    device: str = "auto",
    threads: int | None = None,
    compile: bool = False,
) -> Path:
    """Benchmark every built-in variant on each device; write Markdown to `output`.

    `threads` sets torch's intra-op CPU threads for the run (default: leave torch's choice);
    on a machine shared with other jobs, 1 thread avoids stalls at OpenMP barriers.
    """
    if threads is not None and threads < 1:
        raise UserError(f"--threads must be >= 1, but got {threads}")
    devices = _devices(device)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads or previous)
    try:
        results = [_bench_device(dev, quick, compile) for dev in devices]
        sections = [text for texts, _ in results for text in texts]
        misses = [miss for _, found in results for miss in found]
        text = "\n".join([_header(quick), _summary(misses), *sections])
    finally:
        torch.set_num_threads(previous)  # a test or notebook keeps its own setting
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text)
    return output


def _bench_device(device: torch.device, quick: bool, compile: bool) -> tuple[list[str], list[str]]:
    """The Markdown sections (one per input shape) for one device, and the missed targets."""
    settings = Settings(device, repeats=3 if quick else 15, min_sample_s=0.01 if quick else 0.1)
    sections, misses = [], []
    shapes = QUICK_SHAPES if quick else SHAPES
    for k, shape in enumerate(shapes, 1):
        cases = _build_cases(shape, device, compile)
        print(f"  [{k}/{len(shapes)}] {device} {shape}: {len(cases)} layers", file=sys.stderr)
        _measure(cases, shape, settings)
        text, missed = _section(cases, shape, settings)
        sections.append(text)
        misses += missed
    return sections, misses


def _devices(device: str) -> list[torch.device]:
    if device == "auto":
        return [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    if device not in ("cpu", "cuda"):
        raise UserError(f"--device must be one of auto, cpu, cuda, but got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was given, but torch sees no CUDA device")
    return [torch.device(device)]


def _build_cases(shape: tuple[int, ...], device: torch.device, compile: bool) -> list[Case]:
    """The two references, every built-in with default options, and Ghost BN with N/4
    (with `compile`, each followed by its compiled copy, which is judged on no target)."""
    from normbench.registry import BUILTIN
    from normbench.variants_api import VARIANTS, create_norm, plain_norm

    n, c = shape[0], shape[1]
    torch.manual_seed(0)  # SaBN draws its branch affine at random
    cases = [
        Case(REF, "", {}, nn.BatchNorm2d(c)),
        Case(DWCONV, "", {}, nn.Conv2d(c, c, 3, padding=1, groups=c, bias=True)),
    ]
    configs: list[tuple[str, dict[str, object]]] = [
        (e.name, {}) for e in VARIANTS.entries() if e.source == BUILTIN and plain_norm(e.obj)
    ]
    configs.append(("ghost_bn", {"ghost_batch_size": n // 4}))
    for name, options in sorted(configs, key=lambda item: (item[0], len(item[1]))):
        label = name + "".join(f" {k}={v}" for k, v in options.items())
        cases.append(Case(label, name, options, create_norm(name, c, **options)))
    for case in cases:
        case.layer.to(device).train()
    if not compile:
        return cases
    # Every layer's forward runs through the same function in variants/_core.py, and Dynamo
    # keeps one cache (guarded on the module's type) per function: one entry per compiled
    # layer here (and one per input shape), more than the default limit of 8. The previous
    # shape's compiled layers are no longer timed, so their entries are dropped first.
    torch._dynamo.reset()
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 2 * len(cases))
    with_compiled = []
    for case in cases:
        layer: nn.Module = torch.compile(copy.deepcopy(case.layer), fullgraph=True)  # type: ignore[assignment]
        label = f"{case.label} (compiled)"
        compiled = Case(label, case.variant, case.options, layer, compiled=True)
        with_compiled += [case, compiled]
    return with_compiled


def _inputs(shape: tuple[int, ...], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Post-ReLU input requiring grad and a fixed upstream gradient (bf16 on CUDA)."""
    gen = torch.Generator().manual_seed(0)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    x = torch.randn(shape, generator=gen).relu_().to(device, dtype).requires_grad_(True)
    g = torch.randn(shape, generator=gen).to(device, dtype)
    return x, g


def _step_fn(case: Case, x: torch.Tensor, g: torch.Tensor) -> Callable[[], None]:
    autocast = x.device.type == "cuda"

    def step() -> None:
        x.grad = None
        case.layer.zero_grad(set_to_none=True)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=autocast):
            y = case.layer(x)
        y.backward(g.to(y.dtype))  # a no-op unless a layer returns another dtype

    return step


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _measure(cases: list[Case], shape: tuple[int, ...], settings: Settings) -> None:
    """Warm up, pick steps per sample, then time interleaved repeats; finally peak memory."""
    x, g = _inputs(shape, settings.device)
    steps = [_step_fn(case, x, g) for case in cases]
    counts = []
    for step in steps:
        step()  # warm-up: first-call allocations and kernel selection
        fastest = min(_time(step, 1, settings.device) for _ in range(3))
        counts.append(max(1, round(settings.min_sample_s / fastest)))
    for r in range(settings.repeats):
        for i in _rotation(len(cases), r):
            cases[i].times.append(_time(steps[i], counts[i], settings.device))
    for case, step in zip(cases, steps, strict=True):
        x.grad = None  # start from no gradients, as after zero_grad()
        case.layer.zero_grad(set_to_none=True)
        case.peak_bytes = _peak_bytes(step, settings.device)


def _rotation(n: int, r: int) -> list[int]:
    return [(r + i) % n for i in range(n)]


def _time(step: Callable[[], None], count: int, device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    for _ in range(count):
        step()
    _sync(device)
    return (time.perf_counter() - start) / count


def _peak_bytes(step: Callable[[], None], device: torch.device) -> int:
    if device.type == "cuda":
        _sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        step()
        _sync(device)
        return torch.cuda.max_memory_allocated(device) - base
    from torch.profiler import ProfilerActivity, profile

    with (
        quiet_native_stderr(),
        profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof,
    ):
        step()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    current = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        current += event.nbytes()  # positive: allocation, negative: free
        peak = max(peak, current)
    return peak


# -- report ---------------------------------------------------------------------------------
def _paired_median(num: Case, den: list[Case]) -> float:
    """Median over repeats of num's time over the summed time of `den` in the same repeat."""
    return statistics.median(t / sum(d.times[r] for d in den) for r, t in enumerate(num.times))


def _target(case: Case, ref: Case, dw: Case) -> tuple[str, str, float | None]:
    """(target text, pass/miss, ratio to the parts) for a case; a compiled case gets its
    ratio to the parts (`ref` and `dw` then being the compiled references) and no target."""
    if case.compiled:
        parts = _paired_median(case, [ref, dw]) if case.variant in PARTS_TARGETS else None
        return "-", "", parts
    if case.variant in RATIO_TARGETS:
        limit = RATIO_TARGETS[case.variant]
        ok = _paired_median(case, [ref]) <= limit
        return f"<= {limit}x BN", "pass" if ok else "**miss**", None
    if case.variant in PARTS_TARGETS:
        limit = PARTS_TARGETS[case.variant]
        parts = _paired_median(case, [ref, dw])
        return f"<= {limit}x (BN + dwconv)", "pass" if parts <= limit else "**miss**", parts
    return "-", "", None


def _section(
    cases: list[Case], shape: tuple[int, ...], settings: Settings
) -> tuple[str, list[str]]:
    """One device and shape: the Markdown table, and a line per missed target."""
    by_label = {case.label: case for case in cases}
    dtype = "bf16 autocast" if settings.device.type == "cuda" else "float32"
    where = f"{settings.device.type}, input {'x'.join(map(str, shape))}, {dtype}"
    misses = []
    lines = [
        f"## {where}",
        "",
        f"{settings.repeats} interleaved repeats; ms = median forward+backward time "
        f"(q25-q75 in brackets); ratio = median paired ratio to {REF}.",
        "",
        "| layer | ms | ratio to BN | ratio to BN + dwconv | peak MB | target | result |",
        "|---|---:|---:|---:|---:|---|---|",
    ]
    for case in cases:
        suffix = " (compiled)" if case.compiled else ""
        ref = by_label[REF]  # every ratio to BN is to eager BN
        parts_ref, dw = by_label[REF + suffix], by_label[DWCONV + suffix]
        target, result, parts = _target(case, parts_ref, dw)
        ratio = _paired_median(case, [ref])
        if result == "**miss**":
            got = f"{ratio:.2f}x BN" if parts is None else f"{parts:.2f}x (BN + dwconv)"
            misses.append(f"- {where}: **{case.label}** {got}, target {target}")
        q = statistics.quantiles([t * 1e3 for t in case.times], n=4, method="inclusive")
        lines.append(
            f"| {case.label} | {statistics.median(case.times) * 1e3:.2f} "
            f"({q[0]:.2f}-{q[2]:.2f}) | {ratio:.2f} | "
            f"{'' if parts is None else f'{parts:.2f}'} | {case.peak_bytes / 2**20:.1f} | "
            f"{target} | {result} |"
        )
    lines += ["", *_diagnostics(cases), ""]
    return "\n".join(lines), misses


def _summary(misses: list[str]) -> str:
    head = "## Targets missed\n\n"
    return head + ("\n".join(misses) if misses else "None: every target is met.") + "\n"


def _diagnostics(cases: list[Case]) -> list[str]:
    """Layers with a `diagnostics()` hook (UBN): which path they took during the run."""
    out = []
    for case in cases:
        diagnostics = getattr(getattr(case.layer, "_orig_mod", case.layer), "diagnostics", None)
        if diagnostics is not None:
            items = ", ".join(f"{k}={v:g}" for k, v in diagnostics().items())
            out.append(f"- {case.label} after the run: {items}")
    return out


def _header(quick: bool) -> str:
    lines = ["# Normalization variants: forward+backward time and peak memory", ""]
    if quick:
        lines += ["**Quick mode** (smaller inputs, 3 repeats): a smoke run, not a result.", ""]
    lines += [f"- {key}: {value}" for key, value in describe_machine().items()]
    lines += ["", _METHOD, ""]
    return "\n".join(lines)


_METHOD = (
    "Method: one layer alone in training mode, eager (and, with --compile, a "
    "`torch.compile(fullgraph=True)` row per layer), `y = layer(x); y.backward(g)` with "
    "grads set to None before each step; post-ReLU Gaussian input; layers timed interleaved "
    "(order rotated per repeat). Peak MB is the most memory the allocator held above the "
    "start of the step (CPU: `torch.profiler` allocation events; CUDA: "
    "`max_memory_allocated`), excluding the input, parameters and upstream gradient. "
    "Ghost BN is also run with ghost_batch_size = N/4; its target is judged on that row. "
    "BNET and UBN are judged against BN + depthwise 3x3 conv timed in the same repeats. "
    "The machine may be shared with other jobs: read the q25-q75 spread before the ratios."
)
