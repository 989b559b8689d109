"""The machine description every benchmark report carries, the live checkout's commit too."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from normbench.bench.machine import describe_machine, machine_table

REPO = Path(__file__).resolve().parents[1]


def test_describes_this_machine_and_checkout() -> None:
    info = describe_machine(("torch", "no-such-package-xyz"), load=(1.0, 2.5, 3.25))
    assert info["cores"].startswith(f"{os.cpu_count()} (")
    assert info["no-such-package-xyz"] == "not installed"
    assert info["load average (1, 5, 15 min)"] == "1.00, 2.50, 3.25"
    git = ["git", "-C", str(REPO)]
    head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.stdout.strip():  # a git checkout (CI clones one), installed editable: the live HEAD
        changed = subprocess.run([*git, "status", "--porcelain", "-uno"], capture_output=True)
        dirty = "+dirty" if changed.stdout.strip() else ""
        assert info["git commit"] == head.stdout.strip() + dirty
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [ln.split(":", 1)[1].strip() for ln in cpuinfo.read_text().splitlines()
                 if ln.startswith("model name")]  # fmt: skip
        if names:
            assert info["CPU"] == names[0]


def test_machine_table_is_markdown() -> None:
    lines = machine_table({"CPU": "x", "cores": "2"})
    assert lines == ["## Machine", "", "| | |", "|---|---|", "| CPU | x |", "| cores | 2 |"]
