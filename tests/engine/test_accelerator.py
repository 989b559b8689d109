"""The engine's CUDA path, checked on the CPU: device decisions and precision defaults under a
mocked CUDA runtime (monkeypatched `torch.cuda` functions), peak memory after the autotuned
first step, RNG states of N GPUs resumed where fewer are visible, the loop's accelerator path
(no host read per step) forced on the CPU, and compile that either runs compiled or fails."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from test_loop import tiny
from torch.overrides import TorchFunctionMode

from normbench.engine import checkpoint as ckpt
from normbench.engine import device as dev
from normbench.engine import memory
from normbench.engine.loop import run_trial
from normbench.models import register_backbone
from normbench.spec import Recipe


@pytest.fixture(autouse=True)
def _keep_torch_switches():
    """Every trial sets these process-wide switches; put back what the test found."""
    threads = torch.get_num_threads()
    flags = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(False)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = flags


def _mock_gpu(monkeypatch: pytest.MonkeyPatch, *, native_bf16: bool, count: int = 1) -> None:
    """A CUDA runtime with `count` visible GPUs: a V100 (bf16 only emulated) or an A100."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "mock GPU")
    monkeypatch.setattr(torch.backends.cudnn, "version", lambda: 90000)

    def is_bf16_supported(including_emulation: bool = True) -> bool:
        return native_bf16 or including_emulation

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)


# ---------------------------------------------------------------- device and precision
def test_a_zero_gpu_grant_trains_on_the_cpu_where_cuda_is_visible(monkeypatch) -> None:
    """Ray >= 2.60 leaves GPUs visible to a trial that asked for none: the grant decides."""
    _mock_gpu(monkeypatch, native_bf16=True)
    assert dev.granted_device("auto", 0) == "cpu"
    assert dev.granted_device("auto", 1) == "cuda"
    assert dev.granted_device("cpu", 1) == "cpu"
    with pytest.raises(dev.DeviceError, match="gave this trial none"):
        dev.granted_device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert dev.granted_device("auto", 1) == "cpu"  # a logical GPU where CUDA is absent


@pytest.mark.parametrize("native", [False, True])
def test_bf16_autocast_by_default_only_where_the_gpu_computes_it(monkeypatch, native) -> None:
    _mock_gpu(monkeypatch, native_bf16=native)
    rt = dev.build_runtime("cuda", amp=None, channels_last=None, compile=False, num_threads=1)
    assert rt.amp is native and rt.channels_last
    env = rt.environment()
    assert env["dtype"] == ("bfloat16-autocast" if native else "float32")
    assert env["bf16_native"] is native
    forced = dev.build_runtime("cuda", amp=True, channels_last=None, compile=False, num_threads=1)
    assert forced.amp  # the spec's explicit choice stands


def test_tf32_and_matmul_precision_are_recorded(monkeypatch) -> None:
    rt = dev.build_runtime("cpu", amp=None, channels_last=None, compile=False, num_threads=1)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", True)
    torch.set_float32_matmul_precision("high")
    try:
        env = rt.environment()
    finally:
        torch.set_float32_matmul_precision("highest")
    assert env["float32_matmul_precision"] == "high" and env["matmul_tf32"] is True
    assert env["cudnn_tf32"] is torch.backends.cudnn.allow_tf32


def test_deterministic_sets_cublas_before_cuda_and_the_next_trial_resets(monkeypatch) -> None:
    monkeypatch.delenv(dev.CUBLAS_ENV, raising=False)
    _mock_gpu(monkeypatch, native_bf16=True)
    build = dict(amp=None, channels_last=None, compile=False, num_threads=1)
    env = dev.build_runtime("cuda", deterministic=True, **build).environment()
    assert env["cublas_workspace_config"] == ":4096:8"
    assert env["deterministic_algorithms"] and env["cudnn_deterministic"]
    assert not env["cudnn_benchmark"]  # no autotuning: it picks algorithms by timing
    env = dev.build_runtime("cuda", **build).environment()  # a reused worker's next trial
    assert not env["deterministic_algorithms"] and not env["cudnn_deterministic"]
    assert env["cudnn_benchmark"]
    monkeypatch.setenv(dev.CUBLAS_ENV, ":0:0")
    with pytest.raises(dev.DeviceError, match="CUBLAS_WORKSPACE_CONFIG to be one of"):
        dev.build_runtime("cuda", deterministic=True, **build)


def test_a_stored_trial_never_resumes_across_the_deterministic_switch() -> None:
    from normbench.spec import environment_conflict

    spec = tiny(deterministic=True)
    assert environment_conflict(spec, {"deterministic_algorithms": False}) == (
        "deterministic=False then, True now"
    )
    assert environment_conflict(spec, {"deterministic_algorithms": True}) is None


