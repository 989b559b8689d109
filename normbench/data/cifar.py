"""CIFAR-10 and CIFAR-100 (Krizhevsky 2009), read with torchvision, held as uint8 tensors.

Files are looked for in `root` (torchvision's layout): the extracted folder
`cifar-10-batches-py/` or `cifar-100-python/`, or the archive `cifar-10-python.tar.gz` /
`cifar-100-python.tar.gz`, which is extracted in place (no network needed; into a private
folder renamed into place, so concurrent readers never see half a folder). With
`download=True` a missing archive is downloaded by torchvision. Anything else missing or
corrupted raises `DatasetNotFoundError` with one message saying what to put where and whether
a download was tried. Every file is checked against torchvision's md5 of the genuine file.
`normbench run` does all of this once, in the driver, before any trial starts
(`normbench.suite.preflight`).

Constants come from the recipes the built-in suites follow (pytorch-cifar100 / UBN):
augmentation random crop 32 with padding 4 and horizontal flip; RandomRotation(15) is in the
pytorch-cifar100 code behind the UBN paper's CIFAR-100 recipe and is switched on by the
CIFAR-100 suites (`augment: {rotation: 15}`), off by default here (the UBN paper's CIFAR-10
recipe names random cropping and flipping only).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision.datasets import CIFAR10, CIFAR100
from torchvision.datasets.utils import check_integrity

from normbench.contract import DatasetFacts
from normbench.data.base import (
    Augment,
    DataSplits,
    TensorSet,
    carve_val,
    check_image_size,
    resize_uint8,
)
from normbench.data.files import (
    data_root,
    download_or_raise,
    dry_run,
    extract_once,
    missing_message,
)
from normbench.errors import DatasetNotFoundError

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
CIFAR_AUGMENT = Augment(crop_padding=4, hflip=True, rotation=0.0)


def _missing_message(cls: type[CIFAR10], root: Path, detail: str, *, download: bool) -> str:
    what = f"put {cls.filename} (or the extracted {cls.base_folder}/ folder) in {root}"
    return missing_message(cls.__name__, root, detail, what, download=download)


def corrupted_files(cls: type[CIFAR10], root: Path) -> list[str]:
    """Files of the extracted folder that are missing or fail torchvision's md5 check."""
    listed = cls.train_list + cls.test_list + [[cls.meta["filename"], cls.meta["md5"]]]
    folder = root / cls.base_folder
    return [name for name, md5 in listed if not check_integrity(str(folder / name), md5)]


def find_files(cls: type[CIFAR10], root: Path) -> str:
    """What `root` holds, without writing anything: "folder" (extracted, md5s pass),
    "archive" (a genuine archive, not extracted yet), "corrupted" or "missing"."""
    if (root / cls.base_folder).is_dir():
        return "corrupted" if corrupted_files(cls, root) else "folder"
    if (root / cls.filename).is_file():
        return "archive" if check_integrity(str(root / cls.filename), cls.tgz_md5) else "corrupted"
    return "missing"


def _ensure_files(cls: type[CIFAR10], root: Path, download: bool) -> None:
    """Make the extracted folder exist and pass its md5 checks, or raise one clear error."""
    if not (root / cls.base_folder).is_dir() and (root / cls.filename).is_file():
        if not check_integrity(str(root / cls.filename), cls.tgz_md5):
            raise DatasetNotFoundError(
                f"{cls.__name__} data not found in {root}: {cls.filename} fails its md5 check "
                f"(an incomplete download?); replace it with a complete copy, or delete it"
                + (" and the run downloads it again" if download else "")
            )
        extract_once(root / cls.filename, root, cls.base_folder)
    bad = corrupted_files(cls, root)
    if download and bad:
        folder = root / cls.base_folder
        found = f"{folder}: {', '.join(bad)} missing or corrupted" if folder.is_dir() else ""
        what = f"put {cls.filename} (or the extracted {cls.base_folder}/ folder) in {root}"
        download_or_raise(
            cls.__name__, root, found, what, lambda: cls(str(root), train=True, download=True)
        )
    bad = corrupted_files(cls, root)
    if bad:
        folder = root / cls.base_folder
        what = "missing" if not folder.is_dir() else f"{', '.join(bad)} missing or corrupted"
        raise DatasetNotFoundError(
            _missing_message(cls, root, f"{folder} {what}", download=download)
        )


