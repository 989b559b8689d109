"""CIFAR-10/100 through the real loader, from archives written in the exact on-disk format."""

from __future__ import annotations

import hashlib
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.datasets import CIFAR10, CIFAR100

from normbench.data import build_data
from normbench.data.cifar import CIFAR10_MEAN, CIFAR100_MEAN, cifar10, cifar100
from normbench.errors import DatasetNotFoundError, UserError


class Py2Pickler(pickle._Pickler):  # type: ignore[misc]
    """Writes str and bytes as Python 2 `str` (SHORT_BINSTRING/BINSTRING), as the original
    CIFAR files (pickled by Python 2) do: they load as b'data' with encoding='bytes' and as
    'data' with encoding='latin1' (what torchvision uses)."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_str(self, obj: str | bytes) -> None:
        raw = obj.encode("latin1") if isinstance(obj, str) else obj
        if len(raw) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(raw)]) + raw)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(raw)) + raw)
        self.memoize(obj)

    dispatch[str] = save_py2_str
    dispatch[bytes] = save_py2_str


def _dump(path: Path, obj: dict) -> str:
    with open(path, "wb") as f:
        Py2Pickler(f, protocol=2).dump(obj)
    return hashlib.md5(path.read_bytes()).hexdigest()


def _images(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)  # rows: R(1024) G(1024) B(1024)


def write_cifar10(
    root: Path, rng: np.random.Generator, per_batch: int = 4, n_test: int = 6
) -> tuple[dict[str, str], np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """data_batch_1..5, test_batch, batches.meta in root/cifar-10-batches-py. Returns md5s and
    the train/test rows and labels in file order."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    md5, xs, ys = {}, [], []
    for k in range(1, 6):
        x, y = _images(rng, per_batch), [int(v) for v in rng.integers(0, 10, per_batch)]
        md5[f"data_batch_{k}"] = _dump(
            folder / f"data_batch_{k}",
            {
                "batch_label": f"training batch {k} of 5",
                "labels": y,
                "data": x,
                "filenames": [f"img_{k}_{i}.png" for i in range(per_batch)],
            },
        )
        xs.append(x)
        ys += y
    xt, yt = _images(rng, n_test), [int(v) for v in rng.integers(0, 10, n_test)]
    md5["test_batch"] = _dump(
        folder / "test_batch",
        {
            "batch_label": "testing batch 1 of 1",
            "labels": yt,
            "data": xt,
            "filenames": [f"t_{i}.png" for i in range(n_test)],
        },
    )
    md5["batches.meta"] = _dump(
        folder / "batches.meta",
        {
            "label_names": [f"class{i}" for i in range(10)],
            "num_cases_per_batch": per_batch,
            "num_vis": 3072,
        },
    )
    return md5, np.concatenate(xs), np.array(ys), xt, np.array(yt)


def write_cifar100(
    root: Path, rng: np.random.Generator, n_train: int = 20, n_test: int = 6
) -> tuple[dict[str, str], np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    out: list[np.ndarray] = []
    md5 = {}
    for name, n in (("train", n_train), ("test", n_test)):
        x, fine = _images(rng, n), [int(v) for v in rng.integers(0, 100, n)]
        md5[name] = _dump(
            folder / name,
            {
                "filenames": [f"{name}_{i}.png" for i in range(n)],
                "batch_label": name,
                "fine_labels": fine,
                "coarse_labels": [v // 5 for v in fine],
                "data": x,
            },
        )
        out += [x, np.array(fine)]
    md5["meta"] = _dump(
        folder / "meta",
        {
            "fine_label_names": [f"f{i}" for i in range(100)],
            "coarse_label_names": [f"c{i}" for i in range(20)],
        },
    )
    return (md5, *out)  # type: ignore[return-value]


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
    with pytest.raises(DatasetNotFoundError, match="download failed .*Network is unreachable"):
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
