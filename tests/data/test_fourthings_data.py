"""SVHN, Caltech-256, Oxford Flowers-102 and CUB-200-2011 (Summers & Dinneen's other data sets)
through the real loaders, from small files written in the real on-disk formats; each missing
file is named in one line that says what to put where."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from fourthings_files import write_caltech256, write_cub, write_flowers102, write_svhn
from PIL import Image
from torchvision.datasets import SVHN, Flowers102

from normbench.data import build_data
from normbench.data.base import channel_stats
from normbench.data.prepare import prepare_dataset
from normbench.errors import DatasetNotFoundError


def trust_svhn(monkeypatch: pytest.MonkeyPatch, files: dict[str, tuple]) -> None:
    """torchvision checks each .mat file against the md5 of the genuine one in
    `SVHN.split_list`; ours differ, so their true md5s go there (still hashed and checked)."""
    lists = {k: list(v) for k, v in SVHN.split_list.items()}
    for split, (_, _, digest) in files.items():
        lists[split][2] = digest
    monkeypatch.setattr(SVHN, "split_list", lists)


def trust_flowers(monkeypatch: pytest.MonkeyPatch, digests: dict[str, str]) -> None:
    table = dict(Flowers102._file_dict)
    table["label"] = ("imagelabels.mat", digests["imagelabels.mat"])
    table["setid"] = ("setid.mat", digests["setid.mat"])
    monkeypatch.setattr(Flowers102, "_file_dict", table)


def rgb(path: Path) -> torch.Tensor:
    """The independent reference: PIL's own decoding of the file, as uint8 (3, H, W)."""
    return torch.from_numpy(np.asarray(Image.open(path).convert("RGB")).copy()).permute(2, 0, 1)


# ------------------------------------------------------------------------------------- SVHN
def test_svhn_round_trip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = write_svhn(tmp_path, np.random.default_rng(0), {"train": 12, "test": 5, "extra": 7})
    trust_svhn(monkeypatch, files)
    splits = build_data_splits("svhn", root=str(tmp_path), val_fraction=0.0)
    x, y, _ = files["train"]
    assert torch.equal(splits.train.images, torch.from_numpy(x))
    assert splits.train.labels.tolist() == y.tolist()  # the files' 10 is the digit 0
    assert torch.equal(splits.test.images, torch.from_numpy(files["test"][0]))
    assert splits.num_classes == 10 and not splits.augment.hflip and not splits.augment.crop_padding
    pooled = x.astype(np.float64) / 255
    assert np.allclose(splits.mean, pooled.mean(axis=(0, 2, 3)))
    assert np.allclose(splits.std, pooled.std(axis=(0, 2, 3)))
    more = build_data_splits("svhn", root=str(tmp_path), val_fraction=0.0, extra=True)
    both = np.concatenate([x, files["extra"][0]])
    assert torch.equal(more.train.images, torch.from_numpy(both))
    assert len(more.test) == 5


def build_data_splits(name: str, **options: object):
    from normbench.data.registry import DATASETS

    full = {"root": None, "download": False, "image_size": None, "val_fraction": 0.1}
    return DATASETS.get(name).obj(**{**full, "split_seed": 0, **options})


def test_svhn_missing_and_corrupted_files_are_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = write_svhn(tmp_path, np.random.default_rng(0), {"train": 4})
    trust_svhn(monkeypatch, files)
    want = (
        f"SVHN data not found in {tmp_path}: test_32x32.mat missing; download: false, so no "
        f"download was tried; put train_32x32.mat, test_32x32.mat (from "
        f"http://ufldl.stanford.edu/housenumbers/) in {tmp_path}, or set download: true when "
        "online"
    )
    with pytest.raises(DatasetNotFoundError) as err:
        prepare_dataset("svhn", {"root": str(tmp_path)}, fetch=False)
    assert str(err.value) == want
    with (tmp_path / "train_32x32.mat").open("ab") as f:
        f.write(b"x")
    with pytest.raises(DatasetNotFoundError, match="train_32x32.mat fails its md5 check"):
        prepare_dataset("svhn", {"root": str(tmp_path)})
    report = prepare_dataset("svhn", {"root": str(tmp_path), "download": True}, fetch=False)
    assert report.train_size is None and "a download is tried once at run time" in report.found