def _dry_run(cls: type[CIFAR10]) -> Callable[..., str | None]:
    """The dry-run hook (normbench.data.files): what the run does before reading."""

    def check(*, root: str | None = None, download: bool = False, **_: Any) -> str | None:
        base = data_root(root)
        state = find_files(cls, base)
        if state == "archive":
            return f"{base / cls.filename} found (md5 ok); extracted once at run time"
        if state != "folder" and download:
            if state == "corrupted" and (base / cls.base_folder).is_dir():
                state = f"{', '.join(corrupted_files(cls, base))} of {cls.base_folder}/ corrupted"
            return f"not in {base} ({state}); a download is tried once at run time (download: true)"
        if state != "folder":
            _ensure_files(cls, base, download=False)  # raises the one-line error
        return None

    return check


def _load_split(cls: type[CIFAR10], root: Path, train: bool) -> TensorSet:
    ds = cls(str(root), train=train, download=False)
    images = torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2)  # NHWC->NCHW
    return TensorSet(images.contiguous(), torch.as_tensor(ds.targets, dtype=torch.int64))


def load_cifar(
    cls: type[CIFAR10],
    name: str,
    *,
    root: str | None,
    download: bool,
    image_size: int | None,
    val_fraction: float,
    split_seed: int,
    num_classes: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
) -> DataSplits:
    """Read both splits through torchvision and carve the validation split."""
    size = check_image_size(image_size, 32, name)
    base = data_root(root)
    _ensure_files(cls, base, download)
    train_full, test = _load_split(cls, base, True), _load_split(cls, base, False)
    if size != 32:
        train_full = TensorSet(resize_uint8(train_full.images, size), train_full.labels)
        test = TensorSet(resize_uint8(test.images, size), test.labels)
    train, val = carve_val(train_full, val_fraction, split_seed)
    return DataSplits(
        name=name,
        train=train,
        val=val,
        test=test,
        num_classes=num_classes,
        in_channels=3,
        image_size=size,
        mean=mean,
        std=std,
        augment=CIFAR_AUGMENT,
        info={"root": str(base), "val_split": "stratified", "train_full_size": len(train_full)},
    )


@DatasetFacts(train_images=50_000, channels=3, image_size=32, test_images=10_000)
@dry_run(_dry_run(CIFAR10))
def cifar10(
    *,
    root: str | None = None,
    download: bool = False,
    image_size: int | None = None,
    val_fraction: float = 0.1,
    split_seed: int = 0,
) -> DataSplits:
    """CIFAR-10: 50k train (minus validation) / 10k test, 10 classes, 32x32 RGB."""
    return load_cifar(
        CIFAR10,
        "cifar10",
        root=root,
        download=download,
        image_size=image_size,
        val_fraction=val_fraction,
        split_seed=split_seed,
        num_classes=10,
        mean=CIFAR10_MEAN,
        std=CIFAR10_STD,
    )


@DatasetFacts(train_images=50_000, channels=3, image_size=32, test_images=10_000)
@dry_run(_dry_run(CIFAR100))
def cifar100(
    *,
    root: str | None = None,
    download: bool = False,
    image_size: int | None = None,
    val_fraction: float = 0.1,
    split_seed: int = 0,
) -> DataSplits:
    """CIFAR-100: 50k train (minus validation) / 10k test, 100 fine classes, 32x32 RGB."""
    return load_cifar(
        CIFAR100,
        "cifar100",
        root=root,
        download=download,
        image_size=image_size,
        val_fraction=val_fraction,
        split_seed=split_seed,
        num_classes=100,
        mean=CIFAR100_MEAN,
        std=CIFAR100_STD,
    )