def test_a_deterministic_trial_runs_and_says_so() -> None:
    rec = next(run_trial(tiny(deterministic=True, epochs=1)))
    env = rec["environment"]
    assert env["deterministic_algorithms"] and env["cublas_workspace_config"] == ":4096:8"
    assert rec["status"] == "ok"


# ---------------------------------------------------------------- peak memory
def test_cuda_peak_is_measured_after_the_autotuned_first_step(monkeypatch) -> None:
    """The first step's cuDNN autotuning workspace (here 900 MiB) is not the trial's peak."""
    alloc = {"now": 100, "peak": 100}

    def reset(device: Any = None) -> None:
        alloc["peak"] = alloc["now"]

    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", reset)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda d=None: alloc["peak"] * 2**20)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda d=None: None)
    meter = memory.PeakMemory(torch.device("cuda"), list)
    meter.start()
    for workspace in (900, 0, 0):  # MiB above the 100 alive, during each step
        with meter.step():
            alloc["peak"] = max(alloc["peak"], 100 + 200 + workspace)  # 200 of activations
        if workspace:
            assert meter.mb() is None  # nothing measured after autotuning yet
    assert meter.mb() == 300


# ---------------------------------------------------------------- checkpoint RNG states
def test_rng_states_of_four_gpus_resume_where_one_is_visible(monkeypatch) -> None:
    """A checkpoint written where 4 GPUs were visible (one state each, the old format)
    resumes on a retry that sees one; a new checkpoint holds only its own device's state."""
    _mock_gpu(monkeypatch, native_bf16=True, count=1)
    restored: dict[int, torch.Tensor] = {}

    def set_rng_state(state: torch.Tensor, device: Any = "cuda") -> None:
        index = torch.device(device).index or 0
        if index >= torch.cuda.device_count():
            raise IndexError(f"no CUDA device {index}")
        restored[index] = state

    monkeypatch.setattr(torch.cuda, "set_rng_state", set_rng_state)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda states: [
        set_rng_state(s, i) for i, s in enumerate(states)])  # fmt: skip
    saved = ckpt.rng_state()
    saved["cuda"] = [torch.full((8,), i, dtype=torch.uint8) for i in range(4)]
    ckpt.set_rng_state(saved, torch.device("cuda"))
    assert list(restored) == [0] and torch.equal(restored[0], saved["cuda"][0])

    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda d="cuda": torch.full((8,), 7))
    state = ckpt.rng_state(torch.device("cuda", 0))
    assert torch.equal(state["cuda"], torch.full((8,), 7))  # one tensor: this device's
    assert "cuda" not in ckpt.rng_state(torch.device("cpu"))


def test_each_rank_restores_its_own_rng_states(tmp_path: Path) -> None:
    """A checkpoint holds one entry per rank (`Parallel.gather` collects them on rank 0; the
    2-rank gloo trials of tests/engine/test_distributed.py save and resume through it): each
    rank continues its own stream, not rank 0's."""
    states, expected = [], []
    for rank in (0, 1):  # two ranks whose generators differ
        torch.manual_seed(100 + rank)
        states.append(ckpt.rng_state())
        expected.append(torch.rand(4))
    ckpt.save_checkpoint(tmp_path, {"trial_id": "t", "rng": states})
    saved = ckpt.load_checkpoint(tmp_path, trial_id="t")["rng"]  # type: ignore[index]
    for rank in (1, 0):
        torch.manual_seed(0)  # where a retried process would start
        ckpt.set_rng_state(ckpt.rank_rng_state(saved, rank))
        assert torch.equal(torch.rand(4), expected[rank])
    assert not torch.equal(expected[0], expected[1])
    assert ckpt.rank_rng_state(states[0], 1) is states[0]  # one process's checkpoint


# ---------------------------------------------------------------- the loop without syncs
class _HostReads(TorchFunctionMode):
    """Counts the tensor -> Python conversions, each a host sync on a GPU, and the Python
    numbers copied into a new tensor (on a GPU a copy from pageable memory, which waits)."""

    READS = ("item", "__bool__", "__int__", "__float__", "tolist", "__index__", "new_tensor",
             "tensor", "as_tensor")  # fmt: skip

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        if getattr(func, "__name__", "") in self.READS:
            self.count += 1
        return func(*args, **(kwargs or {}))


@pytest.fixture
def every_4(monkeypatch: pytest.MonkeyPatch) -> None:
    """The accelerator path on the CPU: the flag read every 4 steps, fused SGD."""
    monkeypatch.setitem(dev.CHECK_EVERY, "cpu", 4)


def _reads_of_one_epoch(batches: int) -> int:
    from normbench.engine import loop

    spec = tiny(epochs=1, limit_batches=batches, probe=False)
    counter = _HostReads()
    original = loop.train_epoch

    def counted(*args: Any) -> Any:
        with counter:
            return original(*args)

    loop.train_epoch = counted  # type: ignore[assignment]
    try:
        (rec,) = run_trial(spec)
    finally:
        loop.train_epoch = original  # type: ignore[assignment]
    assert rec["status"] == "ok"
    return counter.count


