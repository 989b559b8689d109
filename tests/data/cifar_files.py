"""CIFAR-10/100 files in the exact on-disk format of the originals (Python 2 pickles in
`cifar-10-batches-py/` and `cifar-100-python/`), small and random: for the data tests and the
suite smoke tests. `*_md5` maps each file name to its md5, which the real md5 lists lack."""

from __future__ import annotations

import hashlib
import pickle
import struct
from pathlib import Path

import numpy as np


class Py2Pickler(pickle._Pickler):  # type: ignore[misc]
    """Writes str and bytes as Python 2 `str` (SHORT_BINSTRING/BINSTRING), as the original
    CIFAR files (pickled by Python 2) do: they load as b'data' with encoding='bytes' and as
    'data' with encoding='latin1' (what torchvision uses)."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_str(self, obj: str | bytes) -> None:
        raw = obj.encode("latin1") if isinstance(obj, str) else obj
        if len(raw) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(raw)]) + raw)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(raw)) + raw)
        self.memoize(obj)

    dispatch[str] = save_py2_str
    dispatch[bytes] = save_py2_str


def _dump(path: Path, obj: dict) -> str:
    with open(path, "wb") as f:
        Py2Pickler(f, protocol=2).dump(obj)
    return hashlib.md5(path.read_bytes()).hexdigest()


def _images(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)  # rows: R(1024) G(1024) B(1024)


def write_cifar10(
    root: Path, rng: np.random.Generator, per_batch: int = 4, n_test: int = 6
) -> tuple[dict[str, str], np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """data_batch_1..5, test_batch, batches.meta in root/cifar-10-batches-py. Returns md5s and
    the train/test rows and labels in file order."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    md5, xs, ys = {}, [], []
    for k in range(1, 6):
        x, y = _images(rng, per_batch), [int(v) for v in rng.integers(0, 10, per_batch)]
        md5[f"data_batch_{k}"] = _dump(
            folder / f"data_batch_{k}",
            {
                "batch_label": f"training batch {k} of 5",
                "labels": y,
                "data": x,
                "filenames": [f"img_{k}_{i}.png" for i in range(per_batch)],
            },
        )
        xs.append(x)
        ys += y
    xt, yt = _images(rng, n_test), [int(v) for v in rng.integers(0, 10, n_test)]
    md5["test_batch"] = _dump(
        folder / "test_batch",
        {
            "batch_label": "testing batch 1 of 1",
            "labels": yt,
            "data": xt,
            "filenames": [f"t_{i}.png" for i in range(n_test)],
        },
    )
    md5["batches.meta"] = _dump(
        folder / "batches.meta",
        {
            "label_names": [f"class{i}" for i in range(10)],
            "num_cases_per_batch": per_batch,
            "num_vis": 3072,
        },
    )
    return md5, np.concatenate(xs), np.array(ys), xt, np.array(yt)


def write_cifar100(
    root: Path, rng: np.random.Generator, n_train: int = 20, n_test: int = 6
) -> tuple[dict[str, str], np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    out: list[np.ndarray] = []
    md5 = {}
    for name, n in (("train", n_train), ("test", n_test)):
        x, fine = _images(rng, n), [int(v) for v in rng.integers(0, 100, n)]
        md5[name] = _dump(
            folder / name,
            {
                "filenames": [f"{name}_{i}.png" for i in range(n)],
                "batch_label": name,
                "fine_labels": fine,
                "coarse_labels": [v // 5 for v in fine],
                "data": x,
            },
        )
        out += [x, np.array(fine)]
    md5["meta"] = _dump(
        folder / "meta",
        {
            "fine_label_names": [f"f{i}" for i in range(100)],
            "coarse_label_names": [f"c{i}" for i in range(20)],
        },
    )
    return (md5, *out)  # type: ignore[return-value]
