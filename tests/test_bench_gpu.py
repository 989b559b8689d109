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
    check = gpu.compare_layer("ubn", (4, 8, 6, 6), torch.device("cpu"), backend="aot_eager")
    assert check.ok, check
    assert 0 < check.output_diff < gpu.TOLERANCE and check.grad_diff > 0
    assert check.compile_s > 0 and check.eager_ms > 0 and check.compiled_ms > 0
    text = gpu.layer_section([check], (4, 8, 6, 6), torch.device("cpu"))
    assert "| ubn |" in text and "| ok |" in text


def test_quickstart_asks_ray_for_the_gpu_and_says_where_it_ran(tmp_path) -> None:
    """Ray hides GPUs from trials that ask for none: the check's quickstart must ask, and its
    report must say from the records whether the epochs really ran on CUDA."""
    from pathlib import Path

    from normbench.suite.loader import load_suite

    flags = gpu.QUICKSTART_FLAGS
    sets = [flags[i + 1] for i, f in enumerate(flags) if f == "--set"]
    suite = load_suite(Path(__file__).parents[1] / "suites" / "quickstart.yaml", overrides=sets)
    assert suite.resources.gpus == 0.5 and {t.spec.seed for t in suite.trials()} == {0}
    epochs = tmp_path / "epochs.jsonl"
    rec = '{{"trial_id": "00000000000{0}", "epoch": 1, "device": "{1}"}}\n'
    epochs.write_text(rec.format(0, "cuda:0") + rec.format(1, "cuda:0"))
    assert gpu._devices_line(epochs).startswith("Every epoch ran on cuda:0")
    epochs.write_text(rec.format(0, "cuda:0") + rec.format(1, "cpu"))
    assert gpu._devices_line(epochs).startswith("**Not on CUDA**: the epochs ran on cpu, cuda:0")


def test_the_report_on_cpu_has_every_layer_and_the_training_step(tmp_path) -> None:
    """The GPU report's own code path, run on the CPU (cheap backend, no quickstart). Every
    built-in compiles in this one process: they share one forward function, which Dynamo
    caches per function (8 entries by default), so the 9th once failed to compile."""
    from normbench.variants import BUILTIN_VARIANTS

    out = gpu.write_report(
        tmp_path / "gpu.md", torch.device("cpu"), quick=True, backend="eager", quickstart=False
    )
    text = out.read_text()
    for name in BUILTIN_VARIANTS:
        assert f"| {name} |" in text.split("## Training step")[0]
    assert "| **differs** |" not in text
    assert "## Training step on cpu" in text and "| ubn |" in text.split("## Training step")[1]
