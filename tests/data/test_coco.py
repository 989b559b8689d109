"""The `coco` data set on COCO 2017 files in the real on-disk format (tests/data/coco_files.py):
splits, classes from the category ids (with COCO's gaps), crowd regions dropped in training
and kept for evaluation, this rank's share under DDP, and the one line that says which file
to put where when one is missing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from coco_files import write_coco

from normbench.data import build_data
from normbench.data.coco import coco
from normbench.data.prepare import prepare_dataset
from normbench.data.shard import Shard
from normbench.errors import DatasetNotFoundError


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_coco(tmp_path_factory.mktemp("coco"), np.random.default_rng(0))


def _annotations(root: Path, split: str) -> dict:
    return json.loads((root / "annotations" / f"instances_{split}.json").read_text())


def test_splits_classes_and_crowds(root: Path) -> None:
    splits = coco(root=str(root), val_fraction=0.25)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (9, 3, 4)
    assert splits.num_classes == 91 and splits.info["categories"] == 3
    data = build_data("coco", batch_size=3, eval_batch_size=2, device="cpu", seed=0,
                      root=str(root), val_fraction=0.25, augment=False)  # fmt: skip
    crowd = {a["image_id"] for a in _annotations(root, "train2017")["annotations"] if a["iscrowd"]}
    assert crowd  # image 5 and 10 of the generated files
    for images, targets in data.train:
        for image, t in zip(images, targets, strict=True):
            assert image.shape == (3, 48, 48) and not bool(t["iscrowd"].any())
            if t["image_id"] in crowd:
                assert len(t["boxes"]) == 0  # its only object is a crowd region
    seen = {}
    for _, targets in data.val:
        seen.update({t["image_id"]: t for t in targets})
    for _, targets in data.test:  # evaluation keeps crowd regions, flagged
        for t in targets:
            anns = [a for a in _annotations(root, "val2017")["annotations"]
                    if a["image_id"] == t["image_id"]]  # fmt: skip
            assert t["iscrowd"].tolist() == [a["iscrowd"] for a in anns]
            assert t["labels"].tolist() == [a["category_id"] for a in anns]
            assert t["masks"].shape[0] == len(anns)


def test_ranks_share_evaluation_batches(root: Path) -> None:
    shares = [
        build_data(
            "coco",
            batch_size=1,
            eval_batch_size=1,
            device="cpu",
            seed=0,
            root=str(root),
            shard=Shard(r, 2),
            masks=False,
        )  # fmt: skip
        for r in (0, 1)
    ]
    ids = [[t["image_id"] for _, ts in s.test for t in ts] for s in shares]
    assert sorted(ids[0] + ids[1]) == [1, 2, 3, 4] and not set(ids[0]) & set(ids[1])
    assert "masks" not in next(iter(shares[0].test))[1][0]


def test_missing_files_name_what_to_put_where(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError) as exc:
        prepare_dataset("coco", {"root": str(tmp_path)})
    text = str(exc.value)
    assert "\n" not in text and "it is never downloaded" in text
    assert f"file {tmp_path}/annotations/instances_train2017.json missing" in text
    assert "annotations/instances_val2017.json with val2017/*.jpg" in text
