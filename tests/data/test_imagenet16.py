"""ImageNet 16x16 (`imagenet16`, NAS-Bench-201's ImageNet16-120) from small files written here in
the release's format: pickled dicts of R|G|B-plane rows and labels 1..1000. The unpickler builds
numpy arrays only; a missing file is one line naming what to put where."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from normbench.data import build_data
from normbench.data.imagenet16 import MEAN, TEST_FILE, TRAIN_FILES
from normbench.data.prepare import prepare_dataset
from normbench.errors import DatasetNotFoundError


def write_imagenet16(root: Path, per_file: int = 12, seed: int = 0) -> dict[str, tuple]:
    """ROOT/ImageNet16/{train_data_batch_1..10, val_data} as the release pickles them (a
    protocol-2 dict: 'data' uint8 (N, 3072), 'labels' a list of 1..1000, 'mean'). Labels
    cycle over 1..4 and 121, 500 (outside ImageNet16-120). Returns {file: (images
    (N, 3, 16, 16), labels)}."""
    folder = root / "ImageNet16"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    out = {}
    for name in (*TRAIN_FILES, TEST_FILE):
        images = rng.integers(0, 256, size=(per_file, 3, 16, 16), dtype=np.uint8)
        labels = [(1, 2, 3, 4, 121, 500)[i % 6] for i in range(per_file)]
        rows = images.reshape(per_file, 3 * 256)  # R plane | G plane | B plane
        entry = {"data": rows, "labels": labels, "mean": rows.mean(0)}
        with (folder / name).open("wb") as f:
            pickle.dump(entry, f, protocol=2)
        out[name] = (images, np.array(labels))
    return out


def kept(files: dict[str, tuple], names: tuple[str, ...], classes: int) -> tuple:
    images = np.concatenate([files[n][0] for n in names])
    labels = np.concatenate([files[n][1] for n in names])
    keep = labels <= classes
    return images[keep], labels[keep] - 1


def test_imagenet16_120_keeps_the_first_classes_and_reads_the_planes(tmp_path) -> None:
    files = write_imagenet16(tmp_path)
    data = build_data(
        "imagenet16", batch_size=8, eval_batch_size=100, device="cpu", seed=0,
        root=str(tmp_path), val_fraction=0.0, augment=False,
    )  # fmt: skip
    assert (data.num_classes, data.in_channels, data.image_size) == (120, 3, 16)
    test_images, test_labels = kept(files, (TEST_FILE,), 120)
    x, y = next(iter(data.test))
    assert torch.equal(y, torch.from_numpy(test_labels))  # 121 and 500 left out, labels - 1
    mean = torch.tensor(MEAN)[:, None, None]
    std = torch.tensor(data.info["std"])[:, None, None]
    torch.testing.assert_close(x * std + mean, torch.from_numpy(test_images).float() / 255)
    assert data.info["train_size"] == len(kept(files, TRAIN_FILES, 120)[1]) == 80
    every = build_data(
        "imagenet16", batch_size=8, eval_batch_size=100, device="cpu", seed=0,
        root=str(tmp_path), val_fraction=0.0, classes=1000,
    )  # fmt: skip
    assert every.num_classes == 1000 and every.info["train_size"] == 120


def test_missing_files_are_one_line_before_anything_is_read(tmp_path) -> None:
    write_imagenet16(tmp_path)
    (tmp_path / "ImageNet16" / "train_data_batch_7").unlink()
    with pytest.raises(DatasetNotFoundError) as info:
        prepare_dataset("imagenet16", {"root": str(tmp_path)}, fetch=False)
    message = str(info.value)
    assert "\n" not in message and "train_data_batch_7 missing" in message
    assert f"in {tmp_path / 'ImageNet16'}" in message and "never downloaded" in message


class Armed:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.mkdir, (str(self.marker),))


def test_a_file_holding_anything_but_arrays_is_refused_unrun(tmp_path) -> None:
    write_imagenet16(tmp_path)
    marker = tmp_path / "the_pickle_ran"
    with (tmp_path / "ImageNet16" / "val_data").open("wb") as f:
        pickle.dump({"data": Armed(marker), "labels": [1]}, f, protocol=2)
    with pytest.raises(
        DatasetNotFoundError, match="val_data could not be read .*refused posix.mkdir"
    ):
        build_data("imagenet16", batch_size=8, eval_batch_size=8, device="cpu", seed=0,
                   root=str(tmp_path))  # fmt: skip
    assert not marker.exists()
