"""`svhn`: Street View House Numbers, cropped digits (Netzer et al., NIPS Workshop on Deep
Learning 2011), read with torchvision's `SVHN` and held as uint8 tensors.

Files (torchvision's layout, from http://ufldl.stanford.edu/housenumbers/): ROOT/train_32x32.mat
and ROOT/test_32x32.mat, with `extra: true` also ROOT/extra_32x32.mat (531,131 more training
images). Each is checked against torchvision's md5 of the genuine file. With `download: true`
a missing file is downloaded by torchvision, once, in the driver (`normbench.suite.preflight`).
Labels are 0..9: the files' label 10 for the digit 0 becomes 0, as torchvision does.

Summers & Dinneen (ICLR 2020, arXiv 1906.03548, Sec 4) train on the 604,388 non-test images
(train + extra), split 80/20 into training and validation: `extra: true, val_fraction: 0.2`.
The default here is the 73,257 training images alone (the extra file is 1.3 GB).

Augmentation default: none. House numbers are not mirror-invariant, and the common SVHN recipe
(Wide ResNets, Zagoruyko & Komodakis 2016) trains without augmentation. mean/std are measured
on the training pool (train, + extra) before the validation carve.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision.datasets import SVHN
from torchvision.datasets.utils import check_integrity

from normbench.contract import DatasetFacts
from normbench.data.base import (
    Augment,
    DataSplits,
    TensorSet,
    carve_val,
    channel_stats,
    check_image_size,
    resize_uint8,
)
from normbench.data.files import (
    data_root,
    download_or_raise,
    dry_run,
    missing_message,
)
from normbench.errors import DatasetNotFoundError

SOURCE = "http://ufldl.stanford.edu/housenumbers/"


def _splits(extra: bool) -> tuple[str, ...]:
    return ("train", "extra", "test") if extra else ("train", "test")


def _file(split: str) -> str:
    return str(SVHN.split_list[split][1])


def _problems(root: Path, splits: tuple[str, ...]) -> dict[str, str]:
    """{split: "<file> missing" | "<file> fails its md5 check"} for the files not ready."""
    found = {}
    for split in splits:
        path = root / _file(split)
        if not path.is_file():
            found[split] = f"{_file(split)} missing"
        elif not check_integrity(str(path), SVHN.split_list[split][2]):
            found[split] = f"{_file(split)} fails its md5 check (an incomplete download?)"
    return found


def _what(root: Path, splits: tuple[str, ...]) -> str:
    return f"put {', '.join(_file(s) for s in splits)} (from {SOURCE}) in {root}"


def _ensure_files(root: Path, download: bool, splits: tuple[str, ...]) -> None:
    """Make every file of `splits` exist and pass its md5 check, or raise one clear error."""
    bad = _problems(root, splits)
    if bad and download:
        for split, detail in bad.items():
            fetch = functools.partial(SVHN, str(root), split=split, download=True)
            download_or_raise("SVHN", root, detail, _what(root, splits), fetch)
        bad = _problems(root, splits)
    if bad:
        raise DatasetNotFoundError(
            missing_message(
                "SVHN", root, "; ".join(bad.values()), _what(root, splits), download=download
            )
        )


def _dry_run(
    *, root: str | None = None, download: bool = False, extra: bool = False, **_: Any
) -> str | None:
    base, splits = data_root(root), _splits(extra)
    bad = _problems(base, splits)
    if bad and download:
        return (
            f"not in {base} ({'; '.join(bad.values())}); a download is tried once at run "
            "time (download: true)"
        )
    _ensure_files(base, False, splits)  # raises the one-line error when a file is not ready
    return None


def _load(root: Path, split: str) -> TensorSet:
    ds = SVHN(str(root), split=split, download=False)
    images = torch.from_numpy(np.ascontiguousarray(ds.data))  # (N, 3, 32, 32) uint8
    return TensorSet(images, torch.from_numpy(ds.labels))


@DatasetFacts(train_images=73_257, channels=3, image_size=32, test_images=26_032)
@dry_run(_dry_run)
def svhn(
    *,
    root: str | None = None,
    download: bool = False,
    image_size: int | None = None,
    val_fraction: float = 0.1,
    split_seed: int = 0,
    extra: bool = False,
) -> DataSplits:
    """SVHN: 73,257 train (+ 531,131 extra with `extra: true`, minus validation) / 26,032
    test, 10 classes, 32x32 RGB."""
    size = check_image_size(image_size, 32, "svhn")
    base, splits = data_root(root), _splits(bool(extra))
    _ensure_files(base, download, splits)
    pool = [_load(base, s) for s in splits if s != "test"]
    train_full = (
        pool[0]
        if len(pool) == 1
        else TensorSet(torch.cat([p.images for p in pool]), torch.cat([p.labels for p in pool]))
    )
    test = _load(base, "test")
    mean, std = channel_stats(train_full.images)
    if size != 32:
        train_full = TensorSet(resize_uint8(train_full.images, size), train_full.labels)
        test = TensorSet(resize_uint8(test.images, size), test.labels)
    train, val = carve_val(train_full, val_fraction, split_seed)
    return DataSplits(
        name="svhn",
        train=train,
        val=val,
        test=test,
        num_classes=10,
        in_channels=3,
        image_size=size,
        mean=mean,
        std=std,
        augment=Augment(),
        info={
            "root": str(base),
            "val_split": "stratified",
            "train_full_size": len(train_full),
            "train_files": [_file(s) for s in splits if s != "test"],
        },
    )
