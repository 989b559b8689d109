"""Data-parallel trials: DDP (gloo, 2 ranks) equals virtual devices step by step for every
built-in layer and on folder (ImageFolder PNG) data, where each rank decodes only its part; a
killed 2-rank trial resumes from rank 0's checkpoint; the loader's refusals.

One pair of gloo processes per module runs every DDP trial (process start-up dominates).
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from PIL import Image
from torchvision.datasets import DatasetFolder

from normbench.engine import checkpoint as ckpt
from normbench.engine.loop import TIMING_KEYS, run_trial
from normbench.spec import SpecError, TrialSpec
from normbench.variants import BUILTIN_VARIANTS, plain_norm

# Options that make each layer's batch dependence visible at 8 samples per device.
OPTIONS: dict[str, dict[str, Any]] = {
    "ghost_bn": {"ghost_batch_size": 4},
    "fourthings": {"examples_per_group": 4, "channels_per_group": 2},
    "bgn": {"num_groups": 2},
    "ubn": {"tau": 0.3},
    "brn": {"relax_from": 0, "rmax_at": 2, "dmax_at": 2},  # r and d at work from step 1
    "evonorm_s0": {"num_groups": 2},
}
LAYERS = sorted(n for n, cls in BUILTIN_VARIANTS.items() if plain_norm(cls))
GLOBAL_LAYERS = ("bn", "ubn", "brn")  # SyncBatchNorm; UBN with its similarity over both ranks;
# Batch Renorm with r, d and its four moving averages over both ranks
KILL_AT_EPOCH = 2  # the resume test's ranks die in the first batch of this epoch


def _spec(variant: str, **changes: Any) -> TrialSpec:
    spec = TrialSpec(
        variant=variant,
        backbone="resnet20",
        dataset="synthetic",
        epochs=2,
        batch_size=8,
        devices=2,
        variant_options=OPTIONS.get(variant, {}),
        dataset_options={"image_size": 8, "n_train": 64, "n_test": 24, "num_classes": 4},
        backbone_options={"width": 4},
        limit_batches=2,
        device="cpu",
        probe=False,
        num_threads=1,
    )
    return spec.replace(**changes)


def _folder_spec(root: Path, **changes: Any) -> TrialSpec:
    """BN on an ImageFolder tree (`_write_tree`): 2 steps of 2 x 4 images, and 3 validation and
    5 test batches of 2, so the ranks evaluate unequal numbers of batches."""
    options = {"root": str(root), "image_size": 12, "val_fraction": 0.25, "num_workers": 0}
    spec = _spec("bn", dataset="imagenet", dataset_options=options, batch_size=4, epochs=1)
    return spec.replace(eval_batch_size=2, **changes)


def _write_tree(root: Path) -> None:
    """root/{train,val}/<class>/*.png: 3 classes, 8 train and 3 val 12x12 RGB images each."""
    rng = np.random.default_rng(0)
    for split, n in (("train", 8), ("val", 3)):
        for c in range(3):
            (root / split / f"c{c}").mkdir(parents=True)
            for i in range(n):
                img = rng.integers(0, 256, size=(12, 12, 3), dtype=np.uint8)
                Image.fromarray(img).save(root / split / f"c{c}" / f"{i}.png")


def _count_decodes() -> list[int]:
    """From now on, record every image this process decodes (the index of each call)."""
    calls: list[int] = []
    original = DatasetFolder.__getitem__

    def counting(self: DatasetFolder, index: int) -> tuple[Any, Any]:
        calls.append(index)
        return original(self, index)

    DatasetFolder.__getitem__ = counting  # type: ignore[method-assign]
    return calls


def _losses(spec: TrialSpec, checkpoint_dir: Path | None = None) -> tuple[list, list]:
    """(running training loss after every batch, records) of one run of `spec`."""
    losses: list[float] = []
    records = list(
        run_trial(spec, checkpoint_dir=checkpoint_dir, on_batch=lambda p: losses.append(p["loss"]))
    )
    return losses, records


def _rank(rank: int, init: str, out: str, kill: bool) -> None:
    """One DDP rank: every layer's trial, then the resume test's trial (killed when `kill`)."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    try:
        if not kill:
            for name in LAYERS:
                losses, records = _losses(_spec(name), Path(out) / name)
                if rank == 0:
                    torch.save((losses, records), Path(out) / f"{name}.result")
            for name in GLOBAL_LAYERS:  # stats_scope: global through the same loop
                spec = _spec(name, stats_scope="global")
                losses, records = _losses(spec, Path(out) / f"{name}-global")
                if rank == 0:
                    torch.save((losses, records), Path(out) / f"{name}-global.result")
            decoded = _count_decodes()
            losses, records = _losses(_folder_spec(Path(out) / "tree"), Path(out) / "folder")
            torch.save(len(decoded), Path(out) / f"folder-decoded-{rank}.result")
            if rank == 0:
                torch.save((losses, records), Path(out) / "folder.result")
        spec = _spec("ubn", epochs=3)

        def crash(progress: dict) -> None:
            if kill and progress["epoch"] == KILL_AT_EPOCH:
                os._exit(3)  # as a kill -9: no clean-up, no exception handling

        records = list(run_trial(spec, checkpoint_dir=Path(out) / "resume", on_batch=crash))
        if rank == 0:
            torch.save(records, Path(out) / "resumed.result")
    finally:
        dist.destroy_process_group()


def _spawn(out: Path, *, kill: bool) -> None:
    init = f"file://{tempfile.mktemp(prefix='nbddp', dir=out)}"
    mp.start_processes(_rank, args=(init, str(out), kill), nprocs=2, start_method="spawn")


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ddp")
    _write_tree(out / "tree")
    with pytest.raises(mp.ProcessExitedException):
        _spawn(out, kill=True)  # both ranks die in epoch 2 of the resume trial
    _spawn(out, kill=False)  # every layer, then the resume trial continues
    return out


@pytest.mark.parametrize("name", LAYERS)
def test_ddp_equals_virtual_devices_step_by_step(ddp_runs: Path, name: str) -> None:
    ddp_losses, ddp_records = torch.load(ddp_runs / f"{name}.result", weights_only=False)
    virtual = Path(tempfile.mkdtemp(dir=ddp_runs))
    losses, records = _losses(_spec(name, parallel="virtual"), virtual)
    assert len(losses) == len(ddp_losses) == 4
    torch.testing.assert_close(ddp_losses, losses, rtol=1e-5, atol=1e-6)  # every step
    for ddp_rec, rec in zip(ddp_records, records, strict=True):
        assert (ddp_rec["devices"], ddp_rec["optimizer_batch_size"]) == (2, 16)
        for key in ("train_loss", "train_top1", "val_loss", "test_loss", "test_top1"):
            assert ddp_rec[key] == pytest.approx(rec[key], rel=1e-3, abs=1e-5), key
    # Parameters and running statistics after the last step (rank 0's checkpoint).
    # NOTE: IN and GN (4 groups at width 4) on 2x2 maps normalise 4 values per statistic: one
    # fp32 step's gradient already carries ~4e-5 relative rounding error (BN: ~3e-7, measured
    # against float64), which four momentum steps grow to ~5e-3 on small tensors.
    tolerance = 1e-2 if name in ("in", "gn") else 1e-3
    ddp_model = ckpt.load_checkpoint(ddp_runs / name)["model"]
    model = ckpt.load_checkpoint(virtual)["model"]
    for key, value in model.items():
        if value.is_floating_point():  # relative L2 distance per tensor
            gap = float((ddp_model[key] - value).norm())
            assert gap <= tolerance * float(value.norm()) + 1e-6, (key, gap)
        else:
            assert torch.equal(ddp_model[key], value), key


def test_ddp_on_folder_data_equals_virtual_devices(
    ddp_runs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each rank decodes only its own images (which ones: tests/data/test_folder_loader.py),
    and the trial is still the virtual-device trial on whole batches, in training and in
    evaluation."""
    ddp_losses, ddp_records = torch.load(ddp_runs / "folder.result", weights_only=False)
    with monkeypatch.context() as m:
        m.setattr(DatasetFolder, "__getitem__", DatasetFolder.__getitem__)  # restored after
        decoded = _count_decodes()
        losses, records = _losses(_folder_spec(ddp_runs / "tree", parallel="virtual"))
    per_rank = [torch.load(ddp_runs / f"folder-decoded-{r}.result") for r in (0, 1)]
    # One process decodes the 18 probe images (probe_batch_size 32, capped at the 18 training
    # images), 2 steps x 8, the 6 validation and the 9 test images. Each rank decodes the probe
    # too, and its 2 x 4 training rows, 2 of 3 (rank 0) or 1 of 3 validation batches of 2,
    # and 3 of 5 (5 images) or 2 of 5 (4 images) test batches: every other image once.
    assert len(decoded) == 18 + 16 + 6 + 9
    assert per_rank == [18 + 8 + 4 + 5, 18 + 8 + 2 + 4]
    assert len(losses) == len(ddp_losses) == 2
    torch.testing.assert_close(ddp_losses, losses, rtol=1e-5, atol=1e-6)  # every step
    (ddp_rec,), (rec,) = ddp_records, records
    assert (ddp_rec["devices"], ddp_rec["optimizer_batch_size"]) == (2, 8)
    for key in ("train_loss", "train_top1", "val_loss", "val_top1", "test_loss", "test_top1"):
        assert ddp_rec[key] == pytest.approx(rec[key], rel=1e-3, abs=1e-5), key


@pytest.mark.parametrize("name", GLOBAL_LAYERS)
def test_ddp_global_scope_trial_equals_one_large_batch(ddp_runs: Path, name: str) -> None:
    """A DDP trial with stats_scope: global trains like one process on the 2 x 8 batch."""
    ddp_losses, ddp_records = torch.load(ddp_runs / f"{name}-global.result", weights_only=False)
    losses, records = _losses(_spec(name, parallel="virtual", stats_scope="global"))
    assert len(losses) == len(ddp_losses) == 4
    torch.testing.assert_close(ddp_losses, losses, rtol=1e-5, atol=1e-6)  # every step
    device_scope, _ = torch.load(ddp_runs / f"{name}.result", weights_only=False)
    assert device_scope[0] != pytest.approx(ddp_losses[0], rel=1e-4)  # the scope is real
    for ddp_rec, rec in zip(ddp_records, records, strict=True):
        for key in ("train_loss", "val_loss", "test_loss", "test_top1"):
            assert ddp_rec[key] == pytest.approx(rec[key], rel=1e-3, abs=1e-5), key


def test_virtual_devices_differ_from_one_large_batch() -> None:
    """The split is real: per-device statistics are not the statistics of all 16 samples."""
    split, _ = _losses(_spec("bn", parallel="virtual", epochs=1))
    whole, _ = _losses(_spec("bn", parallel="virtual", epochs=1, stats_scope="global"))
    assert split[0] != pytest.approx(whole[0], rel=1e-4)
    big, _ = _losses(_spec("bn", devices=1, batch_size=16, epochs=1))
    assert whole == pytest.approx(big, rel=1e-6)  # global scope = one batch of 2 x 8


def test_killed_two_rank_trial_resumes_to_the_uninterrupted_records(ddp_runs: Path) -> None:
    resumed = torch.load(ddp_runs / "resumed.result", weights_only=False)
    assert [r["epoch"] for r in resumed] == [2, 3]  # epoch 1 came from rank 0's checkpoint
    _, whole = _losses(_spec("ubn", epochs=3, parallel="virtual"))
    stored = ckpt.read_records(ddp_runs / "resume")
    assert [r["epoch"] for r in stored] == [1, 2, 3]
    for got, want in zip(stored, whole, strict=True):
        for key, value in want.items():
            if key in TIMING_KEYS or not isinstance(value, float):
                continue
            assert got[key] == pytest.approx(value, rel=1e-5, abs=1e-5), key


def test_ddp_without_a_process_group_is_refused() -> None:
    with pytest.raises(SpecError, match="parallel 'virtual'"):
        next(run_trial(_spec("bn")))


def test_suite_refusals(tmp_path: Path) -> None:
    from normbench.suite.loader import SuiteError, load_suite

    base = (
        "version: 1\nname: r\ndataset: {name: synthetic}\nbackbones: [resnet20]\n"
        "variants: [bn]\nbatch_sizes: [8]\n"
    )
    cases = {
        "train: {epochs: 1}\nresources: {gpus: 8}\n": "write `train: {devices: 8}` and "
        "`resources: {gpus: 1}`",
    }
    for i, (tail, message) in enumerate(cases.items()):
        path = tmp_path / f"s{i}.yaml"
        path.write_text(base + tail)
        with pytest.raises(SuiteError, match=re.escape(message)):
            load_suite(path)
    path = tmp_path / "ok.yaml"
    for parallel in ("virtual", "ddp"):
        ok = f"train: {{epochs: 1, devices: 2, parallel: {parallel}, stats_scope: global}}\n"
        path.write_text(base + ok)
        assert load_suite(path).trials()[0].spec.stats_scope == "global"
