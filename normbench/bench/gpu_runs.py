"""The checks of `normbench bench gpu` that train (`normbench.bench.gpu` lists them all):
peak memory after warm-up, a killed and resumed trial, a quickstart slice, a 2-rank NCCL trial
against its virtual twin, and each layer's device time against BN's."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from normbench.bench import gpu_layers as gl
from normbench.bench.gpu_base import Context, Result, table, verdict
from normbench.spec import Recipe, TrialSpec

TIME_LIMIT = 2.5  # bandwidth-bound: 2x BN's bytes (issue 20's target) plus launch overhead
QUICKSTART = Path("suites/quickstart.yaml")
QUICKSTART_FLAGS = ["--max-epochs", "1", "--limit-batches", "5", "--set", "seeds=1",
                    "--set", "resources.gpus=0.5"]  # fmt: skip


def tiny_spec(device: str, **changes: Any) -> TrialSpec:
    """A deterministic 2-epoch ResNet-20 (width 4) trial on synthetic 8x8 images."""
    spec = TrialSpec(
        variant="bn", backbone="resnet20", dataset="synthetic", epochs=2, batch_size=8,
        dataset_options={"image_size": 8, "n_train": 64, "n_test": 32, "num_classes": 4},
        backbone_options={"width": 4}, recipe=Recipe(lr=0.05, schedule="constant"),
        limit_batches=3, probe=False, device=device, deterministic=True, num_threads=1,
    )  # fmt: skip
    return spec.replace(**changes)


# ------------------------------------------------------------------------- memory
def check_peak_memory(ctx: Context) -> Result:
    """The engine's meter (`PeakMemory`) over 4 steps of a small ResNet against the allocator
    peak of one more steady step, measured independently; the first step's peak (cuDNN
    autotuning) shown beside."""
    from normbench.engine.memory import PeakMemory
    from normbench.engine.recipe import build_optimizer
    from normbench.models import create_backbone
    from normbench.variants_api import norm_layer

    torch.backends.cudnn.benchmark = True
    model = create_backbone("resnet20", 10, norm_layer("bn"), width=16).to(ctx.device)
    model = model.to(memory_format=torch.channels_last)
    opt = build_optimizer(model, Recipe())
    x = torch.randn(64, 3, 32, 32, device=ctx.device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (64,), device=ctx.device)

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = torch.nn.functional.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    mib = 2**20
    meter = PeakMemory(ctx.device, list)
    meter.start()
    with meter.step():
        step()
        first = torch.cuda.max_memory_allocated(ctx.device) / mib
    for _ in range(3):
        with meter.step():
            step()
    measured = meter.mb() or 0.0
    torch.cuda.synchronize(ctx.device)
    torch.cuda.reset_peak_memory_stats(ctx.device)
    step()
    steady = torch.cuda.max_memory_allocated(ctx.device) / mib
    summary = f"{measured:.0f} MiB (a steady step {steady:.0f}; the first, autotuning, {first:.0f})"
    ok = abs(measured - steady) <= 0.05 * steady + 1
    return Result("PASS" if ok else "FAIL", summary)


# ------------------------------------------------------------------------- resume
def check_resume(ctx: Context) -> Result:
    """Records of a deterministic 2-epoch trial, uninterrupted and stopped after epoch 1 then
    resumed from its checkpoint (Python, NumPy, torch and CUDA RNGs scrambled in between, as
    a new process would have them), compared key by key (timing keys aside)."""
    from normbench.contract import TIMING_KEYS
    from normbench.engine import checkpoint as ckpt
    from normbench.engine.loop import run_trial

    spec = tiny_spec(str(ctx.device))
    with tempfile.TemporaryDirectory(prefix="nbgpu") as tmp:
        whole = [dict(r) for r in run_trial(spec, checkpoint_dir=Path(tmp) / "whole")]
        first: Any = run_trial(spec, checkpoint_dir=Path(tmp) / "killed")  # a generator
        next(first)
        first.close()  # the trial ends here; only its checkpoint carries over
        _scramble_rngs()
        list(run_trial(spec, checkpoint_dir=Path(tmp) / "killed"))
        resumed = ckpt.read_records(Path(tmp) / "killed")
    differ = sorted(
        {k for a, b in zip(whole, resumed, strict=True) for k in a
         if k not in TIMING_KEYS and a[k] != b.get(k)}
    )  # fmt: skip
    good = f"{len(whole)} epochs on {ctx.device}, resumed after epoch 1: records equal"
    return verdict([f"records differ in {', '.join(differ)}"] if differ else [], good)


def _scramble_rngs() -> None:
    import numpy as np

    seed = int(time.time_ns() % 2**31)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # every device's generator too


# ------------------------------------------------------------------------- quickstart
def check_quickstart(ctx: Context) -> Result:
    """`normbench run suites/quickstart.yaml` (from a checkout) for one short epoch, half a
    GPU per trial: it succeeds and every epoch record ran on CUDA."""
    from normbench.results.store import read_jsonl

    if not QUICKSTART.is_file():
        return Result("SKIP", f"{QUICKSTART} not found (run from a normbench checkout)")
    with tempfile.TemporaryDirectory(prefix="nbgpu") as tmp:
        out = Path(tmp) / "quickstart"
        cmd = [sys.executable, "-m", "normbench", "run", str(QUICKSTART), "-o", str(out)]
        started = time.monotonic()
        proc = subprocess.run(cmd + QUICKSTART_FLAGS, capture_output=True, text=True, check=False)
        wall = time.monotonic() - started
        epochs = out / "epochs.jsonl"
        records = list(read_jsonl(epochs)) if epochs.is_file() else []
    devices = sorted({str(r.get("device")) for r in records})
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["(no output)"]
        return Result("FAIL", f"exit {proc.returncode}: {tail[0][:200]}")
    ok = bool(devices) and all(d.startswith("cuda") for d in devices)
    summary = f"{len(records)} epoch records in {wall:.0f} s, on {', '.join(devices) or 'nothing'}"
    return Result("PASS" if ok else "FAIL", summary)


# ------------------------------------------------------------------------- NCCL
def check_nccl(ctx: Context, *, backend: str = "nccl") -> Result:
    """A 2-rank DDP trial (one process per device) against the same trial as 2 virtual devices
    in one process: the training loss of every step (fp32, deterministic)."""
    if backend == "nccl" and torch.cuda.device_count() < 2:
        return Result("SKIP", f"needs 2 GPUs; {torch.cuda.device_count()} visible")
    import torch.multiprocessing as mp

    kind = "cuda" if backend == "nccl" else "cpu"
    with tempfile.TemporaryDirectory(prefix="nbgpu") as tmp:
        init = f"file://{Path(tmp) / 'init'}"
        mp.start_processes(_rank, args=(backend, init, tmp), nprocs=2, start_method="spawn")
        ddp = json.loads((Path(tmp) / "rank0.json").read_text())
    twin = _step_losses(tiny_spec(f"{kind}:0" if kind == "cuda" else kind, devices=2,
                                  parallel="virtual", amp=False))  # fmt: skip
    gaps = [abs(a - b) / max(abs(b), 1e-12) for a, b in zip(ddp, twin, strict=True)]
    summary = f"{len(gaps)} steps ({backend}), largest relative gap {max(gaps):.1e}"
    return Result("PASS" if max(gaps) <= 1e-4 else "FAIL", summary)


def _step_losses(spec: TrialSpec) -> list[float]:
    """The running mean training loss after every step of `spec` (`on_batch`; the divergence
    flag is read, and `on_batch` called, every step)."""
    from normbench.engine import device
    from normbench.engine.loop import run_trial

    losses: list[float] = []
    kind = spec.device.partition(":")[0]
    saved = device.CHECK_EVERY.get(kind)
    device.CHECK_EVERY[kind] = 1  # `on_batch` runs at each read
    try:
        for _ in run_trial(spec, on_batch=lambda progress: losses.append(progress["loss"])):
            pass
    finally:
        if saved is None:
            device.CHECK_EVERY.pop(kind, None)
        else:
            device.CHECK_EVERY[kind] = saved
    return losses


def _rank(rank: int, backend: str, init: str, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group(backend, init_method=init, rank=rank, world_size=2)
    try:
        kind = "cuda" if backend == "nccl" else "cpu"
        if kind == "cuda":
            torch.cuda.set_device(rank)
        spec = tiny_spec(f"cuda:{rank}" if kind == "cuda" else "cpu", devices=2, amp=False)
        losses = _step_losses(spec)
        if rank == 0:
            (Path(out) / "rank0.json").write_text(json.dumps(losses))
    finally:
        dist.destroy_process_group()


# ------------------------------------------------------------------------- device time
def check_layer_times(ctx: Context) -> Result:
    """Each layer's device time per training step, eager and compiled, against BN's (BNET and
    UBN against BN plus a depthwise convolution of their kernel), until the deadline."""
    rows, bad = [], []
    bn = gl.Case.build("bn", ctx.shape, ctx.device)
    base = {"eager": gl.device_ms(bn.step()), "compiled": _ms(bn, bn.layer, ctx)}
    for case in ctx.cases():
        conv = gl.depthwise_reference(case.layer, ctx.shape[1])
        extra = {"eager": 0.0, "compiled": 0.0}
        if conv is not None:
            extra = {"eager": gl.device_ms(case.step(conv)), "compiled": _ms(case, conv, ctx)}
        times = {"eager": gl.device_ms(case.step()), "compiled": _ms(case, case.layer, ctx)}
        ratios = {k: times[k] / (base[k] + extra[k]) for k in times}
        rows.append([case.name] + [f"{times[k]:.3f} ({ratios[k]:.2f}x)" for k in times])
        bad += [f"{case.name} {k} {r:.2f}x" for k, r in ratios.items() if r > TIME_LIMIT]
    details = table(["layer", "eager ms (x BN)", "compiled ms (x BN)"], rows)
    good = f"all {len(rows)} within {TIME_LIMIT}x BN, eager and compiled"
    return verdict(bad, good, details, ctx)


def _ms(case: gl.Case, module: torch.nn.Module, ctx: Context) -> float:
    """Device ms of a step of `module` compiled, on `case`'s input."""
    return gl.device_ms(case.step(gl.compiled(module, ctx.backend)))
