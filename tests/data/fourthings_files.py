"""Small SVHN, Caltech-256, Flowers-102 and CUB-200-2011 files in the real on-disk formats, for
the data tests and the suite smoke test. The SVHN and Flowers-102 files cannot match
torchvision's md5s of the genuine ones; `trust_plugin` writes a plugin that puts their true
md5s into torchvision's lists (every file is still hashed and checked)."""

from __future__ import annotations

import hashlib
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def write_svhn(root: Path, rng: np.random.Generator, counts: dict[str, int]) -> dict[str, tuple]:
    """{split}_32x32.mat for each split in `counts` ({"train": 12, "test": 5, ...}): X uint8
    (32, 32, 3, N) and y uint8 (N, 1) in 1..10 (10 is the digit 0), as the SVHN page documents.
    Returns {split: (images (N, 3, 32, 32), labels 0..9, md5)}."""
    root.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, n in counts.items():
        x = rng.integers(0, 256, size=(32, 32, 3, n), dtype=np.uint8)
        y = rng.integers(1, 11, size=(n, 1)).astype(np.uint8)
        path = root / f"{split}_32x32.mat"
        scipy.io.savemat(path, {"X": x, "y": y})
        out[split] = (x.transpose(3, 2, 0, 1), np.where(y[:, 0] == 10, 0, y[:, 0]), md5(path))
    return out


def _jpeg(path: Path, rng: np.random.Generator, mode: str = "RGB") -> None:
    h, w = (int(v) for v in rng.integers(20, 40, size=2))
    shape = (h, w, 3) if mode == "RGB" else (h, w)
    Image.fromarray(rng.integers(0, 256, size=shape, dtype=np.uint8), mode).save(path, "JPEG")


def write_caltech256(
    root: Path, rng: np.random.Generator, per_class: list[int], clutter: int = 3
) -> Path:
    """ROOT/caltech256/256_ObjectCategories/NNN.cat_k/NNN_XXXX.jpg with per_class[k] images of
    category k + 1, a 257.clutter folder, one grayscale JPEG (Caltech-256 has some) and a
    stray non-JPEG file. Returns the 256_ObjectCategories folder."""
    top = root / "caltech256" / "256_ObjectCategories"
    folders = [(f"{k + 1:03d}.cat_{k}", n) for k, n in enumerate(per_class)]
    for name, n in [*folders, ("257.clutter", clutter)]:
        (top / name).mkdir(parents=True)
        for i in range(1, n + 1):
            mode = "L" if (name, i) == (folders[0][0], 1) else "RGB"
            _jpeg(top / name / f"{name[:3]}_{i:04d}.jpg", rng, mode)
    (top / folders[0][0] / "notes.txt").write_text("not an image")
    return top


@dataclass
class Flowers:
    labels: np.ndarray  # 1-based, per image id 1..N
    setid: dict[str, np.ndarray]
    md5: dict[str, str] = field(default_factory=dict)


def write_flowers102(root: Path, rng: np.random.Generator, classes: int, per_split: int) -> Flowers:
    """ROOT/flowers-102/{jpg/image_NNNNN.jpg, imagelabels.mat, setid.mat}: `per_split` images
    per class in each of trnid, valid and tstid (the real files store 1-based labels and
    image ids as (1, N) arrays)."""
    home = root / "flowers-102"
    (home / "jpg").mkdir(parents=True)
    n = classes * per_split * 3
    labels = np.repeat(np.arange(1, classes + 1), per_split * 3)
    order = rng.permutation(n) + 1  # image ids, shuffled over the splits
    setid = {
        key: np.sort(order[k::3]).astype(np.uint16)
        for k, key in enumerate(("trnid", "valid", "tstid"))
    }
    for i in range(1, n + 1):
        _jpeg(home / "jpg" / f"image_{i:05d}.jpg", rng)
    scipy.io.savemat(home / "imagelabels.mat", {"labels": labels[None].astype(np.uint8)})
    scipy.io.savemat(home / "setid.mat", {k: v[None] for k, v in setid.items()})
    files = ("imagelabels.mat", "setid.mat")
    return Flowers(labels, setid, {f: md5(home / f) for f in files})


@dataclass
class Cub:
    paths: list[str]  # under images/, in image-id order
    labels: list[int]  # 1-based
    is_train: list[bool]


def write_cub(root: Path, rng: np.random.Generator, classes: int, per_class: int) -> Cub:
    """ROOT/CUB_200_2011.tgz as the real one is laid out: CUB_200_2011/{images.txt,
    image_class_labels.txt, train_test_split.txt, classes.txt, images/NNN.Name/*.jpg} and
    attributes.txt beside the folder. Image ids are listed shuffled over the classes."""
    src = root / "src"
    folder = src / "CUB_200_2011"
    cub = Cub([], [], [])
    for c in range(1, classes + 1):
        name = f"{c:03d}.Bird_{c}"
        (folder / "images" / name).mkdir(parents=True)
        for i in range(per_class):
            cub.paths.append(f"{name}/Bird_{c}_{i:04d}_{100 + i}.jpg")
            cub.labels.append(c)
            cub.is_train.append(i % 2 == 0)
            _jpeg(folder / "images" / cub.paths[-1], rng)
    ids = rng.permutation(len(cub.paths)) + 1
    order = np.argsort(ids)
    cub.paths = [cub.paths[i] for i in order]
    cub.labels = [cub.labels[i] for i in order]
    cub.is_train = [cub.is_train[i] for i in order]
    rows = range(1, len(cub.paths) + 1)
    (folder / "images.txt").write_text(
        "".join(f"{k} {p}\n" for k, p in zip(rows, cub.paths, strict=True))
    )
    (folder / "image_class_labels.txt").write_text(
        "".join(f"{k} {c}\n" for k, c in zip(rows, cub.labels, strict=True))
    )
    (folder / "train_test_split.txt").write_text(
        "".join(f"{k} {int(t)}\n" for k, t in zip(rows, cub.is_train, strict=True))
    )
    (folder / "classes.txt").write_text(
        "".join(f"{c} {c:03d}.Bird_{c}\n" for c in range(1, classes + 1))
    )
    (src / "attributes.txt").write_text("1 has_bill_shape::curved\n")
    with tarfile.open(root / "CUB_200_2011.tgz", "w:gz") as tar:
        tar.add(folder, arcname="CUB_200_2011")
        tar.add(src / "attributes.txt", arcname="attributes.txt")
    return cub


TRUST = '''"""Test plugin: md5s of the generated SVHN and Flowers-102 files (not the genuine)."""
from torchvision.datasets import SVHN, Flowers102

for split, digest in {svhn!r}.items():
    SVHN.split_list[split] = [SVHN.split_list[split][0], SVHN.split_list[split][1], digest]
for key, name in (("label", "imagelabels.mat"), ("setid", "setid.mat")):
    if name in {flowers!r}:
        Flowers102._file_dict = {{**Flowers102._file_dict, key: (name, {flowers!r}[name])}}
'''


def trust_plugin(path: Path, svhn: dict[str, str], flowers: dict[str, str]) -> Path:
    """A plugin file that makes torchvision accept these generated files' md5s."""
    path.write_text(TRUST.format(svhn=svhn, flowers=flowers))
    return path
