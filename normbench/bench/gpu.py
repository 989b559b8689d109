"""`normbench bench gpu`: what only a GPU can show, in one Markdown report (minutes, one GPU).

1. Every built-in layer, training mode, under bf16 autocast + channels_last +
   `torch.compile(fullgraph=True)` (Inductor) against the same layer eager in fp32 on the same
   input: the largest output, input-gradient and buffer differences (relative to |ref| + 1),
   compile time and step times (`torch.cuda.synchronize()` before each clock read).
2. The training-step benchmark (`normbench.bench.train_step`) on CUDA.
3. A 2-epoch quickstart (`normbench run suites/quickstart.yaml --max-epochs 2`) on CUDA, from
   the checkout's `suites/` folder, in a temporary run directory.

Without a CUDA device the command prints one line and exits 0 (nothing to check). The layer
comparison (`compare_layer`) takes the device and compile backend as arguments, so the test
suite runs the same code on CPU with a cheap backend.
"""

from __future__ import annotations

import copy
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from normbench.bench.machine import describe_machine

SHAPE = (64, 64, 32, 32)
QUICK_SHAPE = (16, 32, 16, 16)
# bf16 has 8 significant bits: a difference within a few bf16 steps of |ref| + 1 is rounding.
TOLERANCE = 0.05
# The suite asks for no GPU, and Ray hides every GPU from a trial that asked for none
# (CUDA_VISIBLE_DEVICES=""): half a GPU per trial (two at a time), one seed, 2 epochs.
QUICKSTART_FLAGS = ["--max-epochs", "2", "--set", "resources.gpus=0.5", "--set", "seeds=1"]
NO_GPU = "normbench bench gpu: no CUDA device visible to torch, nothing to check (exit 0)."


@dataclass(frozen=True)
class LayerCheck:
    """One layer: bf16 + channels_last + compiled vs eager fp32 (differences relative to
    |reference| + 1; times in ms per forward+backward step; compile in s)."""

    name: str
    output_diff: float
    grad_diff: float
    buffer_diff: float
    compile_s: float
    eager_ms: float
    compiled_ms: float

    @property
    def ok(self) -> bool:
        return max(self.output_diff, self.grad_diff, self.buffer_diff) <= TOLERANCE


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float(((a - b).abs() / (b.abs() + 1)).max()) if a.numel() else 0.0


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def compare_layer(
    name: str,
    shape: tuple[int, int, int, int],
    device: torch.device,
    *,
    backend: str = "inductor",
    repeats: int = 5,
) -> LayerCheck:
    """Check the registry variant `name` (default options) as described in the module doc."""
    from normbench.variants_api import create_norm

    # Every layer's forward is one function (variants/_core.py) and Dynamo caches per function,
    # at most `recompile_limit` (8) entries: without a reset the 9th layer fails to compile.
    torch._dynamo.reset()
    torch.manual_seed(0)
    reference = create_norm(name, shape[1]).to(device).train()
    candidate = copy.deepcopy(reference).to(memory_format=torch.channels_last)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=gen).relu_().to(device)
    g = torch.randn(shape, generator=gen).to(device)
    x_bf16 = x.to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    compiled = torch.compile(candidate, backend=backend, fullgraph=True)

    def eager_step() -> tuple[torch.Tensor, torch.Tensor]:
        xr = x_bf16.float().contiguous().requires_grad_()
        y = reference(xr)
        y.backward(g)
        assert xr.grad is not None
        return y, xr.grad

    def compiled_step() -> tuple[torch.Tensor, torch.Tensor]:
        xc = x_bf16.detach().clone().requires_grad_()
        with torch.autocast(device.type, dtype=torch.bfloat16):
            y = compiled(xc)
        y.backward(g.to(y.dtype))
        assert xc.grad is not None
        return y, xc.grad

    _sync(device)
    start = time.perf_counter()
    y_c, grad_c = compiled_step()  # first call compiles
    _sync(device)
    compile_s = time.perf_counter() - start
    y_e, grad_e = eager_step()
    buffers = [
        _rel(bc, be)
        for be, bc in zip(reference.buffers(), candidate.buffers(), strict=True)
        if be.is_floating_point()
    ]
    check = dict(
        output_diff=_rel(y_c, y_e),
        grad_diff=_rel(grad_c, grad_e),
        buffer_diff=max(buffers, default=0.0),
    )
    times: dict[str, list[float]] = {"eager": [], "compiled": []}
    for _ in range(repeats):
        for label, step in (("eager", eager_step), ("compiled", compiled_step)):
            _sync(device)
            start = time.perf_counter()
            step()
            _sync(device)
            times[label].append(time.perf_counter() - start)
    return LayerCheck(
        name,
        **check,
        compile_s=compile_s,
        eager_ms=statistics.median(times["eager"]) * 1e3,
        compiled_ms=statistics.median(times["compiled"]) * 1e3,
    )


