"""What a benchmark ran on: one description shared by every `normbench bench` report
(airbench's habit: store the environment with every number)."""

from __future__ import annotations

import datetime as dt
import importlib.metadata as md
import os
import platform
from collections.abc import Iterable
from pathlib import Path

from normbench.provenance import source_commit


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, else what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe_machine(
    packages: Iterable[str] = ("torch",), *, load: tuple[float, ...] | None = None
) -> dict[str, str]:
    """Date, CPU, cores, versions, torch threads, GPU, git commit and load average.

    `load` is a load average taken earlier (e.g. at the start of the run); by default it is
    read now.
    """
    import torch

    info = {
        "date (UTC)": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M"),
        "CPU": cpu_model(),
        "cores": f"{os.cpu_count()} ({len(os.sched_getaffinity(0))} usable)",
        "Python": platform.python_version(),
        **{pkg: _version(pkg) for pkg in packages},
        "torch threads": str(torch.get_num_threads()),
        "GPU": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
        "git commit": source_commit(),
    }
    values = load if load is not None else os.getloadavg()
    info["load average (1, 5, 15 min)"] = ", ".join(f"{v:.2f}" for v in values)
    return info


def machine_table(info: dict[str, str]) -> list[str]:
    """A Markdown `## Machine` section listing `info`."""
    rows = [f"| {key} | {value} |" for key, value in info.items()]
    return ["## Machine", "", "| | |", "|---|---|", *rows]


def _version(package: str) -> str:
    try:
        return md.version(package)
    except md.PackageNotFoundError:
        return "not installed"
