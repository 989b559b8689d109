"""CIFAR-10/100 through the real loader, from archives written in the exact on-disk format."""

from __future__ import annotations

import hashlib
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from cifar_files import write_cifar10, write_cifar100
from PIL import Image
from torchvision.datasets import CIFAR10, CIFAR100

from normbench.data import build_data
from normbench.data.cifar import CIFAR10_MEAN, CIFAR100_MEAN, cifar10, cifar100
from normbench.errors import DatasetNotFoundError, UserError


def trust_md5s(
    monkeypatch: pytest.MonkeyPatch,
    cls: type[CIFAR10],
    md5: dict[str, str],
    tgz_md5: str | None = None,
) -> None:
    """torchvision's `CIFAR10._check_integrity` (and `_load_meta`) compare the md5 of each file
    in root/base_folder with the md5 hard-coded in the class's `train_list`, `test_list` and
    `meta` (`torchvision.datasets.utils.check_integrity`). Our small files differ from the real
    ones, so we write their true md5s into those class lists: the check still hashes every
    file for real and rejects a changed one (see the corruption test)."""
    monkeypatch.setattr(cls, "train_list", [[n, md5[n]] for n, _ in cls.train_list])
    monkeypatch.setattr(cls, "test_list", [[n, md5[n]] for n, _ in cls.test_list])
    monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": md5[cls.meta["filename"]]})
    if tgz_md5 is not None:
        monkeypatch.setattr(cls, "tgz_md5", tgz_md5)


def _as_nchw(rows: np.ndarray) -> torch.Tensor:
    """The documented CIFAR row layout: 1024 red, then green, then blue, each row-major 32x32."""
    return torch.from_numpy(rows.reshape(-1, 3, 32, 32).copy())


def test_files_are_python2_pickles(tmp_path: Path) -> None:
    write_cifar10(tmp_path, np.random.default_rng(0))
    with open(tmp_path / "cifar-10-batches-py" / "data_batch_1", "rb") as f:
        entry = pickle.load(f, encoding="bytes")  # as the CIFAR web page loads them
    assert entry[b"data"].dtype == np.uint8 and entry[b"data"].shape == (4, 3072)
    assert isinstance(entry[b"labels"], list)


def test_cifar10_round_trip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    md5, x, y, xt, yt = write_cifar10(tmp_path, np.random.default_rng(1))
    trust_md5s(monkeypatch, CIFAR10, md5)
    splits = cifar10(root=str(tmp_path), download=False, val_fraction=0.0)
    assert splits.val is None and splits.num_classes == 10 and splits.mean == CIFAR10_MEAN
    assert torch.equal(splits.train.images, _as_nchw(x))
    assert splits.train.labels.tolist() == y.tolist()
    assert torch.equal(splits.test.images, _as_nchw(xt))
    assert splits.test.labels.tolist() == yt.tolist()
    assert splits.augment.crop_padding == 4 and splits.augment.hflip
    small = cifar10(root=str(tmp_path), download=False, image_size=16, val_fraction=0.0)
    assert small.image_size == 16 and small.test.images.shape == (len(yt), 3, 16, 16)
    # independent reference: PIL's bilinear resize (anti-aliased when shrinking, like ours)
    pil = [
        np.asarray(Image.fromarray(im.permute(1, 2, 0).numpy()).resize((16, 16), Image.BILINEAR))
        for im in _as_nchw(xt)
    ]
    ref = torch.from_numpy(np.stack(pil)).permute(0, 3, 1, 2).double()
    assert (small.test.images.double() - ref).abs().max() <= 1.0


def test_failed_download_gives_one_clear_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def offline(self: CIFAR10) -> None:
        raise OSError("Network is unreachable")

    monkeypatch.setattr(CIFAR10, "download", offline)
    match = "download was tried and failed .*Network is unreachable"
    with pytest.raises(DatasetNotFoundError, match=match):
        cifar10(root=str(tmp_path), download=True, val_fraction=0.1)


def test_cifar100_round_trip_with_val_split(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    md5, x, y, xt, yt = write_cifar100(tmp_path, np.random.default_rng(2))
    trust_md5s(monkeypatch, CIFAR100, md5)
    splits = cifar100(root=str(tmp_path), download=False, val_fraction=0.25, split_seed=3)
    assert splits.num_classes == 100 and splits.mean == CIFAR100_MEAN
    both = torch.cat([splits.train.images, splits.val.images])
    labels = torch.cat([splits.train.labels, splits.val.labels])
    expect = {(r.tobytes(), int(c)) for r, c in zip(_as_nchw(x).numpy(), y, strict=True)}
    got = {(r.numpy().tobytes(), int(c)) for r, c in zip(both, labels, strict=True)}
    assert got == expect and len(both) == len(x)  # train + val is the file's train set
    assert torch.equal(splits.test.images, _as_nchw(xt))
    assert splits.test.labels.tolist() == yt.tolist()


def test_archive_is_extracted_without_network(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "src"
    md5, x, _, _, _ = write_cifar100(src, np.random.default_rng(4))
    root = tmp_path / "root"
    root.mkdir()
    with tarfile.open(root / "cifar-100-python.tar.gz", "w:gz") as tar:
        tar.add(src / "cifar-100-python", arcname="cifar-100-python")
    tgz = hashlib.md5((root / "cifar-100-python.tar.gz").read_bytes()).hexdigest()
    trust_md5s(monkeypatch, CIFAR100, md5, tgz)
    data = build_data(
        "cifar100",
        batch_size=4,
        eval_batch_size=8,
        device="cpu",
        seed=0,
        root=str(root),
        download=False,
        val_fraction=0.0,
        augment=False,
    )
    assert data.info["train_size"] == len(x) and data.image_size == 32
    xb, _ = next(iter(data.test))
    assert xb.shape == (6, 3, 32, 32)


def test_missing_files_give_one_clear_message(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError) as err:
        cifar100(
            root=str(tmp_path), download=False, image_size=None, val_fraction=0.1, split_seed=0
        )
    msg = str(err.value)
    assert "cifar-100-python.tar.gz" in msg and "cifar-100-python/" in msg
    assert str(tmp_path) in msg and "\n" not in msg
    assert isinstance(err.value, UserError)


def test_corrupted_file_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    md5, *_ = write_cifar10(tmp_path, np.random.default_rng(5))
    trust_md5s(monkeypatch, CIFAR10, md5)
    path = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    path.write_bytes(path.read_bytes()[:-10])  # a truncated download
    with pytest.raises(DatasetNotFoundError, match="data_batch_3 missing or corrupted"):
        cifar10(root=str(tmp_path), download=False, val_fraction=0.1)
