"""`normbench bench harness`: what running trials through `normbench run` (Ray Tune, local)
costs over calling `run_trial` in a loop in one process.

The same 4 trials (a synthetic data set, ResNet-20, one CPU thread each, one at a time)
run both ways, with checkpoints written every epoch on both sides. The Ray side is timed as
a user sees it: the wall time of the `normbench run` process, from interpreter start to exit
(imports, Ray start-up and shutdown, store writes and fsyncs included). The direct side is
timed from the first `run_trial` call to the last record, in this already-warm process.
The fixed start-up cost is measured separately: a one-trial, one-batch suite both ways; the
difference is what any `normbench run` pays once, whatever the suite. Target: under 10%
overhead for trials of about a minute (`quick` uses ~10 s trials, where the fixed cost
weighs more).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from normbench.bench.machine import describe_machine, machine_table

SUITE = """
version: 1
name: bench-harness
dataset: {{name: synthetic, image_size: 32, n_train: {n_train}, n_test: 256, num_classes: 10}}
backbones: [resnet20]
variants: [bn, {{name: gn, options: {{num_groups: 8}}}}]
batch_sizes: [64]
seeds: {seeds}
train: {{epochs: {epochs}, lr: 0.05, schedule: constant, probe: false, device: cpu,
        limit_batches: {limit}, num_threads: 1}}
resources: {{cpus: 1, gpus: 0}}
max_concurrent: 1
"""


def run(output: Path, *, quick: bool = False) -> Path:
    """Measure both ways and write the Markdown report to `output`; returns its path."""
    output = Path(output)
    work = Path(tempfile.mkdtemp(prefix="nbh", dir="/tmp"))
    load = os.getloadavg()
    n_train, epochs = (640, 2) if quick else (3200, 4)
    # 4 trials of about a minute (2 in quick mode): a suite, not a single trial, is what
    # amortises Ray's fixed start-up cost, which the "start-up" row reports on its own.
    seeds = "[0]" if quick else "[0, 1]"
    main = _write(
        work / "main.yaml",
        SUITE.format(n_train=n_train, epochs=epochs, limit="null", seeds=seeds),
    )
    tiny = _write(work / "tiny.yaml", SUITE.format(n_train=256, epochs=1, limit=1, seeds="[0]"))
    try:
        rows = {
            "suite": (_direct(main, work / "d-main"), _via_ray(main, work / "r-main", work)),
            "start-up": (_direct(tiny, work / "d-tiny"), _via_ray(tiny, work / "r-tiny", work)),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    text = _report(rows, quick=quick, load=load)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text)
    return output


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _direct(suite_path: Path, ckpt_root: Path) -> dict[str, Any]:
    """run_trial in a loop, in this process; per-trial training time from the records."""
    from normbench.engine.loop import run_trial
    from normbench.suite.loader import load_suite

    trials = load_suite(suite_path).trials()
    t0 = time.perf_counter()
    train = 0.0
    for t in trials:
        records = list(run_trial(t.spec, checkpoint_dir=ckpt_root / t.trial_id))
        train += (records[-1]["elapsed_s"] or 0.0) if records else 0.0
    return {"wall_s": time.perf_counter() - t0, "train_s": train, "trials": len(trials)}


def _via_ray(suite_path: Path, run_dir: Path, work: Path) -> dict[str, Any]:
    """`normbench run` as a fresh process with its own local Ray; training time from the store."""
    env = {**os.environ, "RAY_TMPDIR": str(work / "ray")}
    cmd = [sys.executable, "-m", "normbench", "run", str(suite_path), "--output", str(run_dir)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"normbench run failed ({proc.returncode}): {proc.stderr[-2000:]}")
    last: dict[str, dict[str, Any]] = {}
    for line in (run_dir / "epochs.jsonl").read_text().splitlines():
        rec = json.loads(line)
        last[rec["trial_id"]] = rec
    train = sum(float(r["elapsed_s"]) for r in last.values())
    return {"wall_s": wall, "train_s": train, "trials": len(last)}


def _report(rows: dict[str, tuple[dict, dict]], *, quick: bool, load: tuple) -> str:
    (d, r), (dt_, rt) = rows["suite"], rows["start-up"]
    startup = rt["wall_s"] - dt_["wall_s"]
    raw = 100.0 * (r["wall_s"] / d["wall_s"] - 1.0)
    # On a shared machine training speed drifts between the two runs; the harness's own cost
    # is the time outside training: compare that, relative to the direct wall time.
    extra = (r["wall_s"] - r["train_s"]) - (d["wall_s"] - d["train_s"])
    overhead = 100.0 * extra / d["wall_s"]
    per_trial = (extra - (rt["wall_s"] - rt["train_s"]) + (dt_["wall_s"] - dt_["train_s"])) / max(
        d["trials"], 1
    )
    lines = [
        "# Harness overhead: `normbench run` (Ray Tune, local) vs `run_trial` in a loop",
        "",
        f"{d['trials']} trials (ResNet-20, synthetic 32x32, batch 64, one CPU thread, one at a "
        f"time){' - quick mode' if quick else ''}. Wall = what the user waits for; training = "
        "the trials' own `elapsed_s` (sum over trials).",
        "",
        "| run | way | wall (s) | training (s) | wall - training (s) |",
        "|---|---|---|---|---|",
    ]
    for name, (direct, ray) in rows.items():
        for way, m in (("run_trial loop", direct), ("normbench run", ray)):
            lines.append(
                f"| {name} | {way} | {m['wall_s']:.1f} | {m['train_s']:.1f} | "
                f"{m['wall_s'] - m['train_s']:.1f} |"
            )
    lines += [
        "",
        f"- **Overhead of `normbench run` on the suite: {overhead:+.1f}%** of the direct wall "
        f"time: its time outside training minus the loop's (target < 10% for trials of about "
        f"a minute; mean trial here {d['wall_s'] / max(d['trials'], 1):.0f} s).",
        f"- Raw wall-time ratio - 1: {raw:+.1f}% (includes drift of training speed between the "
        "two runs on this shared machine).",
        f"- Fixed start-up cost (one-batch suite, Ray minus direct): {startup:.1f} s.",
        f"- Remaining harness time per trial (outside training, start-up removed): "
        f"{per_trial:.1f} s.",
        "",
        *_machine(load),
    ]
    return "\n".join(lines) + "\n"


def _machine(load: tuple[float, ...]) -> list[str]:
    info = describe_machine(("torch", "ray", "optuna"), load=load)
    note = "The machine is shared: compare rows of one report, not across reports."
    return [*machine_table(info), "", note]
