"""`caltech256`: Caltech-256 (Griffin, Holub & Perona, Caltech tech. report 2007), read with
torchvision's `Caltech256`; the splits hold PIL images served by the folder loader.

Files (torchvision's layout): ROOT/caltech256/256_ObjectCategories/NNN.name/NNN_XXXX.jpg,
one folder per category, 001.ak47 to 256.toad and 257.clutter. The archive
256_ObjectCategories.tar placed in ROOT/caltech256/ is extracted once by the driver; with
`download: true` torchvision downloads it. Images are converted to RGB (a few are grayscale).

Classes: the 256 object categories. `257.clutter` holds background images of no category
and is left out, as Summers & Dinneen count "the 256 categories"; `clutter: true` keeps it as
class 256 (torchvision's 257 classes).

Split: Caltech-256 defines none. Summers & Dinneen (ICLR 2020, Sec 4) use 40 training, 10
validation and 30 test images per category. Here, per category, `test_per_class` images
(default 30, chosen with a fixed seed, whatever `split_seed`) are the test set and the next
`train_per_class` (default 50) the training pool, from which the validation split is carved
(stratified, `split_seed`): `val_fraction: 0.2` gives the paper's 40 / 10 / 30. Every category
has at least 80 images. The standard ImageNet recipe and constants apply (`imagenet`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import Subset
from torchvision.datasets import Caltech256

from normbench.contract import DatasetFacts
from normbench.data.base import (
    DatasetOptionError,
    DataSplits,
    carve_val_dataset,
    check_image_size,
)
from normbench.data.files import (
    data_root,
    download_or_raise,
    dry_run,
    extract_once,
    missing_message,
)
from normbench.data.imagenet import recipe_splits
from normbench.errors import DatasetNotFoundError

FOLDER = "256_ObjectCategories"
ARCHIVE = "256_ObjectCategories.tar"
CLUTTER = "257.clutter"
SPLIT_SEED = 0  # the fixed test split


def _to_rgb(image: Image.Image) -> Image.Image:
    return image.convert("RGB")


def _what(home: Path) -> str:
    return (
        f"put {ARCHIVE} (or the extracted {FOLDER}/ folder) in {home} "
        "(from https://data.caltech.edu/records/nyy15-4j048)"
    )


def _ensure_files(root: Path, download: bool) -> None:
    """Make ROOT/caltech256/256_ObjectCategories exist (extract or download), or raise."""
    home = root / "caltech256"
    if (home / FOLDER).is_dir():
        return
    if (home / ARCHIVE).is_file():
        extract_once(home / ARCHIVE, home, FOLDER)
        return
    detail = f"{home / FOLDER} missing"
    if download:
        download_or_raise(
            "Caltech256", root, detail, _what(home), lambda: Caltech256(str(root), download=True)
        )
        return
    raise DatasetNotFoundError(
        missing_message("Caltech256", root, detail, _what(home), download=False)
    )


def _dry_run(*, root: str | None = None, download: bool = False, **_: Any) -> str | None:
    base = data_root(root)
    home = base / "caltech256"
    if (home / FOLDER).is_dir():
        return None
    if (home / ARCHIVE).is_file():
        return f"{home / ARCHIVE} found; extracted once at run time"
    if download:
        return f"not in {base} ({home / FOLDER} missing); a download is tried once at run time"
    _ensure_files(base, False)  # raises the one-line error
    return None


def _check_count(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise DatasetOptionError(f"caltech256: {name} must be an integer >= 1, but got {value!r}")
    return value


def fixed_split(
    labels: np.ndarray, categories: list[str], n_train: int, n_test: int
) -> tuple[np.ndarray, np.ndarray]:
    """(training pool, test) indices: per class, `n_test` test images chosen with the fixed
    seed, then `n_train` more for the pool. Raises when a class has fewer than both."""
    rng = np.random.default_rng(SPLIT_SEED)
    pool, test = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        if len(idx) < n_train + n_test:
            raise DatasetNotFoundError(
                f"caltech256: category {categories[c]} has {len(idx)} images, fewer than "
                f"train_per_class {n_train} + test_per_class {n_test}; is the folder "
                "complete (every Caltech-256 category has at least 80)?"
            )
        order = rng.permutation(idx)
        test.append(order[:n_test])
        pool.append(order[n_test : n_test + n_train])
    return np.sort(np.concatenate(pool)), np.sort(np.concatenate(test))


@DatasetFacts(train_images=256 * 50, channels=3, image_size=224, test_images=256 * 30)
@dry_run(_dry_run)
def caltech256(
    *,
    root: str | None = None,
    download: bool = False,
    image_size: int | None = None,
    val_fraction: float = 0.1,
    split_seed: int = 0,
    train_per_class: int = 50,
    test_per_class: int = 30,
    clutter: bool = False,
) -> DataSplits:
    """Caltech-256: per category `train_per_class` training-pool images (minus validation)
    and `test_per_class` test images; 256 classes (257 with `clutter: true`)."""
    size = check_image_size(image_size, 224, "caltech256")
    n_train = _check_count("train_per_class", train_per_class)
    n_test = _check_count("test_per_class", test_per_class)
    base = data_root(root)
    _ensure_files(base, download)
    full = Caltech256(str(base), transform=_to_rgb)
    categories = list(full.categories)
    if not categories:
        raise DatasetNotFoundError(
            f"caltech256: {base / 'caltech256' / FOLDER} holds no category folders"
        )
    labels = np.asarray(full.y, dtype=np.int64)
    keep_clutter = bool(clutter)
    kept = [i for i, c in enumerate(categories) if keep_clutter or c != CLUTTER]
    mask = np.isin(labels, kept)
    pool_idx, test_idx = fixed_split(labels[mask], categories, n_train, n_test)
    index = np.flatnonzero(mask)
    pool = Subset(full, index[pool_idx].tolist())
    train, val = carve_val_dataset(pool, labels[index[pool_idx]], val_fraction, split_seed)
    test = Subset(full, index[test_idx].tolist())
    return recipe_splits(
        "caltech256",
        (train, val, test),
        num_classes=len(kept),
        image_size=size,
        info={
            "root": str(base),
            "val_split": "stratified",
            "test_split": f"{n_test} per class, seed {SPLIT_SEED}",
            "train_full_size": len(pool),
            "clutter": keep_clutter,
        },
    )
