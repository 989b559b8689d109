"""`normbench bench traffic`: the memory traffic and host syncs of every registered layer on the
accelerator path, against the bound of docs/variants.md#memory-traffic, as one Markdown report.

Each layer (every registered variant at its defaults, plugins from `--plugin` included, and the
built-ins' other code paths in `CONFIGS`) runs one training step through
`measure_layer` (`normbench.traffic`; re-exported here for `normbench bench gpu`) at the
issue's measurement point: input 64x64x16x16, bf16 under bf16 autocast, on CUDA (FakeTensors of
CUDA when this machine has none: the same code path, shapes only). `quick` uses 8x32x8x8.

A layer over the traffic bound (bytes moved or written, a host sync or host copy) makes `run`
raise `OverBound` once the report is written and the table printed (the command exits 1), as
`normbench bench gpu`'s traffic check fails on it; a layer over only its kernel bound is named
as over, not failed (the same rule as that check).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from normbench.bench.machine import describe_machine, machine_table
from normbench.traffic import DEFAULT_SHAPE, LayerTraffic, measure_layer

__all__ = ["LayerTraffic", "OverBound", "layers_of", "measure_layer", "report", "run"]

QUICK_SHAPE = (8, 32, 8, 8)
# Built-in code paths beyond the defaults: (variant, options); "N/4" is a quarter batch,
# "2C" twice the channels (BGN's spatial groups: half the rows of a channel), "2CH" half a row.
CONFIGS: list[tuple[str, dict[str, Any]]] = [
    ("bn", {"momentum": None}),
    ("in", {"track_running_stats": True, "momentum": None}),
    ("iebn", {"momentum": None}),
    ("bgn", {"num_groups": "C"}),
    ("bgn", {"num_groups": "2C", "allow_spatial_groups": True}),
    ("bgn", {"num_groups": "2CH", "allow_spatial_groups": True}),  # half rows
    ("ghost_bn", {"ghost_batch_size": "N/4"}),
    ("ghost_bn", {"ghost_batch_size": "N/4", "momentum": None}),
    ("fourthings", {"examples_per_group": "N/4", "channels_per_group": 2, "momentum": None}),
    ("ubn", {"decide": "step", "momentum": None}),
    ("ubn", {"sim_source": "centered", "sim_features": "gap"}),
    ("sabn", {"num_branches": 3}),
    ("frn", {"apply_act": False, "learnable_eps": True}),  # the per-instance affine's path
    ("evonorm_b0", {"momentum": None}),
]
MIB = 2**20


class OverBound(RuntimeError):
    """A layer is over the traffic bound (bytes or host syncs); the report says why."""


def _resolve(options: dict[str, Any], shape: tuple[int, ...]) -> dict[str, Any]:
    """Options written relative to the input ("N/4", "C", "2C") at this shape."""
    n, c = shape[0], shape[1]
    h = shape[2]
    sizes = {"N/4": max(n // 4, 2), "C": c, "2C": 2 * c, "2CH": 2 * c * h}
    return {k: sizes.get(v, v) if isinstance(v, str) else v for k, v in options.items()}


def layers_of(names: Iterable[str], shape: tuple[int, ...]) -> list[tuple[str, dict[str, Any]]]:
    """Every name at its defaults, then the extra configurations of the built-ins present."""
    names = list(names)
    extra = [(v, _resolve(o, shape)) for v, o in CONFIGS if v in names]
    return [(name, {}) for name in names] + extra


def select(names: list[str], wanted: Iterable[str] | None) -> list[str]:
    """`names` in order, or only those in `wanted` (each of which must be registered)."""
    if wanted is None:
        return names
    from normbench.errors import UnknownNameError

    wanted = list(wanted)
    unknown = [w for w in wanted if w not in names]
    if unknown:
        raise UnknownNameError(
            f"--layers: unknown or style-conditioned variant {', '.join(map(repr, unknown))}; "
            f"available: {', '.join(names)}"
        )
    return [n for n in names if n in wanted]


def run(
    output: Path,
    *,
    quick: bool = False,
    device: str = "cuda",
    plugins: Iterable[Path] = (),
    layers: Iterable[str] | None = None,
    compile: bool = False,
) -> Path:
    """Measure the registered plain norm layers (style-conditioned ones take a second input;
    `layers`: only these) and write the Markdown report to `output`; with `compile`, each layer
    compiled whole by Inductor (`traffic_compiled`, on `device` if it is here, else the CPU;
    `DEFAULT_LAYERS` unless `layers` says)."""
    from normbench.registry import load_plugin
    from normbench.variants_api import plain_variants

    for path in plugins:
        load_plugin(path)
    load = os.getloadavg()
    shape = QUICK_SHAPE if quick else DEFAULT_SHAPE
    if compile:
        from normbench.bench import traffic_compiled

        names = select(plain_variants(), layers or traffic_compiled.DEFAULT_LAYERS)
        text = _compiled_report(names, shape, device, quick=quick, load=load)
    else:
        results = []
        for k, (name, options) in enumerate(layers_of(select(plain_variants(), layers), shape), 1):
            print(f"  [{k}] {name} {options or ''}", file=sys.stderr)
            results.append(measure_layer(name, options, shape=shape, device=device))
        text = report(results, quick=quick, load=load)
        print_results(results, quick=quick)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text)
    if not compile and (over := [_label(r) for r in results if not r.within_traffic_bound]):
        raise OverBound(f"over the traffic bound: {', '.join(over)} (see {output})")
    return output


def _compiled_report(
    names: list[str], shape: tuple[int, ...], device: str, *, quick: bool, load: tuple
) -> str:
    from normbench.bench.traffic_compiled import COLUMNS, measure_compiled, report_rows, table
    from normbench.tables import print_table

    here = device if torch.device(device).type == "cpu" or _have(device) else "cpu"
    results = []
    for k, name in enumerate(names, 1):
        print(f"  [{k}] {name} (Inductor)", file=sys.stderr)
        results.append(measure_compiled(name, shape=shape, device=here))
    title = f"Kernels and bytes per training step, each layer compiled whole by Inductor ({here})"
    print_table(COLUMNS, table(results), title=title, right=COLUMNS[1:])
    info = describe_machine(("torch", "triton"), load=load)
    info["measured on"] = f"{here} (Inductor's {'C++' if here == 'cpu' else 'Triton'} kernels)"
    lines = [
        "# Memory traffic per layer compiled by Inductor",
        "",
        *(["**Quick mode** (a small input): a smoke run, not a result.", ""] if quick else []),
        f"One training step (forward + backward) of each layer alone compiled with "
        f"`torch.compile(fullgraph=True)` (Inductor), input {'x'.join(map(str, shape))} "
        f"bfloat16 under bfloat16 autocast, on {here}: Inductor's kernels and the bytes they "
        "access (`torch._inductor.metrics.num_bytes_accessed`), forward and backward graphs "
        "together (`normbench.bench.traffic_compiled`).",
        "",
        *report_rows(results),
        "",
        *machine_table(info),
    ]
    return "\n".join(lines) + "\n"


def _have(device: str) -> bool:
    module = getattr(torch, torch.device(device).type, None)
    return bool(module is not None and module.is_available())


def _label(r: LayerTraffic) -> str:
    return r.name + "".join(f" {k}={v}" for k, v in r.options.items())


def mib(nbytes: float) -> str:
    """`nbytes` in MiB to 3 significant digits (at least the units): a quick run's 0.0312 MiB
    and a full run's 16.0 MiB both agree with the ratios to BN printed beside them."""
    value = nbytes / MIB
    return "0" if value == 0 else f"{value:.0f}" if value >= 100 else f"{value:#.3g}"


