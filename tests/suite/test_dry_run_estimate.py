"""`normbench run SUITE --dry-run` on the shipped suites: the cost estimate comes from each
trial's task (or says the task cannot give one), counts the val and test evaluation every
epoch (also under --limit-batches), divides by the trials that fit at once, and on an
existing run directory says what is finished and what a rerun would do.

Expected numbers are computed here: image counts from the data itself, multiply-adds by
torch's own FLOP counter, run directory counts from the JSONL lines."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from normbench.cli import main

ROOT = Path(__file__).resolve().parents[2]
SUITES = ROOT / "suites"
QUICKSTART_RUN = ROOT / "reports" / "quickstart" / "run"  # all 33 trials finished
LOCAL = ["--set", "resources.cpus=1", "--set", "resources.gpus=0"]


def _dry(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exc:
        main(["run", *argv, "--dry-run"])
    out = capsys.readouterr()
    assert exc.value.code == 0, out.err
    return out.out


def _number(text: str, pattern: str) -> float:
    found = re.search(pattern, text)
    assert found, (pattern, text)
    return float(found.group(1))


def _macs(backbone: str, channels: int, size: int) -> float:
    """Multiply-adds of one image's forward, by torch's FLOP counter (2 FLOPs a MAC)."""
    from normbench.models import BACKBONES

    model = BACKBONES.get(backbone).obj(10, nn.BatchNorm2d, in_channels=channels).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, channels, size, size))
    return counter.get_total_flops() / 2


def _digits_eval_images() -> tuple[int, int]:
    """(training images, val + test images) of the quickstart's digits, from the data."""
    from normbench.data import DATASETS

    splits = DATASETS.get("digits").obj(image_size=16, val_fraction=0.1, split_seed=0)
    return len(splits.train), len(splits.val) + len(splits.test)


def test_the_estimate_is_the_tasks(tmp_path: Path, capsys) -> None:
    """sabn_adversarial: the adversarial task's cost (PGD-7 training: 7 x ~2 forwards + the
    clean and adversarial passes, 3 each; evaluation of SA and PGD-10/20 per branch:
    1 + 21 + 41 forwards, through 2 branches for AuxBN and SaAuxBN, 1 for BN) on CIFAR-10's
    45k/5k/10k images, 3 seeds x 200 epochs; a task that cannot say its cost (detection)
    gets no estimate, and the dry run says so."""
    out = _dry([str(SUITES / "sabn_adversarial.yaml"), "-o", str(tmp_path / "a"), *LOCAL], capsys)
    train, evaluated = 45_000, 5_000 + 10_000  # CIFAR-10, val_fraction 0.1 of 50k
    per_epoch = {b: (2 * 7 + 6) * train + b * (1 + 21 + 41) * evaluated for b in (1, 2)}
    trials = {1: 3, 2: 6}  # bn; auxbn and saauxbn
    forwards = sum(trials[b] * 200 * per_epoch[b] for b in (1, 2))
    expected = forwards * _macs("preact_resnet18", 3, 32)
    got = _number(out, r"estimated work: ([0-9.e+]+) TMAC") * 1e12
    assert got == pytest.approx(expected, rel=5e-3)
    assert "adversarial 20 a trained image, 63 an evaluated one" in out
    assert "adversarial 20 a trained image, 126 an evaluated one" in out
    # every shipped suite's task is checked through `describe` in test_shipped_suites.py
    out = _dry([str(SUITES / "detection_digits.yaml"), "-o", str(tmp_path / "d"), *LOCAL], capsys)
    assert "no cost estimate: task 'detection' counts no cost: " in out
    assert "estimated time" not in out and "TMAC" not in out


def test_evaluation_is_counted_under_limit_batches(tmp_path: Path, capsys) -> None:
    """The quickstart smoked to 1 epoch of 2 batches still scores val and test in full: the
    work is 3 forwards a trained image and 1 an evaluated one, on both counts."""
    argv = [str(SUITES / "quickstart.yaml"), "-o", str(tmp_path / "q")]
    out = _dry([*argv, "--max-epochs", "1", "--limit-batches", "2"], capsys)
    train, evaluated = _digits_eval_images()
    trials, trained = 33, 2 * 64
    assert f"estimated images: {trials * trained:.3g} trained" in out
    assert f", {trials * evaluated:.3g} evaluated" in out
    tmac = _number(out, r"estimated work: ([0-9.e+]+) TMAC")
    expected = trials * (3 * trained + evaluated) * _macs("resnet20", 1, 16)
    assert tmac * 1e12 == pytest.approx(expected, rel=5e-3)
    full = _dry(argv, capsys)  # 5 epochs of the whole training split
    assert f"estimated images: {5 * trials * train:.3g} trained" in full


def test_trials_at_once_follow_the_resources(tmp_path: Path, capsys) -> None:
    """max_concurrent unlimited: as many trials as this machine's CPUs hold side by side;
    one trial asking for every CPU: "1 trial at once"; max_concurrent 2 bounds it."""
    cpus = os.cpu_count() or 1
    argv = [str(SUITES / "quickstart.yaml"), "-o", str(tmp_path / "q"), "--set"]
    out = _dry([*argv, "max_concurrent=null"], capsys)
    fits = min(cpus, 33)
    plural = "trial" if fits == 1 else "trials"
    assert f"wall time with {fits} {plural} at once (" in out
    out = _dry([*argv, "max_concurrent=null", "--set", f"resources.cpus={cpus}"], capsys)
    assert "wall time with 1 trial at once (this machine fits 1 trial side by side)" in out
    out = _dry(argv[:-1], capsys)  # the suite's max_concurrent: 2
    assert cpus < 2 or "wall time with 2 trials at once (max_concurrent 2)" in out


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_an_existing_run_directory_says_what_is_left(tmp_path: Path, capsys) -> None:
    """The quickstart's committed run, copied: all 33 finished, nothing left; then with 3
    summary lines removed (interrupted: epochs, no summary) and 2 marked failed, the dry run
    counts them as the rerun treats them, and changes nothing on disk."""
    run = tmp_path / "run"
    shutil.copytree(QUICKSTART_RUN, run)
    argv = [str(SUITES / "quickstart.yaml"), "-o", str(run)]
    out = _dry(argv, capsys)
    assert f"resume: {run} holds 33 of the 33 trials finished (33 completed); 0 left" in out
    assert "nothing left to run" in out
    lines = [json.loads(x) for x in (run / "trials.jsonl").read_text().splitlines()]
    kept = lines[3:]
    for line in kept[:2]:
        line["status"] = "failed"
    (run / "trials.jsonl").write_text("".join(json.dumps(x) + "\n" for x in kept))
    epochs = {json.loads(x)["trial_id"] for x in (run / "epochs.jsonl").read_text().splitlines()}
    interrupted = {x["trial_id"] for x in lines[:3]} & epochs
    before = _digest(run)
    out = _dry(argv, capsys)
    done = len(kept) - 2
    assert (
        f"holds {done} of the 33 trials finished ({done} completed); {33 - done} left "
        f"({len(interrupted)} resume from their checkpoints, 2 failed, run again)"
    ) in out
    assert f"the {33 - done} left: ~" in out and _digest(run) == before
    stored = {
        ln.split()[0]: ln.split()[-1] for ln in out.splitlines() if re.match(r"[0-9a-f]{12} ", ln)
    }
    assert {t for t, s in stored.items() if s == "interrupted"} == interrupted
    assert {t for t, s in stored.items() if s == "failed"} == {x["trial_id"] for x in kept[:2]}
    assert len(stored) == 33 and list(stored.values()).count("completed") == done
