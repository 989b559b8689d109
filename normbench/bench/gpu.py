"""`normbench bench gpu`: the device check, one PASS/FAIL/SKIP line per check and one Markdown
report, in about `BUDGET_S` seconds on one GPU: a check that would start later is skipped, and
a per-layer loop stops at the deadline, each saying so (the layer in progress finishes).

Checks (per layer: every built-in at its default options, one bf16 + channels_last training
step; `normbench.bench.gpu_layers`):
1. `0.5-GPU DDP refusal`: a suite giving two DDP ranks half a GPU each is refused at
   validation, pointing to `train.parallel: virtual`.
2. `channels_last per layer`: output and input gradient stay channels_last.
3. `compiled matches eager per layer`: compiled bf16 against eager fp32 (Inductor on CUDA,
   `aot_eager` on a CPU), within bf16 rounding.
4. `host syncs per layer` (CUDA): none in a training step, under torch's sync debug mode.
5. `bytes per layer against the traffic model`: `normbench.traffic.measure_layer`, a bf16 step
   counted at the dispatcher (on FakeTensors of CUDA without a GPU); at most 2x BN's bytes
   (BNET and UBN: plus their depthwise convolution) and no host sync; the line also names
   the layers over 4x BN's kernels plus the convolutions' (the compiled coefficient regions'
   as Inductor's Triton backend fuses them), which the report lists (not a failure).
6. `peak memory after warm-up` (CUDA): the engine's meter equals a steady step's allocator
   peak, without the first step's cuDNN autotuning.
7. `killed and resumed trial`: a deterministic 2-epoch trial stopped after epoch 1 and resumed
   from its checkpoint (RNGs scrambled in between) yields the uninterrupted records.
8. `quickstart slice on CUDA`: `normbench run suites/quickstart.yaml` for one short epoch at
   half a GPU per trial; every record on CUDA.
9. `2-rank NCCL trial equals its virtual twin` (2+ GPUs): every step's loss.
10. `device time per layer vs BN` (CUDA): eager and compiled, from the profiler; at most
   `TIME_LIMIT` x BN's (BNET and UBN: x BN plus their depthwise convolution).

Without CUDA the CUDA checks are skipped, one line each; the rest run on the CPU, which is how
the tests run the command's whole code path (`write_report` on the CPU).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from normbench.bench import gpu_layers as gl
from normbench.bench.gpu_base import Context, Result, table, verdict
from normbench.bench.machine import describe_machine

__all__ = ["Check", "CheckFailed", "Context", "Result", "run", "table", "verdict"]

BUDGET_S = 300.0
SHAPE = (32, 64, 32, 32)
QUICK_SHAPE = (8, 16, 8, 8)


@dataclass(frozen=True)
class Check:
    name: str
    result: Result

    def line(self) -> str:
        return f"{self.result.status:<4}  {self.name}: {self.result.summary}"


# ------------------------------------------------------------------------- the checks
def check_refusal(ctx: Context) -> Result:
    from normbench.suite.loader import SuiteError, load_suite

    text = (
        "version: 1\nname: half\ndataset: {name: synthetic}\nbackbones: [resnet20]\n"
        "variants: [bn]\nbatch_sizes: [8]\ntrain: {epochs: 1, devices: 2}\n"
        "resources: {cpus: 1, gpus: 0.5}\n"
    )
    with tempfile.TemporaryDirectory(prefix="nbgpu") as tmp:
        path = Path(tmp) / "half.yaml"
        path.write_text(text)
        try:
            load_suite(path)
        except SuiteError as exc:
            message = str(exc).splitlines()[0]
            if "train.parallel: virtual" in message:
                return Result("PASS", "refused at validation, pointing to train.parallel: virtual")
            return Result("FAIL", f"refused without pointing to train.parallel: virtual: {message}")
    return Result("FAIL", "a suite giving two DDP ranks half a GPU each was accepted")


def check_channels_last(ctx: Context) -> Result:
    cases = list(ctx.cases())
    lost = [case.name for case in cases if not gl.keeps_channels_last(case)]
    bad = [f"lost by {', '.join(lost)}"] if lost else []
    return verdict(bad, f"kept by all {len(cases)}", ctx=ctx)


def check_compiled(ctx: Context) -> Result:
    rows, bad = [], []
    for case in ctx.cases():
        diff = gl.compiled_matches_eager(case, ctx.backend)
        rows.append([case.name, f"{diff:.2e}"])
        if not diff <= gl.TOLERANCE:
            bad.append(f"{case.name} differs by {diff:.2e}")
    details = table(["layer", "max relative difference (output, input grad, buffers)"], rows)
    return verdict(bad, f"all {len(rows)} within {gl.TOLERANCE} ({ctx.backend})", details, ctx)


def check_host_syncs(ctx: Context) -> Result:
    counts = {case.name: gl.host_syncs(case) for case in ctx.cases()}
    bad = [f"{n}: {c}" for n, c in counts.items() if c]
    details = table(["layer", "host syncs per step"], [[n, str(c)] for n, c in counts.items()])
    return verdict(bad, f"none in any of {len(counts)}", details, ctx)


def check_traffic(ctx: Context) -> Result:
    """Each layer's bf16 training step counted at the dispatcher (`normbench.traffic`): on the
    GPU when there is one, else on FakeTensors of CUDA (the code path a GPU takes). Bytes and
    host syncs decide (the traffic model); kernels over their bound are named, not failed."""
    from normbench.traffic import measure_layer

    rows, bad, launches, simulated = [], [], [], False
    for name in ctx.names():
        t = measure_layer(name, shape=ctx.shape, dtype=torch.bfloat16, device="cuda")
        simulated = simulated or t.simulated
        rows.append([name, f"{t.norm_bytes / t.bound_bytes * 2:.2f}", str(t.kernels),
                     str(t.bound_kernels), str(t.host_syncs), str(t.host_copies),
                     "yes" if t.within_bound else "no"])  # fmt: skip
        if not t.within_traffic_bound:
            bad.append(f"{name} moves {t.norm_bytes / 2**20:.1f} MiB (bound "
                       f"{t.bound_bytes / 2**20:.1f}), {t.host_syncs} host syncs")  # fmt: skip
        if t.kernels > t.bound_kernels:
            launches.append(f"{name} {t.kernels} > {t.bound_kernels}")
    where = "simulated CUDA (FakeTensors)" if simulated else "CUDA"
    head = ["layer", "activation bytes x BN", "kernels", "kernel bound", "host syncs",
            "host copies", "within bound"]  # fmt: skip
    shape = "x".join(map(str, ctx.shape))  # counts depend on it (--quick: a smaller input)
    good = f"all {len(rows)} within 2x BN's bytes with no host sync ({where}, {shape} bf16)"
    if launches:
        good += f"; kernels over 4x BN's plus convolutions: {', '.join(launches)}"
    return verdict(bad, good, table(head, rows), ctx)


CheckFn = Callable[[Context], Result]


def checks() -> list[tuple[str, CheckFn, bool]]:
    """(name, check, needs CUDA) in the order they run: cheap and essential first, the
    compile-heavy timing last (it stops at the budget layer by layer)."""
    from normbench.bench import gpu_runs as runs

    return [
        ("0.5-GPU DDP refusal", check_refusal, False),
        ("channels_last per layer", check_channels_last, False),
        ("compiled matches eager per layer", check_compiled, False),
        ("host syncs per layer", check_host_syncs, True),
        ("bytes per layer against the traffic model", check_traffic, False),
        ("peak memory after warm-up", runs.check_peak_memory, True),
        ("killed and resumed trial", runs.check_resume, False),
        ("quickstart slice on CUDA", runs.check_quickstart, True),
        ("2-rank NCCL trial equals its virtual twin", runs.check_nccl, True),
        ("device time per layer vs BN", runs.check_layer_times, True),
    ]


def run_checks(ctx: Context, *, budget_s: float = BUDGET_S, echo: bool = True) -> list[Check]:
    """Every check in order; CUDA checks skipped without CUDA, and any check that would start
    after `budget_s` seconds skipped. Each line is printed as its check ends (`echo`)."""
    started, done = time.monotonic(), []
    ctx.deadline = started + budget_s
    for name, fn, needs_cuda in checks():
        if needs_cuda and not ctx.cuda:
            result = Result("SKIP", "needs a CUDA device; none is visible to torch")
        elif time.monotonic() > ctx.deadline:
            result = Result("SKIP", f"the {budget_s:.0f} s time budget was spent")
        else:
            result = fn(ctx)
        done.append(Check(name, result))
        if echo:
            print(done[-1].line(), flush=True)
    return done


def report(checks_done: list[Check], ctx: Context, seconds: float) -> str:
    machine = "\n".join(f"- {k}: {v}" for k, v in describe_machine().items())
    shape = "x".join(map(str, ctx.shape))
    parts = [
        "# Device check (`normbench bench gpu`)",
        "",
        machine,
        "",
        f"Device {ctx.device}, layer input {shape} (bf16 autocast + channels_last), compile "
        f"backend {ctx.backend}; {seconds:.0f} s.",
        "",
        table(
            ["result", "check", "summary"],
            [[c.result.status, c.name, c.result.summary] for c in checks_done],
        ),  # fmt: skip
    ]
    for c in checks_done:
        if c.result.details:
            parts += [f"## {c.name}", "", c.result.details]
    return "\n".join(parts)


def write_report(
    output: Path,
    device: torch.device,
    *,
    quick: bool = False,
    backend: str | None = None,
    budget_s: float = BUDGET_S,
) -> tuple[Path, list[Check]]:
    """Run every check on `device` and write the report; (its path, the checks)."""
    from normbench.variants import BUILTIN_VARIANTS, plain_norm

    backend = backend or ("inductor" if device.type == "cuda" else "aot_eager")
    names = [n for n, cls in BUILTIN_VARIANTS.items() if plain_norm(cls)]  # norm_layer(C)s
    ctx = Context(device, QUICK_SHAPE if quick else SHAPE, backend, names)
    started = time.monotonic()
    done = run_checks(ctx, budget_s=budget_s)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(report(done, ctx, time.monotonic() - started))
    return output, done


def run(output: Path, *, quick: bool = False) -> Path:
    """The device check on CUDA when there is one, else on the CPU (CUDA checks skipped)."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    path, done = write_report(output, device, quick=quick)
    failed = [c.name for c in done if c.result.status == "FAIL"]
    if failed:
        raise CheckFailed(f"{len(failed)} check(s) failed: {', '.join(failed)}; see {path}")
    return path


class CheckFailed(RuntimeError):
    """At least one check of the device check failed (the report says which and why)."""
