"""What every check of `normbench bench gpu` runs with and returns: the `Context` (device,
shape, compile backend, time budget) and the `Result`, shared by `normbench.bench.gpu` (which
runs the checks) and `normbench.bench.gpu_runs` (the checks that train)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from normbench.bench import gpu_layers as gl


@dataclass(frozen=True)
class Result:
    """A check's verdict: `status` PASS, FAIL or SKIP; `details` Markdown for the report."""

    status: str
    summary: str
    details: str = ""


@dataclass
class Context:
    """What every check runs with: the device, the layer input shape, the compile backend,
    and the time (`time.monotonic()`) after which per-layer loops stop."""

    device: torch.device
    shape: tuple[int, int, int, int]
    backend: str
    layers: list[str] = field(default_factory=list)
    deadline: float = float("inf")
    unreached: list[str] = field(default_factory=list)  # layers the last loop did not reach

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def names(self) -> Iterator[str]:
        """Each layer's name, until the deadline (the rest land in `unreached`)."""
        self.unreached = []
        for i, name in enumerate(self.layers):
            if time.monotonic() > self.deadline:
                self.unreached = self.layers[i:]
                return
            yield name

    def cases(self) -> Iterator[gl.Case]:
        """Each layer's case, until the deadline (the rest land in `unreached`)."""
        for name in self.names():
            yield gl.Case.build(name, self.shape, self.device)


def verdict(bad: list[str], good: str, details: str = "", ctx: Context | None = None) -> Result:
    """FAIL naming what is bad, else PASS; either says which layers the budget left out."""
    cut = f" ({len(ctx.unreached)} layers not reached in the time budget)" if ctx else ""
    cut = cut if ctx and ctx.unreached else ""
    if bad:
        return Result("FAIL", "; ".join(bad) + cut, details)
    return Result("PASS", good + cut, details)


def table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows]) + "\n"