def _why(r: LayerTraffic) -> str:
    """What puts `r` over the bound, in the report's terms."""
    reasons = [
        f"moves {mib(r.norm_bytes)} MiB > {mib(r.bound_bytes)}"
        if r.norm_bytes > r.bound_bytes
        else "",
        f"writes {mib(r.norm_written)} MiB > {mib(r.bound_written)}"
        if r.norm_written > r.bound_written
        else "",
        f"host syncs: {r.host_syncs}" if r.host_syncs else "",
        f"host copies: {r.host_copies}" if r.host_copies else "",
        f"{r.kernels} kernels > {r.bound_kernels}" if r.kernels > r.bound_kernels else "",
    ]
    return ", ".join(filter(None, reasons))


COLUMNS = (
    "layer", "act. read MiB", "act. written MiB", "of which conv MiB", "moved / BN",
    "written / BN", "all MiB", "kernels", "of which compiled", "kernel bound", "host syncs",
    "host copies", "channels_last kept", "result",
)  # fmt: skip
_TEXT_COLUMNS = ("layer", "channels_last kept", "result")


def _cells(r: LayerTraffic) -> list[str]:
    """`r`'s row under `COLUMNS`, as the report and the screen show it (without Markdown)."""
    moved = r.norm_bytes / (r.bound_bytes / 2)
    written = r.norm_written / (r.bound_written / 2)
    everything = r.read_bytes + r.written_bytes + r.compiled_bytes
    return [
        _label(r),
        *map(mib, (r.activation_read, r.activation_written, r.conv_activation_bytes)),
        f"{moved:.2f}",
        f"{written:.2f}",
        mib(everything),
        *map(str, (r.kernels, r.compiled_kernels, r.bound_kernels, r.host_syncs, r.host_copies)),
        {True: "yes", False: "no", None: "-"}[r.channels_last_kept],
        "pass" if r.within_bound else "over",
    ]


