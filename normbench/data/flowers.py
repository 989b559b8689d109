"""`flowers102`: Oxford Flowers-102 (Nilsback & Zisserman, ICVGIP 2008), read with torchvision's
`Flowers102`; the splits hold PIL images served by the folder loader.

Files (torchvision's layout, from https://www.robots.ox.ac.uk/~vgg/data/flowers/102/):
ROOT/flowers-102/jpg/image_NNNNN.jpg, ROOT/flowers-102/imagelabels.mat and
ROOT/flowers-102/setid.mat; the two .mat files are checked against torchvision's md5 of the
genuine ones. The archive 102flowers.tgz placed in ROOT/flowers-102/ is extracted once by the
driver (it holds jpg/); with `download: true` torchvision downloads all three.

Splits: the data set's own (setid.mat): 1,020 training, 1,020 validation and 6,149 test images,
10 + 10 per class for training and validation. Summers & Dinneen (ICLR 2020, Sec 4) use this
predefined validation split, so it is the validation split here: `val_fraction` only says
whether there is one (any value > 0); 0 trains on training + validation (2,040 images) with
none. The standard ImageNet recipe and constants apply (`imagenet`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch.utils.data import ConcatDataset
from torchvision.datasets import Flowers102
from torchvision.datasets.utils import check_integrity

from normbench.contract import DatasetFacts
from normbench.data.base import DataSplits, check_image_size, check_val_fraction
from normbench.data.files import (
    data_root,
    download_or_raise,
    dry_run,
    extract_once,
    missing_message,
)
from normbench.data.imagenet import recipe_splits
from normbench.errors import DatasetNotFoundError

FOLDER = "flowers-102"
ARCHIVE = "102flowers.tgz"


def _mat_problems(home: Path) -> list[str]:
    """The .mat files that are missing or fail torchvision's md5 check."""
    found = []
    for key in ("label", "setid"):
        name, md5 = Flowers102._file_dict[key]
        if not (home / name).is_file():
            found.append(f"{name} missing")
        elif not check_integrity(str(home / name), md5):
            found.append(f"{name} fails its md5 check (an incomplete download?)")
    return found


def _what(home: Path) -> str:
    return (
        f"put {ARCHIVE} (or its extracted jpg/ folder), imagelabels.mat and setid.mat in "
        f"{home} (from https://www.robots.ox.ac.uk/~vgg/data/flowers/102/)"
    )


def _problems(home: Path) -> list[str]:
    jpg = [] if (home / "jpg").is_dir() or (home / ARCHIVE).is_file() else ["jpg/ missing"]
    return jpg + _mat_problems(home)


def _ensure_files(root: Path, download: bool) -> None:
    """Make jpg/ and the .mat files ready (extract, download), or raise one clear error."""
    home = root / FOLDER
    bad = _problems(home)
    if bad and download:
        download_or_raise(
            "Flowers102",
            root,
            "; ".join(bad),
            _what(home),
            lambda: Flowers102(str(root), download=True),
        )
        bad = _problems(home)
    if bad:
        raise DatasetNotFoundError(
            missing_message("Flowers102", root, "; ".join(bad), _what(home), download=download)
        )
    if not (home / "jpg").is_dir():
        extract_once(home / ARCHIVE, home, "jpg")


def _dry_run(*, root: str | None = None, download: bool = False, **_: Any) -> str | None:
    base = data_root(root)
    home = base / FOLDER
    bad = _problems(home)
    if bad and download:
        return f"not in {base} ({'; '.join(bad)}); a download is tried once at run time"
    if bad:
        _ensure_files(base, False)  # raises the one-line error
    if not (home / "jpg").is_dir():
        return f"{home / ARCHIVE} found; extracted once at run time"
    return None


@DatasetFacts(train_images=1020, channels=3, image_size=224, test_images=6149)
@dry_run(_dry_run)
def flowers102(
    *,
    root: str | None = None,
    download: bool = False,
    image_size: int | None = None,
    val_fraction: float = 0.1,
    split_seed: int = 0,
) -> DataSplits:
    """Oxford Flowers-102: 1,020 train / 1,020 validation (the data set's own) / 6,149 test,
    102 classes; `val_fraction: 0` trains on train + validation."""
    del split_seed  # the validation split is the data set's own
    size = check_image_size(image_size, 224, "flowers102")
    base = data_root(root)
    _ensure_files(base, download)
    train, val = (Flowers102(str(base), split=s) for s in ("train", "val"))
    with_val = check_val_fraction(val_fraction) > 0
    test = Flowers102(str(base), split="test")
    return recipe_splits(
        "flowers102",
        (train, val, test) if with_val else (ConcatDataset([train, val]), None, test),
        num_classes=len(Flowers102.classes),
        image_size=size,
        info={
            "root": str(base),
            "val_split": "official (setid.mat)" if with_val else "none (train + val)",
        },
    )
