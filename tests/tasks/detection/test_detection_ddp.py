"""Detection on two DDP ranks (gloo on CPU) through the one loop, with synchronized BN
(`stats_scope: global`): both ranks train one step and evaluate, and agree on every number
(the loss and the AP of the whole test split, each rank having scored half of its images).
Mask R-CNN's mask head has a different number of RoIs on each rank, so instance segmentation
refuses global statistics and virtual devices at validation, with one line per problem."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from normbench.spec import Recipe, SpecError, TrialSpec

pytestmark = pytest.mark.slow
CANVAS: dict[str, Any] = {"image_size": 40, "n_train": 16, "n_test": 4, "max_per_image": 3,
                          "min_side": 8, "max_side": 18, "val_fraction": 0.25}  # fmt: skip


def _spec(task: str, **changes: Any) -> TrialSpec:
    spec = TrialSpec(
        variant="bn", backbone="imagenet_resnet18", dataset="digits_coco",
        dataset_options=CANVAS, task=task, task_options={"layout": "small", "width": 16},
        epochs=1, batch_size=2, devices=2, stats_scope="global",
        recipe=Recipe(lr=0.02, weight_decay=1e-4, schedule="constant"), limit_batches=1,
        eval_batch_size=1, probe=False, device="cpu", num_threads=1,
    )  # fmt: skip
    return spec.replace(**changes)


def _rank(rank: int, init: str, out: str) -> None:
    from normbench.engine.loop import run_trial

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    try:
        (record,) = run_trial(_spec("detection"))
        keys = [k for k in record if k.startswith(("train_", "val_", "test_")) and "time" not in k]
        Path(out, f"{rank}.json").write_text(json.dumps({k: record[k] for k in keys}))  # type: ignore[literal-required]
    finally:
        dist.destroy_process_group()


def test_two_ranks_with_synchronized_bn_agree(tmp_path: Path) -> None:
    init = f"file://{tempfile.mktemp(prefix='nbdet', dir=tmp_path)}"
    threads = torch.get_num_threads()
    mp.start_processes(_rank, args=(init, str(tmp_path)), nprocs=2, start_method="spawn")
    torch.set_num_threads(threads)
    ranks = [json.loads((tmp_path / f"{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0] == ranks[1]
    assert ranks[0]["train_loss"] > 0 and ranks[0]["test_box_AP"] is not None


def test_instance_segmentation_refuses_what_its_mask_head_cannot_do() -> None:
    from normbench.engine.build import spec_refusals

    refused = spec_refusals(_spec("instance_segmentation"))
    assert list(refused) == ["stats_scope"] and "use stats_scope: device" in refused["stats_scope"]
    virtual = spec_refusals(_spec("instance_segmentation", parallel="virtual"))
    assert list(virtual) == ["parallel"]
    assert not spec_refusals(_spec("instance_segmentation", stats_scope="device"))
    assert not spec_refusals(_spec("detection"))
    with pytest.raises(SpecError, match="global statistics cannot exchange"):
        from normbench.engine.build import build_trial

        build_trial(_spec("instance_segmentation"))
