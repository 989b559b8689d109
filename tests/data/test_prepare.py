"""`prepare_dataset`, the driver's data check: a CIFAR archive is extracted once (never by
--dry-run), sizes are read from the files, and missing data says whether a download was tried."""

from __future__ import annotations

import hashlib
import tarfile
from pathlib import Path

import numpy as np
import pytest
from cifar_files import write_cifar100
from torchvision.datasets import CIFAR100

from normbench.data.prepare import prepare_dataset
from normbench.errors import DatasetNotFoundError


def _archive_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    src, root = tmp_path / "src", tmp_path / "root"
    md5, *_ = write_cifar100(src, np.random.default_rng(0), n_train=30, n_test=4)
    root.mkdir()
    with tarfile.open(root / "cifar-100-python.tar.gz", "w:gz") as tar:
        tar.add(src / "cifar-100-python", arcname="cifar-100-python")
    monkeypatch.setattr(CIFAR100, "train_list", [["train", md5["train"]]])
    monkeypatch.setattr(CIFAR100, "test_list", [["test", md5["test"]]])
    monkeypatch.setattr(CIFAR100, "meta", {**CIFAR100.meta, "md5": md5["meta"]})
    tgz = hashlib.md5((root / "cifar-100-python.tar.gz").read_bytes()).hexdigest()
    monkeypatch.setattr(CIFAR100, "tgz_md5", tgz)
    return root


def test_dry_run_reads_without_extracting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = _archive_only(tmp_path, monkeypatch)
    report = prepare_dataset("cifar100", {"root": str(root)}, fetch=False)
    assert report.train_size is None
    assert report.found == (
        f"{root / 'cifar-100-python.tar.gz'} found (md5 ok); extracted once at run time"
    )
    assert [p.name for p in root.iterdir()] == ["cifar-100-python.tar.gz"]


def test_run_extracts_once_and_counts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = _archive_only(tmp_path, monkeypatch)
    report = prepare_dataset("cifar100", {"root": str(root), "val_fraction": 0.0})
    assert report.train_size == 30
    assert sorted(p.name for p in root.iterdir()) == ["cifar-100-python", "cifar-100-python.tar.gz"]
    again = prepare_dataset("cifar100", {"root": str(root), "val_fraction": 0.0}, fetch=False)
    assert again.train_size == 30 and again.found == f"30 training images per epoch ({root})"


def test_missing_with_download_is_not_refused_by_a_dry_run(tmp_path: Path) -> None:
    report = prepare_dataset("cifar10", {"root": str(tmp_path), "download": True}, fetch=False)
    assert report.train_size is None
    assert report.found == (
        f"not in {tmp_path} (missing); a download is tried once at run time (download: true)"
    )
    with pytest.raises(DatasetNotFoundError, match="download: false, so no download was tried"):
        prepare_dataset("cifar10", {"root": str(tmp_path)}, fetch=False)
    assert list(tmp_path.iterdir()) == []


def test_a_corrupted_folder_is_named_file_by_file_with_download_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = _archive_only(tmp_path, monkeypatch)
    prepare_dataset("cifar100", {"root": str(root)})  # extracts the genuine archive
    (root / "cifar-100-python.tar.gz").unlink()
    train = root / "cifar-100-python" / "train"
    train.write_bytes(train.read_bytes()[:-10])  # a truncated copy

    def offline(*args: object, **kwargs: object) -> None:
        raise OSError("Network is unreachable")

    monkeypatch.setattr(CIFAR100, "download", offline)
    options = {"root": str(root), "download": True}
    dry = prepare_dataset("cifar100", options, fetch=False)
    assert dry.found == (
        f"not in {root} (train of cifar-100-python/ corrupted); a download is tried once at run "
        "time (download: true)"
    )
    with pytest.raises(DatasetNotFoundError) as err:
        prepare_dataset("cifar100", options)
    assert str(err.value) == (
        f"CIFAR100 data not found in {root}: {root / 'cifar-100-python'}: train missing or "
        "corrupted; download was tried and failed (OSError: Network is unreachable); put "
        f"cifar-100-python.tar.gz (or the extracted cifar-100-python/ folder) in {root}"
    )