def layer_section(checks: list[LayerCheck], shape: tuple[int, ...], device: torch.device) -> str:
    lines = [
        f"## Layers: bf16 autocast + channels_last + compile vs eager fp32 ({device.type}, "
        f"input {'x'.join(map(str, shape))}, training mode)",
        "",
        f"Differences are max |a - b| / (|b| + 1); 'ok' means all three <= {TOLERANCE} (a few "
        "bf16 rounding steps). ms = median forward+backward step.",
        "",
        "| layer | output diff | input-grad diff | buffer diff | compile s | eager fp32 ms "
        "| compiled bf16 ms | speed-up | result |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for c in checks:
        lines.append(
            f"| {c.name} | {c.output_diff:.2e} | {c.grad_diff:.2e} | {c.buffer_diff:.2e} | "
            f"{c.compile_s:.1f} | {c.eager_ms:.2f} | {c.compiled_ms:.2f} | "
            f"{c.eager_ms / c.compiled_ms:.2f}x | {'ok' if c.ok else '**differs**'} |"
        )
    return "\n".join(lines) + "\n"


def _quickstart(device: torch.device) -> str:
    """Run the 2-epoch quickstart in a temporary directory; its leaderboard, or the error."""
    suite = Path("suites/quickstart.yaml")
    head = "## Quickstart, 2 epochs on CUDA\n\n"
    if not suite.is_file():
        return head + f"Skipped: {suite} not found (run from a normbench checkout).\n"
    with tempfile.TemporaryDirectory(prefix="nbgpu") as tmp:
        out = Path(tmp) / "quickstart"
        cmd = [sys.executable, "-m", "normbench", "run", str(suite), "-o", str(out)]
        cmd += QUICKSTART_FLAGS
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        wall = time.perf_counter() - start
        text = head + f"`{' '.join(cmd[1:])}`: exit {proc.returncode}, {wall:.0f} s.\n\n"
        board = out / "report" / "leaderboard.md"
        if proc.returncode != 0 or not board.is_file():
            return text + "```\n" + (proc.stderr or proc.stdout)[-3000:] + "\n```\n"
        return (
            text + _devices_line(out / "epochs.jsonl") + board.read_text().replace("\n# ", "\n### ")
        )


def _devices_line(epochs: Path) -> str:
    """Which devices the quickstart's epochs ran on (records' `device`): CUDA, or a warning."""
    from normbench.results.store import read_jsonl

    devices = sorted({rec.get("device", "?") for rec in read_jsonl(epochs)})
    if devices and all(d.startswith("cuda") for d in devices):
        return f"Every epoch ran on {', '.join(devices)}.\n\n"
    return f"**Not on CUDA**: the epochs ran on {', '.join(devices) or 'nothing'}.\n\n"


def run(output: Path, *, quick: bool = False) -> Path | None:
    """Write the GPU report to `output`; None (and one printed line) without a CUDA device."""
    if not torch.cuda.is_available():
        print(NO_GPU)
        return None
    return write_report(output, torch.device("cuda"), quick=quick)


def write_report(
    output: Path,
    device: torch.device,
    *,
    quick: bool = False,
    backend: str = "inductor",
    quickstart: bool = True,
) -> Path:
    """The report of `run` on `device`: the tests run it on the CPU with a cheap `backend` and
    without the quickstart (which `normbench run` tests cover)."""
    from normbench.bench import train_step
    from normbench.variants import BUILTIN_VARIANTS

    shape = QUICK_SHAPE if quick else SHAPE
    checks = [compare_layer(name, shape, device, backend=backend) for name in BUILTIN_VARIANTS]
    with tempfile.TemporaryDirectory(prefix="nbgpu") as tmp:
        step = train_step.run(Path(tmp) / "step.md", quick=quick, devices=[device.type])
        step_report = step.read_text()
    machine = "\n".join(f"- {k}: {v}" for k, v in describe_machine().items())
    text = "\n".join(
        [
            "# GPU check",
            "",
            machine,
            "",
            layer_section(checks, shape, device),
            f"## Training step on {device.type} (normbench.bench.train_step)",
            "",
            step_report.replace("\n# ", "\n### "),
            _quickstart(device) if quickstart else "",
        ]
    )
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text)
    return output
