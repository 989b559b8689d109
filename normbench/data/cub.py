"""`cub200`: Caltech-UCSD Birds-200-2011 (Wah et al., Caltech tech. report CNS-TR-2011-001),
read from its own archive; the splits hold PIL images served by the folder loader.

Files (the layout of CUB_200_2011.tgz, from https://www.vision.caltech.edu/datasets/cub_200_2011/):
the archive in ROOT (extracted once by the driver) or its folder ROOT/CUB_200_2011/ holding
- images.txt: `<image_id> <path under images/>` per line,
- image_class_labels.txt: `<image_id> <class_id 1..200>`,
- train_test_split.txt: `<image_id> <1: training, 0: test>`,
- images/NNN.Species_name/*.jpg.
It is never downloaded. Every listed image is checked to exist before a run starts.

Split: the data set's own (5,994 training, 5,794 test images, 200 classes); Summers & Dinneen
(ICLR 2020, Sec 4) hold out 25% of the training images for validation: `val_fraction: 0.25`.
Whole images are used (not the bounding-box crops). The standard ImageNet recipe and
constants apply (`imagenet`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset
from torchvision.datasets.folder import default_loader

from normbench.contract import DatasetFacts
from normbench.data.base import DataSplits, carve_val_dataset, check_image_size
from normbench.data.files import data_root, dry_run, extract_once, missing_message
from normbench.data.imagenet import recipe_splits
from normbench.errors import DatasetNotFoundError

FOLDER = "CUB_200_2011"
ARCHIVE = "CUB_200_2011.tgz"
TABLES = ("images.txt", "image_class_labels.txt", "train_test_split.txt")
NUM_CLASSES = 200


class ImageList(Dataset):
    """(PIL RGB image, label) for a list of image files and their labels."""

    def __init__(self, paths: list[str], labels: list[int]) -> None:
        self.paths, self.labels = paths, labels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        return default_loader(self.paths[index]), self.labels[index]


def _what(root: Path) -> str:
    return (
        f"put {ARCHIVE} (or its extracted {FOLDER}/ folder) in {root} (from "
        "https://www.vision.caltech.edu/datasets/cub_200_2011/)"
    )


def _missing(root: Path, detail: str) -> DatasetNotFoundError:
    return DatasetNotFoundError(
        missing_message("CUB-200-2011", root, detail, _what(root), download=None)
    )


def _ensure_files(root: Path) -> None:
    """Make ROOT/CUB_200_2011 exist (extract the archive once), or raise one clear error."""
    if (root / FOLDER).is_dir():
        return
    if not (root / ARCHIVE).is_file():
        raise _missing(root, f"{root / FOLDER} missing")
    extract_once(root / ARCHIVE, root, FOLDER)


def _dry_run(*, root: str | None = None, **_: Any) -> str | None:
    base = data_root(root)
    if not (base / FOLDER).is_dir() and (base / ARCHIVE).is_file():
        return f"{base / ARCHIVE} found; extracted once at run time"
    _ensure_files(base)  # raises when neither is there
    return None


def read_table(path: Path, root: Path) -> dict[int, str]:
    """{image_id: rest of the line} of one of the archive's `<id> <value>` text files."""
    if not path.is_file():
        raise _missing(root, f"{path} missing")
    table: dict[int, str] = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        key, _, value = line.strip().partition(" ")
        if not key.isdigit() or not value:
            raise DatasetNotFoundError(
                f"cub200: {path} line {n} is {line!r}, not '<image_id> <value>'"
            )
        table[int(key)] = value.strip()
    return table


def read_split(folder: Path, root: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(image paths, labels 0..199, is_training) in image-id order, checked: the three tables
    list the same ids, labels are in 1..200, split flags are 0/1 and every image exists."""
    images, labels, split = (read_table(folder / name, root) for name in TABLES)
    if not images or set(images) != set(labels) or set(images) != set(split):
        raise DatasetNotFoundError(
            f"cub200: {', '.join(TABLES)} in {folder} do not list the same image ids "
            f"({len(images)}, {len(labels)} and {len(split)} lines); is the folder complete?"
        )
    ids = sorted(images)
    classes = {str(c) for c in range(1, NUM_CLASSES + 1)}
    for name, table, valid in ((TABLES[1], labels, classes), (TABLES[2], split, {"0", "1"})):
        bad = next((i for i in ids if table[i] not in valid), None)
        if bad is not None:
            raise DatasetNotFoundError(
                f"cub200: {folder / name} gives image id {bad} the value {table[bad]!r}; "
                + (f"classes are 1..{NUM_CLASSES}" if valid is classes else "splits are 0 or 1")
            )
    paths = [str(folder / "images" / images[i]) for i in ids]
    missing = [p for p in paths if not Path(p).is_file()]
    if missing:
        raise _missing(
            root,
            f"{len(missing)} of the {len(paths)} images listed in images.txt, e.g. {missing[0]}",
        )
    y = np.asarray([int(labels[i]) - 1 for i in ids], dtype=np.int64)
    return paths, y, np.asarray([split[i] == "1" for i in ids])


@DatasetFacts(train_images=5994, channels=3, image_size=224, test_images=5794)
@dry_run(_dry_run)
def cub200(
    *,
    root: str | None = None,
    download: bool = False,
    image_size: int | None = None,
    val_fraction: float = 0.1,
    split_seed: int = 0,
) -> DataSplits:
    """CUB-200-2011: 5,994 train (minus validation) / 5,794 test, 200 classes; `download` is
    ignored (it is never downloaded)."""
    del download
    size = check_image_size(image_size, 224, "cub200")
    base = data_root(root)
    _ensure_files(base)
    paths, labels, is_train = read_split(base / FOLDER, base)
    tr, te = np.flatnonzero(is_train), np.flatnonzero(~is_train)
    train_full = ImageList([paths[i] for i in tr], labels[tr].tolist())
    test = ImageList([paths[i] for i in te], labels[te].tolist())
    train, val = carve_val_dataset(train_full, labels[tr], val_fraction, split_seed)
    return recipe_splits(
        "cub200",
        (train, val, test),
        num_classes=NUM_CLASSES,
        image_size=size,
        info={"root": str(base), "val_split": "stratified", "train_full_size": len(train_full)},
    )