def _row(r: LayerTraffic) -> str:
    """The Markdown row: a failure (a format dropped, over the bound) in bold."""
    cells = _cells(r)
    cells[-2:] = [f"**{c}**" if c in ("no", "over") else c for c in cells[-2:]]
    return "| " + " | ".join(cells) + " |"


def print_results(results: list[LayerTraffic], console: Any = None, *, quick: bool = False) -> None:
    """The report's table on the screen (`normbench.tables.print_table`: rich on a terminal,
    aligned columns otherwise) under the report's heading (quick mode, input, dtype, device),
    what is over the bound under it."""
    from normbench.tables import print_table

    over = [f"over the bound: {_label(r)}: {_why(r)}" for r in results if not r.within_bound]
    right = [c for c in COLUMNS if c not in _TEXT_COLUMNS]
    rows = [_cells(r) for r in results]
    title = "Memory traffic and kernels per training step (accelerator path)\n" + " ".join(
        _setting(results[0], quick)
    ).replace("**", "").replace("`", "")
    caption = "\n".join(over) or "every layer within the bound"
    print_table(COLUMNS, rows, title=title, caption=caption, right=right, console=console)


def _setting(first: LayerTraffic, quick: bool) -> list[str]:
    """The report's heading lines after its title: quick mode, input shape, dtype, device."""
    where = "FakeTensors of " + first.device if first.simulated else first.device
    return [
        *(["**Quick mode** (a small input): a smoke run, not a result."] if quick else []),
        f"One training step (forward + backward) of each layer alone, input "
        f"{'x'.join(map(str, first.shape))} {first.dtype} under {first.dtype} autocast, on "
        f"{where}; counted at the dispatcher (`normbench.traffic`).",
    ]


def report(results: list[LayerTraffic], *, quick: bool, load: tuple[float, ...]) -> str:
    """The Markdown report of `results` (the first one fixes shape, dtype and device)."""
    first = results[0]
    over = [f"- **{_label(r)}**: {_why(r)}" for r in results if not r.within_bound]
    lines = [
        "# Memory traffic and host syncs per layer (accelerator path)",
        "",
        *(line for text in _setting(first, quick) for line in (text, "")),
        "## Over the bound",
        "",
        *(over or ["None: every layer is within the bound."]),
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "|".join("---" if c in _TEXT_COLUMNS else "---:" for c in COLUMNS) + "|",
        *map(_row, results),
        "",
        _METHOD,
        "",
        *machine_table(_machine(load, first)),
    ]
    return "\n".join(lines) + "\n"


def _machine(load: tuple[float, ...], first: LayerTraffic) -> dict[str, str]:
    info = describe_machine(("torch", "triton"), load=load)
    info["measured on"] = (
        f"FakeTensors of {first.device} (no such device here: shapes and code path only)"
        if first.simulated
        else first.device
    )
    info["CUDA (torch build)"] = str(torch.version.cuda)
    return info


_METHOD = (
    "Method: every operator call is one kernel that reads its tensor arguments and writes its "
    "results (views and allocations move nothing; an in-place or `out=` argument is written). "
    "Act. = tensors of the input's size (x, y, g, dx, full-size temporaries); moved / BN = "
    "(activation bytes read + written, convolutions excluded) / BN's, written / BN likewise. "
    "The bound: moved and written at most 2x BN's, plus the layer's own convolutions (BNET, "
    "UBN: the depthwise k x k affine), kernels at most the kernel bound, no host sync (a "
    "scalar read, a copy to the host, a data-dependent shape) and no host copy (host data "
    "copied to the device). All MiB counts every tensor, per-(n, c) statistics included. "
    "Kernels: the operator calls that moved bytes (on a GPU each costs a launch of a few "
    "microseconds) plus, of which compiled, the kernels Inductor's Triton backend generates "
    "for the layer's compiled coefficient regions (their forward and backward graphs, "
    "scheduled by Inductor on the CPU and stopped before code generation); kernel bound: 4x "
    "BN's kernels plus the layer's convolutions'. channels_last kept: a channels_last input "
    "gives a channels_last output and input gradient. A fused kernel (BN's "
    "`native_batch_norm`, normbench's `normbench::` Triton operators) counts each tensor it "
    "touches once. See docs/variants.md#memory-traffic and #kernel-launches."
)