def test_channel_stats_in_chunks_equal_one_pass() -> None:
    x = torch.randint(0, 256, (37, 3, 5, 4), dtype=torch.uint8)
    one = channel_stats(x)
    chunked = channel_stats(x, chunk=8)
    assert np.allclose(one, chunked, atol=1e-12)


# ------------------------------------------------------------------------------ Caltech-256
def test_caltech256_split_clutter_and_grayscale(tmp_path: Path) -> None:
    top = write_caltech256(tmp_path, np.random.default_rng(1), per_class=[6, 7, 5])
    opts = {"root": str(tmp_path), "train_per_class": 3, "test_per_class": 2}
    splits = build_data_splits("caltech256", **opts, val_fraction=0.0)
    assert splits.num_classes == 3 and len(splits.train) == 9 and len(splits.test) == 6
    got = [splits.train[i] for i in range(len(splits.train))]
    assert sorted(label for _, label in got) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert all(img.mode == "RGB" for img, _ in got)  # the grayscale JPEG too
    assert {label for _, label in (splits.test[i] for i in range(6))} == {0, 1, 2}
    pool, test = set(splits.train.indices), set(splits.test.indices)
    assert not pool & test
    # the test split is fixed (seed 0), whatever split_seed; the validation carve is not
    again = build_data_splits("caltech256", **opts, val_fraction=1 / 3, split_seed=5)
    assert set(again.test.indices) == test
    carved = {again.train.dataset.indices[i] for i in again.train.indices}
    held = {again.val.dataset.indices[i] for i in again.val.indices}
    assert carved | held == pool and not carved & held and len(held) == 3
    gray = top / "001.cat_0" / "001_0001.jpg"
    assert Image.open(gray).mode == "L"
    assert torch.equal(rgb_of(splits, gray), rgb(gray))
    clutter = build_data_splits(
        "caltech256", root=str(tmp_path), train_per_class=2, test_per_class=1, clutter=True
    )
    assert (
        clutter.num_classes == 4
        and len(clutter.test) == 4
        and len(clutter.train) + len(clutter.val) == 8
    )


def rgb_of(splits, path: Path) -> torch.Tensor:
    """The image the data set serves for `path` (found by torchvision's file numbering)."""
    full = splits.test.dataset
    cat = full.categories.index(path.parent.name)
    k = next(
        i for i, (y, j) in enumerate(zip(full.y, full.index, strict=True)) if y == cat and j == 1
    )
    img, _ = full[k]
    return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)


def test_caltech256_too_few_images_and_missing_folder(tmp_path: Path) -> None:
    write_caltech256(tmp_path, np.random.default_rng(2), per_class=[6, 2])
    with pytest.raises(DatasetNotFoundError, match="category 002.cat_1 has 2 images, fewer than"):
        build_data_splits("caltech256", root=str(tmp_path), train_per_class=3, test_per_class=2)
    empty = tmp_path / "empty"
    want = (
        f"Caltech256 data not found in {empty}: {empty}/caltech256/256_ObjectCategories missing; "
        "download: false, so no download was tried; put 256_ObjectCategories.tar (or the "
        f"extracted 256_ObjectCategories/ folder) in {empty}/caltech256 (from "
        "https://data.caltech.edu/records/nyy15-4j048), or set download: true when online"
    )
    with pytest.raises(DatasetNotFoundError) as err:
        prepare_dataset("caltech256", {"root": str(empty)}, fetch=False)
    assert str(err.value) == want and not empty.exists()


