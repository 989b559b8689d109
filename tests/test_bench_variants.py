"""The variant benchmark: target judging from hand-made timings, CPU peak memory against the
sizes of the tensors a BN step must allocate, and a tiny end-to-end run through the CLI."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest
import torch
from torch import nn

from normbench.bench import variants as bench


def _case(label: str, variant: str, times: list[float]) -> bench.Case:
    return bench.Case(label, variant, {}, nn.Identity(), times=times)


def test_targets_use_paired_ratios_in_the_same_repeat() -> None:
    ref = _case(bench.REF, "", [1.0, 2.0, 4.0])
    dw = _case(bench.DWCONV, "", [1.0, 1.0, 1.0])
    ghost = _case("ghost_bn", "ghost_bn", [1.2, 2.8, 4.0])  # ratios 1.2, 1.4, 1.0
    sabn = _case("sabn", "sabn", [1.9, 3.8, 7.6])  # ratio 1.9 every repeat
    bnet = _case("bnet", "bnet", [2.2, 3.3, 5.5])  # 1.1 x (BN + dwconv) every repeat
    ubn = _case("ubn", "ubn", [2.6, 3.9, 6.5])  # 1.3 x (BN + dwconv)
    assert bench._target(ghost, ref, dw) == ("<= 1.3x BN", "pass", None)
    assert bench._target(sabn, ref, dw)[1] == "**miss**"
    text, result, parts = bench._target(bnet, ref, dw)
    assert (text, result) == ("<= 1.2x (BN + dwconv)", "pass") and parts == pytest.approx(1.1)
    assert bench._target(ubn, ref, dw)[1] == "**miss**"
    assert bench._target(_case("gn", "gn", [1, 1, 1]), ref, dw) == ("-", "", None)
    compiled = bench.Case(
        "ubn (compiled)", "ubn", {}, nn.Identity(), [2.6, 3.9, 6.5], compiled=True
    )
    assert bench._target(compiled, ref, dw) == ("-", "", pytest.approx(1.3))


def test_parts_are_the_references_by_name_with_compiled_rows() -> None:
    """With --compile the compiled BN row sits between BN and the depthwise conv: BNET is
    still judged against eager BN + eager dwconv, and its compiled row against the compiled
    pair (a positional pick once divided BNET by BN + compiled BN: 2.05x instead of 0.97x)."""
    cases = [
        _case(bench.REF, "", [1.0, 1.0, 1.0]),
        bench.Case(f"{bench.REF} (compiled)", "", {}, nn.Identity(), [0.5] * 3, compiled=True),
        _case(bench.DWCONV, "", [3.0, 3.0, 3.0]),
        bench.Case(f"{bench.DWCONV} (compiled)", "", {}, nn.Identity(), [5.0] * 3, compiled=True),
        _case("bnet", "bnet", [4.0, 4.0, 4.0]),
        bench.Case("bnet (compiled)", "bnet", {}, nn.Identity(), [6.6] * 3, compiled=True),
    ]
    settings = bench.Settings(torch.device("cpu"), 3, 0.0)
    text, misses = bench._section(cases, (8, 4, 2, 2), settings)
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in text.splitlines()]
    rows = {row[0]: row for row in cells if len(row) == 7}
    assert rows["bnet"][3] == "1.00" and rows["bnet"][6] == "pass" and not misses
    assert rows["bnet (compiled)"][2] == "6.60" and rows["bnet (compiled)"][3] == "1.20"


def test_cpu_peak_memory_covers_output_and_input_gradient() -> None:
    layer = nn.BatchNorm2d(16)
    x = torch.randn(4, 16, 16, 16, requires_grad=True)
    g = torch.randn_like(x)
    case = bench.Case("bn", "bn", {}, layer)
    peak = bench._peak_bytes(bench._step_fn(case, x, g), torch.device("cpu"))
    tensor_bytes = x.numel() * 4
    # y and x.grad are both alive when backward ends; BN saves only per-channel statistics.
    assert 2 * tensor_bytes <= peak <= 4 * tensor_bytes


def test_quick_run_writes_every_builtin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("normbench.variants", reason="built-in variant modules not written yet")
    from normbench.cli import main

    monkeypatch.setattr(bench, "QUICK_SHAPES", ((8, 32, 4, 4),))
    out = tmp_path / "bench.md"
    threads_before = torch.get_num_threads()
    with pytest.raises(SystemExit) as info:
        main(["bench", "variants", "--quick", "--device", "cpu", "--threads", "1",
              "--output", str(out)])  # fmt: skip
    assert info.value.code == 0
    assert torch.get_num_threads() == threads_before  # restored after the run
    text = out.read_text()
    assert "## cpu, input 8x32x4x4, float32" in text and "- git commit:" in text
    assert "- torch threads: 1" in text
    for label in ("torch BatchNorm2d", "dwconv3x3", "ghost_bn ghost_batch_size=2", "ubn"):
        assert f"| {label} |" in text
    for name in ("bn", "in", "gn", "iebn", "rbn", "bnet", "sabn", "bgn", "fourthings"):
        assert f"| {name} |" in text
    assert text.count("| <= 1.2x (BN + dwconv) |") == 2 and text.count("| <= 1.8x BN |") == 3
    assert "## Targets missed" in text
    # every miss in a table row is listed in the summary
    missed = [ln.split(" | ")[0][2:] for ln in text.splitlines() if ln.endswith("| **miss** |")]
    assert all(f"**{label}**" in text.split("## cpu")[0] for label in missed)


@pytest.mark.parametrize(
    ("command", "module", "default"),
    [
        ("loader", "normbench.bench.loader", "bench_loader.md"),
        ("step", "normbench.bench.train_step", "bench_train_step.md"),
        ("harness", "normbench.bench.harness", "bench_harness.md"),
        ("ddp", "normbench.bench.ddp", "bench_ddp.md"),
    ],
)
def test_bench_commands_call_their_module(
    command: str,
    module: str,
    default: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The wiring only: each command imports its module and calls run(output, quick=...); by
    default into a new folder under runs/bench/, never over the committed reports/."""
    from normbench.cli import main

    calls = []
    fake = types.ModuleType(module)
    fake.run = lambda output, *, quick=False: calls.append((output, quick)) or output
    monkeypatch.setitem(sys.modules, module, fake)
    for argv, quick in (([], False), (["--quick"], True)):
        with pytest.raises(SystemExit) as info:
            main(["bench", command, *argv])
        output, called_quick = calls[-1]
        assert info.value.code == 0 and called_quick == quick
        assert output.name == default and output.parent.parent == Path("runs/bench")
        assert output.parent.name.startswith(f"{command}-")
    chosen = Path("elsewhere") / default
    with pytest.raises(SystemExit):
        main(["bench", command, "--output", str(chosen)])
    assert calls[-1] == (chosen, False)
    captured = capsys.readouterr()
    assert f"wrote {chosen} in " in captured.out
    assert f"normbench bench {command}: running; the report goes to {chosen}" in captured.err
