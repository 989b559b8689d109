"""`normbench bench gpu`, the device check: its whole code path on the CPU (each CUDA check
skipped in one line), and the parts that can be shown here judged against independent facts:
a layer that drops channels_last is caught, the NCCL-vs-virtual comparison run with gloo, the
time budget, and the quickstart slice asking Ray for the GPU it checks."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torch import nn

from normbench.bench import gpu, gpu_runs
from normbench.bench import gpu_layers as gl
from normbench.cli import main

CUDA_CHECKS = {name for name, _, cuda in gpu.checks() if cuda}
# Every layer is within the traffic bound (bytes, host syncs); those over the kernel bound are
# named, not failed (tests/test_bench_traffic.py: OVER_KERNELS).
KNOWN_OVER_KERNELS = {"ubn"}


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_the_device_check_runs_on_the_cpu_with_each_cuda_check_skipped(tmp_path, capsys) -> None:
    out = tmp_path / "gpu.md"
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "gpu", "--quick", "--output", str(out)])
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln[:4] in gpu_statuses()]
    assert [ln.split("  ", 1)[1].split(":")[0] for ln in lines] == [n for n, _, _ in gpu.checks()]
    status = {ln.split("  ", 1)[1].split(":")[0]: ln[:4].strip() for ln in lines}
    for name in CUDA_CHECKS:
        assert f"SKIP  {name}: needs a CUDA device; none is visible to torch" in lines
    assert status["0.5-GPU DDP refusal"] == "PASS"
    assert status["killed and resumed trial"] == "PASS"
    assert status["compiled matches eager per layer"] == "PASS"
    traffic = next(ln for ln in lines if "bytes per layer against the traffic model" in ln)
    assert traffic.startswith("PASS") and "(simulated CUDA (FakeTensors), " in traffic, traffic
    named = re.search(r"; kernels over 4x BN's plus convolutions: (.*)$", traffic)
    over = {part.split(" ")[0] for part in named.group(1).split(", ")} if named else set()
    assert over == KNOWN_OVER_KERNELS, traffic
    failed = "FAIL" in status.values()
    assert exit_info.value.code == (1 if failed else 0)
    text = out.read_text()
    assert "| PASS | killed and resumed trial |" in text and "## compiled matches eager" in text


def gpu_statuses() -> set[str]:
    return {"PASS", "FAIL", "SKIP"}


def test_a_layer_that_drops_channels_last_is_caught() -> None:
    class Drops(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.contiguous() * 2

    case = gl.Case.build("bn", (2, 4, 3, 3), torch.device("cpu"))
    assert gl.keeps_channels_last(case)  # BatchNorm keeps it
    assert not gl.keeps_channels_last(gl.Case("drops", Drops(), case.x, case.grad))


def test_bnet_and_ubn_are_timed_against_bn_plus_their_depthwise_convolution() -> None:
    for name, parts in (("bn", False), ("bnet", True), ("ubn", True)):
        case = gl.Case.build(name, (2, 8, 4, 4), torch.device("cpu"))
        conv = gl.depthwise_reference(case.layer, 8)
        assert (conv is not None) is parts, name
        if conv is not None:
            assert conv.groups == 8 and conv.weight.shape == case.layer.weight.shape


def test_ddp_against_its_virtual_twin_step_by_step_with_gloo() -> None:
    """The 2-rank check's own code with gloo on the CPU (NCCL needs 2 GPUs)."""
    ctx = gpu.Context(torch.device("cpu"), gpu.QUICK_SHAPE, "aot_eager")
    result = gpu_runs.check_nccl(ctx, backend="gloo")
    assert result.status == "PASS", result
    assert result.summary.startswith("6 steps (gloo)")  # 2 epochs x 3 batches


def test_checks_after_the_budget_are_skipped_saying_so() -> None:
    ctx = gpu.Context(torch.device("cpu"), gpu.QUICK_SHAPE, "aot_eager", layers=[])
    done = gpu.run_checks(ctx, budget_s=-1.0, echo=False)
    assert {c.result.summary for c in done if c.name not in CUDA_CHECKS} == {
        "the -1 s time budget was spent"
    }
    # a per-layer loop stops at the deadline and says how many layers it left out
    late = gpu.Context(torch.device("cpu"), gpu.QUICK_SHAPE, "aot_eager", ["bn", "gn"], 0.0)
    result = gpu.check_channels_last(late)
    assert result.summary == "kept by all 0 (2 layers not reached in the time budget)"


def test_the_quickstart_slice_asks_ray_for_the_gpu_it_checks() -> None:
    """A trial that asks for no GPU trains on the CPU: the slice must ask for one."""
    from normbench.suite.loader import load_suite

    flags = gpu_runs.QUICKSTART_FLAGS
    sets = [flags[i + 1] for i, f in enumerate(flags) if f == "--set"]
    suite = load_suite(Path(__file__).parents[1] / "suites" / "quickstart.yaml", overrides=sets)
    assert suite.resources.gpus == 0.5 and {t.spec.seed for t in suite.trials()} == {0}
