"""`normbench bench ...`: the benchmark commands, each writing one Markdown report.

    normbench bench variants  -> bench_variants.md    (normbench.bench.variants)
    normbench bench loader    -> bench_loader.md      (normbench.bench.loader)
    normbench bench step      -> bench_train_step.md  (normbench.bench.train_step)
    normbench bench harness   -> bench_harness.md     (normbench.bench.harness)
    normbench bench ddp       -> bench_ddp.md         (normbench.bench.ddp; gloo on CPU)
    normbench bench traffic   -> bench_traffic.md     (normbench.bench.traffic; bytes,
                                                       kernels and host syncs per layer on the
                                                       accelerator path, simulated without one;
                                                       --compile: bench_traffic_compiled.md,
                                                       Inductor's count per layer)
    normbench bench gpu       -> bench_gpu.md         (normbench.bench.gpu: the device check;
                                                       CUDA checks skipped without a GPU)

Each report goes to a fresh folder `runs/bench/<name>-<UTC time>/` unless `--output FILE` says
otherwise, so a run from the repository root never overwrites the committed `reports/` copy;
regenerating one on a quiet machine is `normbench bench variants --output
reports/bench_variants.md`. Each benchmark module has `run(output: Path, *, quick: bool = False)
-> Path`; it is imported only when its command runs, so `normbench --help` stays fast.
"""

from __future__ import annotations

import importlib
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

QuickOption = Annotated[
    bool, typer.Option("--quick", help="Fewer repeats and smaller inputs: a smoke run.")
]
OutputOption = Annotated[
    Path | None,
    typer.Option(
        "--output", help="Markdown file to write (default: a new folder under runs/bench/)."
    ),
]


def register(app: typer.Typer) -> None:
    bench = typer.Typer(help="Benchmarks that each write a Markdown report.")
    bench.command("variants")(variants_command)
    _add_simple(bench, "loader", "normbench.bench.loader", "bench_loader.md",
                "Time the data loaders (images/s).")  # fmt: skip
    _add_simple(bench, "step", "normbench.bench.train_step", "bench_train_step.md",
                "Time one training step per variant and backbone.")  # fmt: skip
    _add_simple(bench, "harness", "normbench.bench.harness", "bench_harness.md",
                "Measure the harness overhead (driver, store, scheduling).")  # fmt: skip
    _add_simple(bench, "ddp", "normbench.bench.ddp", "bench_ddp.md",
                "Time DDP steps (1 vs 2 gloo ranks) and statistics scope per layer.")  # fmt: skip
    bench.command("traffic")(traffic_command)
    bench.command("gpu")(gpu_command)
    app.add_typer(bench, name="bench")


def default_output(name: str, filename: str, now: float | None = None) -> Path:
    """`runs/bench/<name>-<YYYYmmdd-HHMMSS UTC>/<filename>`: a folder of its own per run."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(now))
    return Path("runs") / "bench" / f"{name}-{stamp}" / filename


def _run(name: str, output: Path, runner: Any, **kwargs: Any) -> None:
    """Say what runs and where it writes before the minutes of silence, then how long it took."""
    started = time.monotonic()
    print(f"normbench bench {name}: running; the report goes to {output}", file=sys.stderr)
    written = runner(output, **kwargs)
    print(f"wrote {written} in {time.monotonic() - started:.0f} s")


def variants_command(
    output: OutputOption = None,
    quick: QuickOption = False,
    device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")] = "auto",
    threads: Annotated[
        int | None, typer.Option("--threads", help="torch CPU threads (default: torch's).")
    ] = None,
    compile: Annotated[
        bool, typer.Option("--compile", help="Add a torch.compile(fullgraph=True) row per layer.")
    ] = False,
) -> None:
    """Time forward+backward and peak memory of every built-in variant against BatchNorm2d."""
    from normbench.bench.variants import run

    output = output or default_output("variants", "bench_variants.md")
    _run("variants", output, run, quick=quick, device=device, threads=threads, compile=compile)


def traffic_command(
    output: OutputOption = None,
    quick: QuickOption = False,
    device: Annotated[
        str,
        typer.Option(
            "--device", help="Device whose code path is measured (cuda: simulated without a GPU)."
        ),
    ] = "cuda",
    plugin: Annotated[
        list[Path] | None,
        typer.Option("--plugin", help="Python file that registers variants (repeatable)."),
    ] = None,
    layers: Annotated[
        str | None,
        typer.Option("--layers", help="Comma-separated variant names (default: every one)."),
    ] = None,
    compile: Annotated[
        bool,
        typer.Option(
            "--compile",
            help="Each layer compiled whole by Inductor: its kernels and bytes accessed "
            "(20-60 s a layer on a CPU; default layers bn, iebn, gn).",
        ),
    ] = False,
) -> None:
    """Bytes read and written, kernels and host syncs of one training step per layer (every
    registered variant) on the accelerator path, against 2x BN's bytes and 4x its kernels;
    with --compile, Inductor's own count for each layer compiled whole. The report's table is
    printed too. Exit status 1 when a layer is over the traffic bound (bytes moved or written,
    a host sync or host copy; the report is written first), as `bench gpu`'s traffic check; a
    layer over only its kernel bound is named, not failed. --compile has no bound."""
    from normbench.bench.traffic import OverBound, run

    name = "traffic_compiled" if compile else "traffic"
    output = output or default_output(name, f"bench_{name}.md")
    names = [n.strip() for n in layers.split(",") if n.strip()] if layers else None
    try:
        _run(
            "traffic",
            output,
            run,
            quick=quick,
            device=device,
            plugins=plugin or [],
            layers=names,
            compile=compile,
        )
    except OverBound as exc:
        print(f"normbench bench traffic: {exc}", file=sys.stderr)
        raise typer.Exit(1) from exc


def gpu_command(output: OutputOption = None, quick: QuickOption = False) -> None:
    """The device check: one PASS/FAIL/SKIP line per check (layers' host syncs, device time,
    channels_last and compile; peak memory; a killed and resumed trial; refusals; a quickstart
    slice; NCCL against virtual devices), at most 5 minutes on one GPU. Without CUDA the CUDA
    checks are skipped. Exit status 1 when a check fails."""
    from normbench.bench.gpu import CheckFailed, run

    try:
        _run("gpu", output or default_output("gpu", "bench_gpu.md"), run, quick=quick)
    except CheckFailed as exc:
        print(f"normbench bench gpu: {exc}", file=sys.stderr)
        raise typer.Exit(1) from exc


def _add_simple(bench: typer.Typer, name: str, module: str, filename: str, doc: str) -> None:
    """Add `bench NAME [--output FILE] [--quick]` calling `module.run(output, quick=...)`."""

    def command(output: OutputOption = None, quick: QuickOption = False) -> None:
        run = importlib.import_module(module).run
        _run(name, output or default_output(name, filename), run, quick=quick)

    command.__doc__ = doc
    bench.command(name)(command)