def test_caltech256_archive_is_extracted_once_by_the_run(tmp_path: Path) -> None:
    import tarfile

    src = write_caltech256(tmp_path / "src", np.random.default_rng(3), per_class=[5, 5])
    home = tmp_path / "root" / "caltech256"
    home.mkdir(parents=True)
    with tarfile.open(home / "256_ObjectCategories.tar", "w") as tar:
        tar.add(src, arcname="256_ObjectCategories")
    opts = {"root": str(tmp_path / "root"), "train_per_class": 3, "test_per_class": 2}
    dry = prepare_dataset("caltech256", opts, fetch=False)
    assert dry.found == f"{home / '256_ObjectCategories.tar'} found; extracted once at run time"
    assert [p.name for p in home.iterdir()] == ["256_ObjectCategories.tar"]
    report = prepare_dataset("caltech256", {**opts, "val_fraction": 0.0})
    assert report.train_size == 6
    assert sorted(p.name for p in home.iterdir()) == [
        "256_ObjectCategories",
        "256_ObjectCategories.tar",
    ]


# ------------------------------------------------------------------------------ Flowers-102
def test_flowers102_official_splits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fl = write_flowers102(tmp_path, np.random.default_rng(4), classes=3, per_split=2)
    trust_flowers(monkeypatch, fl.md5)
    splits = build_data_splits("flowers102", root=str(tmp_path))
    assert splits.num_classes == 102 and splits.info["val_split"] == "official (setid.mat)"
    for part, key in ((splits.train, "trnid"), (splits.val, "valid"), (splits.test, "tstid")):
        assert len(part) == len(fl.setid[key]) == 6
        for k, image_id in enumerate(fl.setid[key]):
            img, label = part[k]
            assert label == fl.labels[image_id - 1] - 1
            path = tmp_path / "flowers-102" / "jpg" / f"image_{image_id:05d}.jpg"
            assert torch.equal(torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1), rgb(path))
    merged = build_data_splits("flowers102", root=str(tmp_path), val_fraction=0.0)
    assert merged.val is None and len(merged.train) == 12


def test_flowers102_missing_and_corrupted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fl = write_flowers102(tmp_path, np.random.default_rng(5), classes=2, per_split=1)
    trust_flowers(monkeypatch, fl.md5)
    (tmp_path / "flowers-102" / "setid.mat").unlink()
    home = tmp_path / "flowers-102"
    want = (
        f"Flowers102 data not found in {tmp_path}: setid.mat missing; download: false, so no "
        f"download was tried; put 102flowers.tgz (or its extracted jpg/ folder), imagelabels.mat "
        f"and setid.mat in {home} (from https://www.robots.ox.ac.uk/~vgg/data/flowers/102/), or "
        "set download: true when online"
    )
    with pytest.raises(DatasetNotFoundError) as err:
        prepare_dataset("flowers102", {"root": str(tmp_path)})
    assert str(err.value) == want
    (home / "imagelabels.mat").write_bytes(b"damaged")
    with pytest.raises(DatasetNotFoundError, match="imagelabels.mat fails its md5 check"):
        prepare_dataset("flowers102", {"root": str(tmp_path)}, fetch=False)


# ------------------------------------------------------------------------------- CUB-200-2011
def test_cub200_from_its_archive(tmp_path: Path) -> None:
    cub = write_cub(tmp_path, np.random.default_rng(6), classes=3, per_class=4)
    dry = prepare_dataset("cub200", {"root": str(tmp_path)}, fetch=False)
    assert dry.found == f"{tmp_path / 'CUB_200_2011.tgz'} found; extracted once at run time"
    assert not (tmp_path / "CUB_200_2011").exists()
    report = prepare_dataset("cub200", {"root": str(tmp_path), "val_fraction": 0.0})
    assert report.train_size == 6 and (tmp_path / "CUB_200_2011" / "images.txt").is_file()
    assert not (tmp_path / "attributes.txt").exists()  # only the folder is moved into place
    splits = build_data_splits("cub200", root=str(tmp_path), val_fraction=0.0)
    assert splits.num_classes == 200
    want_train = [
        (p, c - 1) for p, c, t in zip(cub.paths, cub.labels, cub.is_train, strict=True) if t
    ]
    got = [(str(Path(p).relative_to(tmp_path / "CUB_200_2011" / "images")), y)
           for p, y in zip(splits.train.paths, splits.train.labels, strict=True)]  # fmt: skip
    assert got == want_train  # image-id order
    img, label = splits.test[0]
    first_test = next(p for p, t in zip(cub.paths, cub.is_train, strict=True) if not t)
    assert torch.equal(
        torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1),
        rgb(tmp_path / "CUB_200_2011" / "images" / first_test),
    )
    quarter = build_data_splits("cub200", root=str(tmp_path), val_fraction=0.5)
    assert len(quarter.train) == 3 and len(quarter.val) == 3  # stratified: one per class


