"""`normbench bench ...`: the benchmark commands, each writing one Markdown report.

    normbench bench variants  -> reports/bench_variants.md    (normbench.bench.variants)
    normbench bench loader    -> reports/bench_loader.md      (normbench.bench.loader)
    normbench bench step      -> reports/bench_train_step.md  (normbench.bench.train_step)
    normbench bench harness   -> reports/bench_harness.md     (normbench.bench.harness)

Each benchmark module has `run(output: Path, *, quick: bool = False) -> Path`; it is imported
only when its command runs, so `normbench --help` stays fast.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Annotated

import typer

QuickOption = Annotated[
    bool, typer.Option("--quick", help="Fewer repeats and smaller inputs: a smoke run.")
]


def register(app: typer.Typer) -> None:
    bench = typer.Typer(help="Benchmarks that write Markdown reports under reports/.")
    bench.command("variants")(variants_command)
    _add_simple(bench, "loader", "normbench.bench.loader", "reports/bench_loader.md",
                "Time the data loaders (images/s).")  # fmt: skip
    _add_simple(bench, "step", "normbench.bench.train_step", "reports/bench_train_step.md",
                "Time one training step per variant and backbone.")  # fmt: skip
    _add_simple(bench, "harness", "normbench.bench.harness", "reports/bench_harness.md",
                "Measure the harness overhead (driver, store, scheduling).")  # fmt: skip
    app.add_typer(bench, name="bench")


def variants_command(
    output: Annotated[Path, typer.Option("--output", help="Markdown file to write.")] = Path(
        "reports/bench_variants.md"
    ),
    quick: QuickOption = False,
    device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")] = "auto",
    threads: Annotated[
        int | None, typer.Option("--threads", help="torch CPU threads (default: torch's).")
    ] = None,
) -> None:
    """Time forward+backward and peak memory of every built-in variant against BatchNorm2d."""
    from normbench.bench.variants import run

    print(f"wrote {run(output, quick=quick, device=device, threads=threads)}")


def _add_simple(bench: typer.Typer, name: str, module: str, default: str, doc: str) -> None:
    """Add `bench NAME [--output FILE] [--quick]` calling `module.run(output, quick=...)`."""

    def command(
        output: Annotated[Path, typer.Option("--output", help="Markdown file to write.")] = Path(
            default
        ),
        quick: QuickOption = False,
    ) -> None:
        run = importlib.import_module(module).run
        print(f"wrote {run(output, quick=quick)}")

    command.__doc__ = doc
    bench.command(name)(command)
