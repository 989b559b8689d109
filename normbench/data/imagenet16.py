"""`imagenet16`: ImageNet downsampled to 16x16 (Chrabaszcz, Loshchilov & Hutter, "A Downsampled
Variant of ImageNet as an Alternative to the CIFAR datasets", arXiv 1707.08819), restricted to
its first `classes` classes: 120 gives NAS-Bench-201's ImageNet16-120 (Dong & Yang, ICLR 2020:
151,700 training and 6,000 validation images).

Files (the release's "Imagenet16_train" and "Imagenet16_val" archives, unpacked, as the
NAS-Bench-201 code reads them): ROOT/ImageNet16/train_data_batch_1 ... train_data_batch_10 and
ROOT/ImageNet16/val_data. Each is a pickle of a dict with `data`, a uint8 array (N, 3072) whose
rows hold the red, green and blue planes of a 16x16 image one after another, and `labels`, the
classes 1..1000. An image with label L in 1..`classes` is kept with class L - 1. The data set
is never downloaded (image-net.org needs a login).

Reading: the files are pickles, and a pickle can run code; here they are read with an unpickler
that only builds numpy arrays, dtypes and scalars and plain containers, and refuses any other
object (a line naming the file and the refused name).

Splits: `val_data` is the test split (NAS-Bench-201 cuts it into its `x-valid` and `x-test`
halves); the validation split is carved from the training images (stratified,
`split_seed`). mean/std are NAS-Bench-201's ((122.68, 116.66, 104.01) and (63.22, 61.26,
65.09), over 255); augmentation its: random crop 16 with padding 2 and horizontal flip.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from normbench.contract import DatasetFacts
from normbench.data.base import (
    Augment,
    DatasetOptionError,
    DataSplits,
    TensorSet,
    carve_val,
    check_image_size,
    resize_uint8,
)
from normbench.data.files import data_root, dry_run, missing_message
from normbench.errors import DatasetNotFoundError

FOLDER = "ImageNet16"
TRAIN_FILES = tuple(f"train_data_batch_{i}" for i in range(1, 11))
TEST_FILE = "val_data"
MEAN = tuple(v / 255 for v in (122.68, 116.66, 104.01))
STD = tuple(v / 255 for v in (63.22, 61.26, 65.09))
AUGMENT = Augment(crop_padding=2, hflip=True, rotation=0.0)
# what a numpy array's pickle needs (numpy 1 and 2 module names), and nothing that runs code
_ALLOWED = {
    (module, name)
    for module in ("numpy.core.multiarray", "numpy._core.multiarray")
    for name in ("_reconstruct", "scalar")
} | {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}  # bytes, protocol 2


class _ArraysOnly(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"refused {module}.{name} (only numpy arrays are read)")
        return super().find_class(module, name)


def _read(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, 3, 16, 16), labels int64 1..1000) of one file."""
    try:
        with path.open("rb") as f:
            entry = _ArraysOnly(f, encoding="latin1").load()
        data = np.asarray(entry["data"], dtype=np.uint8)
        labels = np.asarray(entry["labels"], dtype=np.int64)
        images = data.reshape(-1, 3, 16, 16)  # rows: R plane | G plane | B plane
    except Exception as exc:  # refused, truncated, or another layout
        raise DatasetNotFoundError(
            f"ImageNet16 file {path} could not be read ({type(exc).__name__}: {exc}); it must "
            "be a release file: a pickled dict of 'data' (N, 3072) uint8 and 'labels'"
        ) from exc
    if len(images) != len(labels):
        raise DatasetNotFoundError(
            f"ImageNet16 file {path}: {len(images)} images but {len(labels)} labels"
        )
    return images, labels


def _load(paths: list[Path], classes: int) -> TensorSet:
    images, labels = [], []
    for path in paths:
        x, y = _read(path)
        keep = (y >= 1) & (y <= classes)
        images.append(x[keep])
        labels.append(y[keep] - 1)
    return TensorSet(
        torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels))
    )


def _check_files(root: Path) -> list[Path]:
    """The files, or one line saying which are missing and where to put them."""
    folder = root / FOLDER
    names = [*TRAIN_FILES, TEST_FILE]
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        what = (
            f"put train_data_batch_1..10 and val_data (ImageNet 16x16 from image-net.org, "
            f"the Imagenet16_train and Imagenet16_val archives unpacked) in {folder}"
        )
        detail = f"{', '.join(missing)} missing"
        raise DatasetNotFoundError(missing_message("ImageNet16", root, detail, what, download=None))
    return [folder / n for n in names]


def _dry_run(*, root: str | None = None, **_: Any) -> str | None:
    _check_files(data_root(root))
    return None


@DatasetFacts(train_images=151_700, channels=3, image_size=16, test_images=6000)
@dry_run(_dry_run)
def imagenet16(
    *,
    root: str | None = None,
    download: bool = False,
    image_size: int | None = None,
    val_fraction: float = 0.1,
    split_seed: int = 0,
    classes: int = 120,
) -> DataSplits:
    """ImageNet 16x16, the first `classes` classes (120: ImageNet16-120)."""
    del download  # never downloaded
    if isinstance(classes, bool) or not isinstance(classes, int) or not 1 <= classes <= 1000:
        raise DatasetOptionError(f"imagenet16: classes must be in 1..1000, but got {classes!r}")
    size = check_image_size(image_size, 16, "imagenet16")
    base = data_root(root)
    *train_paths, test_path = _check_files(base)
    train_full, test = _load(train_paths, classes), _load([test_path], classes)
    if size != 16:
        train_full = TensorSet(resize_uint8(train_full.images, size), train_full.labels)
        test = TensorSet(resize_uint8(test.images, size), test.labels)
    train, val = carve_val(train_full, val_fraction, split_seed)
    return DataSplits(
        name="imagenet16",
        train=train,
        val=val,
        test=test,
        num_classes=classes,
        in_channels=3,
        image_size=size,
        mean=MEAN,
        std=STD,
        augment=AUGMENT,
        info={"root": str(base), "val_split": "stratified", "train_full_size": len(train_full)},
    )
