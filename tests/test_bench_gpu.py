"""`normbench bench gpu`: one line and exit 0 without a GPU; the layer comparison it runs on
a GPU, run here on CPU with a cheap compile backend against an independent expectation."""

from __future__ import annotations

import pytest
import torch

from normbench.bench import gpu
from normbench.cli import main


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_without_gpu_one_line_and_exit_zero(tmp_path, capsys) -> None:
    out = tmp_path / "gpu.md"
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "gpu", "--output", str(out)])
    assert exit_info.value.code in (0, None)
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed == [gpu.NO_GPU]
    assert not out.exists()


def test_layer_comparison_on_cpu() -> None:
    """bf16 + channels_last + compiled UBN vs eager fp32: differences at bf16 rounding size,
    not zero (the candidate really ran in bf16), and a report row per layer."""
    torch._dynamo.reset()
    check = gpu.compare_layer("ubn", (4, 8, 6, 6), torch.device("cpu"), backend="aot_eager")
    assert check.ok, check
    assert 0 < check.output_diff < gpu.TOLERANCE and check.grad_diff > 0
    assert check.compile_s > 0 and check.eager_ms > 0 and check.compiled_ms > 0
    text = gpu.layer_section([check], (4, 8, 6, 6), torch.device("cpu"))
    assert "| ubn |" in text and "| ok |" in text
