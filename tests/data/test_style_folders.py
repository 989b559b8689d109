"""Content and style folders (normbench/data/style_folders.py, style_synthetic.py): flat folders
of image files as users have them (JPEG, PNG, other files beside them), the official transforms,
the training and evaluation pairing (and a data-parallel rank's share), the splits, and the
generated folders."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from normbench.data.base import DatasetOptionError
from normbench.data.build import build_data
from normbench.data.shard import Shard
from normbench.data.style_folders import (
    FlatImageFolder,
    ImagePairs,
    PairLoader,
    image_transform,
    style_folders,
)
from normbench.data.style_synthetic import FolderSpec, generated_folders
from normbench.errors import DatasetNotFoundError


def _write(folder: Path, n: int, value: int, size: tuple[int, int] = (40, 30)) -> None:
    folder.mkdir(parents=True)
    for i in range(n):
        pixels = np.full((size[1], size[0], 3), value + i, np.uint8)
        fmt = ("png", "jpg", "JPEG")[i % 3]
        Image.fromarray(pixels).save(folder / f"img{i:02d}.{fmt}")
    (folder / "notes.txt").write_text("not an image")
    (folder / "sub").mkdir()  # a subfolder is not read (the folder is flat)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(folder / "sub" / "x.png")


def test_a_flat_folder_reads_its_images_sorted(tmp_path: Path) -> None:
    _write(tmp_path / "c", 5, 10)
    folder = FlatImageFolder(tmp_path / "c")
    assert [p.name for p in folder.files] == [
        "img00.png", "img01.jpg", "img02.JPEG", "img03.png", "img04.jpg"
    ]  # fmt: skip
    image, label = folder[3]
    assert image.mode == "RGB" and image.size == (40, 30) and label == 0
    assert np.asarray(image)[0, 0].tolist() == [13, 13, 13]  # PNG is lossless


def test_missing_or_empty_folders_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match="does not exist"):
        FlatImageFolder(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "a.txt").write_text("x")
    with pytest.raises(DatasetNotFoundError, match="holds no image file") as info:
        FlatImageFolder(tmp_path / "empty")
    assert "\n" not in str(info.value)


def test_transforms_resize_then_crop() -> None:
    image = Image.fromarray(np.arange(30 * 40 * 3, dtype=np.uint8).reshape(30, 40, 3))
    train = image_transform(16, 8, train=True)
    out = train(image)
    assert out.dtype == torch.uint8 and out.shape == (3, 8, 8)
    resized = image_transform(16, 16, train=False)(image)  # the whole resized image
    centre = image_transform(16, 8, train=False)(image)
    assert torch.equal(centre, resized[:, 4:12, 4:12])
    with pytest.raises(ValueError, match="crop_size <= load_size"):
        image_transform(8, 16, train=True)


def test_training_pairs_cover_every_content_once_with_shuffled_styles(tmp_path: Path) -> None:
    _write(tmp_path / "c", 10, 0)
    _write(tmp_path / "s", 3, 100)
    pairs = ImagePairs(FlatImageFolder(tmp_path / "c"), FlatImageFolder(tmp_path / "s"))
    loader = PairLoader(pairs, batch_size=4, device="cpu", train=True, load_size=12,
                        crop_size=8, seed=3)  # fmt: skip
    assert len(loader) == 2  # 10 // 4, the short batch dropped
    keys = loader.keys(0)
    assert sorted(k[0] for k in keys) == list(range(10))
    counts = Counter(k[2] for k in keys)
    assert set(counts) == {0, 1, 2} and max(counts.values()) - min(counts.values()) <= 1
    assert loader.keys(1) != keys and loader.keys(0) == keys  # drawn from (seed, epoch)
    batches = list(loader)
    assert len(batches) == 2
    for (c, s), served in zip(batches, loader.batches(0), strict=True):
        assert c.shape == s.shape == (4, 3, 8, 8) and c.dtype == torch.float32
        # flat colour images: the pixel value says which file each sample came from
        assert [round(v * 255) for v in c[:, 0, 0, 0].tolist()] == [k[0] for k in served]
        assert [round(v * 255) - 100 for v in s[:, 0, 0, 0].tolist()] == [k[2] for k in served]
    assert len(list(loader)) == 2 and loader.epoch == 2
    # two data-parallel ranks serve the rows of the same global batches of 2 x 2
    ranks = [PairLoader(pairs, batch_size=2, device="cpu", train=True, load_size=12,
                        crop_size=8, seed=3, shard=Shard(r, 2)) for r in (0, 1)]  # fmt: skip
    for step, (a, b) in enumerate(zip(ranks[0].batches(0), ranks[1].batches(0), strict=True)):
        assert a + b == keys[4 * step : 4 * step + 4]


def test_validation_pairs_the_kth_content_with_the_kth_style(tmp_path: Path) -> None:
    _write(tmp_path / "c", 7, 0)
    _write(tmp_path / "s", 5, 100)
    pairs = ImagePairs(FlatImageFolder(tmp_path / "c"), FlatImageFolder(tmp_path / "s"))
    loader = PairLoader(pairs, batch_size=2, device="cpu", train=False, load_size=8,
                        crop_size=8)  # fmt: skip
    assert len(loader) == 3  # min(7, 5) = 5 pairs, the last batch short
    served = [(round(c[i, 0, 0, 0].item() * 255), round(s[i, 0, 0, 0].item() * 255))
              for c, s in loader for i in range(len(c))]  # fmt: skip
    assert served == [(k, 100 + k) for k in range(5)]
    limited = PairLoader(pairs, batch_size=2, device="cpu", train=True, load_size=8,
                         crop_size=8, limit_batches=1)  # fmt: skip
    assert len(limited) == 1 and len(list(limited)) == 1


def test_generated_folders_are_written_once_and_reproducible(tmp_path: Path) -> None:
    spec = FolderSpec(n_train=6, n_test=3, size=16, seed=1)
    folders = generated_folders(spec, root=str(tmp_path / "a"))
    for kind in ("content", "style"):
        for split, n in (("train", 6), ("test", 3)):
            files = sorted(folders.folder(kind, split).iterdir())
            assert len(files) == n and all(f.suffix == ".png" for f in files)
            assert Image.open(files[0]).size == (16, 16)
    again = generated_folders(spec, root=str(tmp_path / "b"))
    for kind in ("content", "style"):
        for a, b in zip(sorted(folders.folder(kind, "test").iterdir()),
                        sorted(again.folder(kind, "test").iterdir()), strict=True):  # fmt: skip
            assert a.read_bytes() == b.read_bytes()
    assert generated_folders(spec, root=str(tmp_path / "a")) == folders  # found, not rewritten
    home = tmp_path / "a" / "style_transfer_synthetic"
    assert [p.name for p in home.iterdir()] == [spec.key]  # no private folder left behind
    styles = [np.asarray(Image.open(p)) for p in sorted(folders.folder("style", "train").iterdir())]
    means = {tuple(s.reshape(-1, 3).mean(0).round()) for s in styles}
    assert len(means) == len(styles)  # every style has its own colour statistics


def test_the_data_set_has_user_folders_as_splits(tmp_path: Path) -> None:
    """style_folders: training folders less a held-out share (val), the test folders."""
    for name, n, value in (("c", 10, 0), ("s", 6, 100), ("tc", 4, 50), ("ts", 3, 150)):
        _write(tmp_path / name, n, value)
    splits = style_folders(root=str(tmp_path), content_dir="c", style_dir="s",
                           test_content_dir="tc", test_style_dir="ts", val_fraction=0.2,
                           image_size=8, load_size=12)  # fmt: skip
    assert (len(splits.train.content), len(splits.train.style)) == (8, 5)
    assert (len(splits.val.content), len(splits.val.style)) == (2, 1)
    held = set(splits.val.content.files) | set(splits.val.style.files)
    assert not held & (set(splits.train.content.files) | set(splits.train.style.files))
    assert len(splits.test.content) == 4 and splits.image_size == 8
    data = build_data("style_folders", batch_size=4, eval_batch_size=2, device="cpu", seed=0,
                      probe_batch_size=2, root=str(tmp_path), content_dir="c", style_dir="s",
                      test_content_dir="tc", test_style_dir="ts", image_size=8,
                      load_size=12)  # fmt: skip
    assert (len(data.train), len(data.test)) == (2, 2)  # 10 // 4; min(4, 3) pairs in 2s
    content, style = next(iter(data.test))
    assert content.shape == (2, 3, 8, 8) and round(style[1, 0, 0, 0].item() * 255) == 151
    with pytest.raises(DatasetOptionError, match="val_fraction 0.01 holds out no image of 10 "
                       "content and 6 style images"):  # fmt: skip
        style_folders(root=str(tmp_path), content_dir="c", style_dir="s", test_content_dir="tc",
                      test_style_dir="ts", val_fraction=0.01)  # fmt: skip
    with pytest.raises(DatasetNotFoundError, match="needs the options test_style_dir"):
        style_folders(root=str(tmp_path), content_dir="c", style_dir="s", test_content_dir="tc")