def test_cub200_problems_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError) as err:
        prepare_dataset("cub200", {"root": str(tmp_path)}, fetch=False)
    assert str(err.value) == (
        f"CUB-200-2011 data not found in {tmp_path}: {tmp_path / 'CUB_200_2011'} missing; it "
        f"is never downloaded: put CUB_200_2011.tgz (or its extracted CUB_200_2011/ folder) in "
        f"{tmp_path} (from https://www.vision.caltech.edu/datasets/cub_200_2011/)"
    )
    cub = write_cub(tmp_path, np.random.default_rng(7), classes=2, per_class=2)
    prepare_dataset("cub200", {"root": str(tmp_path), "val_fraction": 0.0})
    folder = tmp_path / "CUB_200_2011"
    (folder / "images" / cub.paths[1]).unlink()
    with pytest.raises(DatasetNotFoundError, match=r"1 of the 4 images listed in images.txt"):
        prepare_dataset("cub200", {"root": str(tmp_path)})
    (folder / "image_class_labels.txt").write_text("1 1\n2 201\n3 1\n4 2\n")
    with pytest.raises(DatasetNotFoundError, match="gives image id 2 the value '201'"):
        prepare_dataset("cub200", {"root": str(tmp_path)})


# ------------------------------------------------------------------ through the folder loader
def test_folder_sets_serve_normalised_batches(tmp_path: Path) -> None:
    write_cub(tmp_path, np.random.default_rng(8), classes=2, per_class=4)
    data = build_data(
        "cub200",
        batch_size=2,
        eval_batch_size=3,
        device="cpu",
        seed=0,
        root=str(tmp_path),
        val_fraction=0.0,
        image_size=16,
        num_workers=0,
    )
    x, y = next(iter(data.train))
    assert x.shape == (2, 3, 16, 16) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert data.info["loader"] == "FolderLoader" and data.num_classes == 200


def test_a_failed_download_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(self: object) -> None:
        raise OSError("Network is unreachable")

    monkeypatch.setattr(SVHN, "download", offline)
    with pytest.raises(DatasetNotFoundError) as err:
        prepare_dataset("svhn", {"root": str(tmp_path), "download": True})
    assert str(err.value) == (
        f"SVHN data not found in {tmp_path}: train_32x32.mat missing; download was tried and "
        "failed (OSError: Network is unreachable); put train_32x32.mat, test_32x32.mat (from "
        f"http://ufldl.stanford.edu/housenumbers/) in {tmp_path}"
    )


def test_flowers102_archive_is_extracted_by_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil
    import tarfile

    fl = write_flowers102(tmp_path, np.random.default_rng(9), classes=2, per_split=1)
    trust_flowers(monkeypatch, fl.md5)
    home = tmp_path / "flowers-102"
    with tarfile.open(home / "102flowers.tgz", "w:gz") as tar:  # the real archive holds jpg/
        tar.add(home / "jpg", arcname="jpg")
    shutil.rmtree(home / "jpg")
    dry = prepare_dataset("flowers102", {"root": str(tmp_path)}, fetch=False)
    assert dry.found == f"{home / '102flowers.tgz'} found; extracted once at run time"
    assert not (home / "jpg").exists()
    assert prepare_dataset("flowers102", {"root": str(tmp_path)}).train_size == 2
    assert len(list((home / "jpg").iterdir())) == 6
