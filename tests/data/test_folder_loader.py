"""ImageFolder data sets (`imagenet`) through the DataLoader path, on a tiny tree; a
data-parallel rank decodes only its part of each batch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torchvision.datasets import DatasetFolder

from normbench.data import build_data
from normbench.data.imagenet import IMAGENET_MEAN, IMAGENET_STD
from normbench.data.shard import Shard
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
    opts = {**opts, **kw}
    if opts["num_workers"] is None:  # the default: from the trial's CPUs
        del opts["num_workers"]
    return build_data("imagenet", **opts)


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


# -- data-parallel ranks: each decodes only its part ---------------------------------------
@pytest.fixture
def decoded(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """(split folder, file index) of every image decoded in this process, in order."""
    calls: list[tuple[str, int]] = []
    original = DatasetFolder.__getitem__

    def counting(self: DatasetFolder, index: int) -> tuple[object, int]:
        calls.append((Path(self.root).name, index))
        return original(self, index)

    monkeypatch.setattr(DatasetFolder, "__getitem__", counting)
    return calls


def _pass(loader: Any, decoded: list, epoch: int | None = None) -> tuple[list, list]:
    """(batches, images decoded) of one pass over `loader`."""
    if epoch is not None:
        loader.set_epoch(epoch)
    decoded.clear()
    batches = list(loader)
    return batches, list(decoded)


@pytest.mark.parametrize("ranks", [2, 3])
def test_train_rank_decodes_only_its_rows_of_each_global_batch(
    tree: Path, decoded: list, ranks: int
) -> None:
    b = 2
    whole = _build(tree, batch_size=ranks * b).train  # one process: the N x B batches
    want = [_pass(whole, decoded, epoch) for epoch in (0, 1)]
    assert want[0][1] != want[1][1]  # the order changes with the epoch
    for r in range(ranks):
        part = _build(tree, batch_size=b, shard=Shard(r, ranks)).train
        assert len(part) == len(whole) == 8 // (ranks * b)  # every rank takes as many steps
        for epoch, (batches, calls) in zip((0, 1), want, strict=True):
            got, got_calls = _pass(part, decoded, epoch)
            assert len(got) == len(batches)
            rows = slice(r * b, (r + 1) * b)
            for (x, y), (wx, wy) in zip(got, batches, strict=True):
                assert torch.equal(x, wx[rows]) and torch.equal(y, wy[rows])  # bit for bit
            # the single process decoded each batch's rows in order: the rank decodes its own
            mine = [calls[k * ranks * b + r * b + j] for k in range(len(batches)) for j in range(b)]
            assert got_calls == mine


def test_limit_batches_decodes_only_the_served_batches(tree: Path, decoded: list) -> None:
    part = _build(tree, batch_size=2, shard=Shard(1, 2), limit_batches=1).train
    batches, calls = _pass(part, decoded, 0)
    assert len(part) == len(batches) == 1 and len(calls) == 2


@pytest.mark.parametrize("ranks", [2, 3])
def test_eval_rank_decodes_only_every_nth_batch(tree: Path, decoded: list, ranks: int) -> None:
    whole = _build(tree, eval_batch_size=1)
    for split in ("val", "test"):  # 4 images each: 4 batches of 1
        batches, calls = _pass(getattr(whole, split), decoded)
        assert len(batches) == len(calls) == 4
        seen = []
        for r in range(ranks):
            part = _build(tree, batch_size=2, eval_batch_size=1, shard=Shard(r, ranks))
            part = getattr(part, split)
            got, got_calls = _pass(part, decoded)
            assert len(part) == len(got) == len(range(r, 4, ranks))
            for (x, y), (wx, wy) in zip(got, batches[r::ranks], strict=True):
                assert torch.equal(x, wx) and torch.equal(y, wy)
            assert got_calls == calls[r::ranks]
            seen += got_calls
        assert sorted(seen) == sorted(calls)  # the ranks' sums cover every image once


def test_workers_come_from_the_trials_cpus_and_persist_between_epochs(tree: Path) -> None:
    """A trial granted 3 CPUs decodes with 2 workers (one CPU drives the device), started once:
    the second epoch is served by the same processes, with the batches of one process."""
    data = _build(tree, num_workers=None, cpus=3)
    loader = data.train
    assert loader.num_workers == 2 and _build(tree, num_workers=None, cpus=1).train.num_workers == 0
    reference = _build(tree).train  # num_workers=0: decoded in this process
    pids = []
    for epoch in (0, 1):
        loader.set_epoch(epoch)
        reference.set_epoch(epoch)
        for (x, y), (xr, yr) in zip(loader, reference, strict=True):
            assert torch.equal(x, xr) and torch.equal(y, yr)
        pids.append(sorted(w.pid for w in loader._loader._iterator._workers))
    assert len(pids[0]) == 2 and pids[0] == pids[1]


def test_num_workers_is_not_part_of_the_trial_id(tree: Path) -> None:
    from normbench.spec import TrialSpec

    spec = TrialSpec(variant="bn", backbone="resnet18", dataset="imagenet", epochs=1,
                     dataset_options={"root": str(tree), "num_workers": 0})  # fmt: skip
    more = spec.replace(dataset_options={"root": "/elsewhere", "num_workers": 12})
    assert spec.trial_id == more.trial_id