def test_the_loop_reads_the_device_every_k_steps_not_every_step(every_4) -> None:
    """4 more steps cost 1 more read (one per 4 steps), not 4."""
    assert _reads_of_one_epoch(8) - _reads_of_one_epoch(4) == 1


def test_a_diverging_trial_stops_within_k_steps_with_the_same_reason(
    every_4, tmp_path: Path
) -> None:
    """The 2nd step's loss is inf; the flag is read after the 4th. The trial stops there, with
    the reason the step itself would have given, and its parameters are those of one step."""
    constant = Recipe(lr=0.05, schedule="constant")
    spec = tiny("engine_inf_norm", variant_options={"blow_at": 2}, epochs=1, recipe=constant)
    (rec,) = run_trial(spec.replace(limit_batches=8), checkpoint_dir=tmp_path / "diverged")
    assert rec["status"] == "diverged" and rec["diverged_epoch"] == 1
    assert rec["diverged_reason"].startswith("non-finite training loss at batch 2 of epoch 1; ")
    assert "first non-finite output: " in rec["diverged_reason"]
    assert "(InfNorm)" in rec["diverged_reason"]
    one_step = spec.replace(variant_options={"blow_at": 99}, limit_batches=1)
    list(run_trial(one_step, checkpoint_dir=tmp_path / "one"))
    after = ckpt.load_checkpoint(tmp_path / "diverged")["model"]
    want = ckpt.load_checkpoint(tmp_path / "one")["model"]
    params = [k for k in want if not k.endswith(("running_mean", "running_var", "_tracked"))]
    assert len(params) == 8  # 2 convs, 2 norms (weight, bias), the classifier (weight, bias)
    for name in params:  # running statistics did see the later forwards; parameters did not
        torch.testing.assert_close(after[name], want[name], rtol=0, atol=1e-6)


def test_evaluation_reads_the_device_once_not_per_batch() -> None:
    from normbench.engine.build import build_trial
    from normbench.engine.loop import evaluate

    trial = build_trial(tiny(epochs=1))
    reads = []
    for size in (8, 32):  # 8 test batches, then 2
        loader = trial.data.test
        loader.batch_size = size
        with _HostReads() as counter:
            evaluate(trial, loader)
        reads.append(counter.count)
    assert reads[0] == reads[1]


# ---------------------------------------------------------------- compile
@pytest.fixture
def eager_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dev, "COMPILE_BACKEND", "eager")  # Dynamo without Inductor's seconds


def test_compiled_trials_in_one_process_each_run_compiled(eager_backend, monkeypatch) -> None:
    """A reused Ray worker runs trial after trial: each starts from a fresh Dynamo state. With
    a limit of 3 cached graphs per function, the second trial's 2 graphs (training, eval)
    would otherwise not fit and it would run eagerly."""
    monkeypatch.setattr(torch._dynamo.config, "recompile_limit", 3)
    for variant in ("bn", "gn"):
        records = list(run_trial(tiny(variant, compile=True, epochs=1, limit_batches=2)))
        assert [(r["compile_graphs"], r["compile_graph_breaks"]) for r in records] == [(2, 0)]
    (plain,) = run_trial(tiny(epochs=1))
    assert plain["compile_graphs"] is None and not plain["environment"]["compile"]


def test_a_compiled_trial_that_hits_the_limit_fails_with_the_reason(
    eager_backend, monkeypatch
) -> None:
    monkeypatch.setattr(torch._dynamo.config, "recompile_limit", 1)  # eval needs a 2nd graph
    with pytest.raises(torch._dynamo.exc.FailOnRecompileLimitHit, match="recompile_limit"):
        list(run_trial(tiny(compile=True, epochs=1, limit_batches=2)))


@register_backbone("engine_uncompilable")
def _uncompilable(num_classes: int, norm_layer: Any, *, in_channels: int = 3, **_: Any) -> Any:
    """A backbone Dynamo skips entirely (its forward is `torch._dynamo.disable`d)."""

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(in_channels, 4, 3)
            self.norm = norm_layer(4)
            self.fc = torch.nn.Linear(4, num_classes)

        @torch._dynamo.disable
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.norm(self.conv(x)).mean((2, 3)))

    return Net()


def test_a_compiled_trial_that_captures_nothing_fails(eager_backend) -> None:
    from normbench.engine.loop import CompileError
    from normbench.models.registry import BACKBONES

    if "engine_uncompilable" not in BACKBONES:  # a test that resets the registries ran first
        register_backbone("engine_uncompilable")(_uncompilable)
    spec = tiny(backbone="engine_uncompilable", compile=True, epochs=1)
    with pytest.raises(CompileError, match="captured no graph"):
        list(run_trial(spec))
