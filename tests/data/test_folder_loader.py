"""ImageFolder data sets (`imagenet`) through the DataLoader path, on a tiny tree."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image

from normbench.data import build_data
from normbench.data.imagenet import IMAGENET_MEAN, IMAGENET_STD
from normbench.errors import DatasetNotFoundError


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """root/{train,val}/{cat,dog}/*.png: 6 train and 2 val images per class, 30x40 RGB."""
    root = tmp_path_factory.mktemp("imagefolder")
    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("val", 2)):
        for cls in ("cat", "dog"):
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                arr = rng.integers(0, 256, size=(30, 40, 3), dtype=np.uint8)
                Image.fromarray(arr).save(root / split / cls / f"{i}.png")
    return root


def _build(root: Path, **kw: object):
    opts = dict(
        batch_size=4,
        eval_batch_size=3,
        device="cpu",
        seed=1,
        root=str(root),
        image_size=16,
        val_fraction=0.25,
        num_workers=0,
    )
    return build_data("imagenet", **{**opts, **kw})


def test_eval_batches_match_resize_centercrop_normalize(tree: Path) -> None:
    data = _build(tree)
    assert data.num_classes == 2 and data.info["val_size"] == 4 and data.info["test_size"] == 4
    x = torch.cat([b[0] for b in data.test])
    y = torch.cat([b[1] for b in data.test])
    files = sorted((tree / "val").glob("*/*.png"))
    # independent reference: Resize(16 * 256 / 224 = 18) + CenterCrop(16) on the PIL image,
    # then (x / 255 - mean) / std written out by hand
    ref = torch.stack(
        [TF.pil_to_tensor(TF.center_crop(TF.resize(Image.open(f), 18), 16)) for f in files]
    ).double()
    m = torch.tensor(IMAGENET_MEAN, dtype=torch.float64).view(1, 3, 1, 1)
    s = torch.tensor(IMAGENET_STD, dtype=torch.float64).view(1, 3, 1, 1)
    assert torch.allclose(x.double(), (ref / 255 - m) / s, atol=1e-5)
    assert y.tolist() == [0, 0, 1, 1]


def test_train_batches_reproducible_per_epoch_and_worker_count(tree: Path) -> None:
    a, b = _build(tree), _build(tree, num_workers=2)
    assert len(a.train) == 2  # 8 train images after the val carve, drop_last
    a.train.set_epoch(3)
    b.train.set_epoch(3)
    for (xa, ya), (xb, yb) in zip(a.train, b.train, strict=True):
        assert xa.shape == (4, 3, 16, 16) and torch.equal(xa, xb) and torch.equal(ya, yb)
    a.train.set_epoch(4)
    b.train.set_epoch(3)
    assert not torch.equal(next(iter(a.train))[0], next(iter(b.train))[0])
    assert a.probe.shape == (8, 3, 16, 16)  # probe_batch_size 32 capped at the train size


def test_missing_tree_says_where(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match="never downloaded") as err:
        _build(tmp_path)
    assert str(tmp_path / "train") in str(err.value)
    with pytest.raises(DatasetNotFoundError, match="needs dataset_options.root"):
        build_data("imagenet", batch_size=4, eval_batch_size=4, device="cpu", seed=0)
