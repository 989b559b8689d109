"""digits and synthetic factories, the validation split, options and registration."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from normbench.data import DATASETS, DataSplits, TensorSet, build_data, register_dataset
from normbench.data.base import DatasetOptionError, stratified_split
from normbench.data.digits import digits
from normbench.data.synthetic import synthetic
from normbench.errors import UnknownNameError


def test_digits_shapes_values_and_fixed_test_split() -> None:
    target = load_digits().target
    n_test = sum(int(np.floor(0.2 * n + 0.5)) for n in np.bincount(target))  # 20% per class
    a = digits(image_size=8, val_fraction=0.1, split_seed=0)
    assert a.in_channels == 1 and a.num_classes == 10 and a.image_size == 8
    assert a.train.images.shape[1:] == (1, 8, 8) and a.train.images.dtype == torch.uint8
    assert len(a.test) == n_test and len(a.train) + len(a.val) + len(a.test) == 1797
    assert set(a.test.labels.tolist()) == set(range(10))
    # values 0..16 scaled to 0..255: every served image is a scaled sklearn image
    raw = np.rint(load_digits().images * 255 / 16).astype(np.uint8)
    rows = {r.tobytes() for r in raw}
    assert all(im.numpy().tobytes() in rows for im in a.test.images)
    assert not a.augment.hflip and a.augment.crop_padding == 2  # digits are not flip-invariant
    b = digits(image_size=8, val_fraction=0.3, split_seed=5)
    assert torch.equal(a.test.images, b.test.images) and torch.equal(a.test.labels, b.test.labels)


def test_digits_default_size_and_test_set_independent_of_trial_seed() -> None:
    d0 = build_data("digits", batch_size=32, eval_batch_size=100, device="cpu", seed=0)
    d1 = build_data(
        "digits", batch_size=32, eval_batch_size=100, device="cpu", seed=9, split_seed=4
    )
    assert d0.image_size == 16 and d0.in_channels == 1
    for (xa, ya), (xb, yb) in zip(d0.test, d1.test, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert d0.probe.shape == (32, 1, 16, 16)


def test_stratified_split_is_disjoint_seeded_and_stratified() -> None:
    labels = np.repeat(np.arange(4), [10, 20, 30, 40])
    keep, held = stratified_split(labels, 0.1, seed=3)
    assert set(keep).isdisjoint(held) and len(keep) + len(held) == 100
    assert Counter(labels[held].tolist()) == {0: 1, 1: 2, 2: 3, 3: 4}
    again, other = stratified_split(labels, 0.1, 3)[1], stratified_split(labels, 0.1, 4)[1]
    assert np.array_equal(held, again) and not np.array_equal(held, other)


def test_val_images_are_disjoint_from_train() -> None:
    s = synthetic(val_fraction=0.2, split_seed=1, n_train=200, n_test=50)
    rows = lambda t: {im.numpy().tobytes() for im in t.images}  # noqa: E731
    assert len(s.val) == 40 and rows(s.val).isdisjoint(rows(s.train))
    assert synthetic(val_fraction=0.0, n_train=200, n_test=50).val is None
    d = build_data(
        "synthetic",
        batch_size=16,
        eval_batch_size=64,
        device="cpu",
        seed=0,
        val_fraction=0.0,
        n_train=100,
        n_test=20,
    )
    assert d.val is None and d.info["val_size"] == 0


def test_synthetic_is_deterministic() -> None:
    a, b = synthetic(n_train=60, n_test=20), synthetic(n_train=60, n_test=20)
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.test.images, b.test.images)
    assert not torch.equal(a.test.images, synthetic(n_train=60, n_test=20, data_seed=1).test.images)


def test_option_errors_name_the_choices() -> None:
    kw = dict(batch_size=8, eval_batch_size=8, device="cpu", seed=0)
    with pytest.raises(
        UnknownNameError, match="did you mean 'val_fraction'.*options: .*val_fraction"
    ):
        build_data("digits", **kw, val_fractoin=0.2)
    with pytest.raises(UnknownNameError, match="did you mean 'rotation'"):
        build_data("digits", **kw, augment={"rotaton": 15})
    with pytest.raises(DatasetOptionError, match="0 <= val_fraction < 1"):
        build_data("digits", **kw, val_fraction=1.0)
    with pytest.raises(DatasetOptionError, match="crop_padding"):
        build_data("digits", **kw, augment={"crop_padding": -1})
    with pytest.raises(DatasetOptionError, match="larger than"):
        build_data("synthetic", **{**kw, "batch_size": 500}, n_train=100, n_test=10)


def test_augment_override_is_recorded() -> None:
    d = build_data(
        "synthetic",
        batch_size=16,
        eval_batch_size=64,
        device="cpu",
        seed=0,
        n_train=100,
        n_test=20,
        augment={"rotation": 15, "hflip": False},
    )
    assert d.info["augment"] == {"crop_padding": 2, "hflip": False, "rotation": 15.0}


def test_plugin_factory_goes_through_the_same_door() -> None:
    @register_dataset("tiny_test_plugin")
    def tiny(*, root, download, image_size, val_fraction, split_seed, **options) -> DataSplits:
        x = torch.full((8, 1, 4, 4), 51, dtype=torch.uint8)
        ts = TensorSet(x, torch.arange(8) % 2)
        return DataSplits("tiny", ts, None, ts, 2, 1, 4, (0.2,), (0.1,), info=options)

    try:
        d = build_data(
            "tiny_test_plugin", batch_size=4, eval_batch_size=8, device="cpu", seed=0, anything=1
        )
        x, _ = next(iter(d.test))
        assert torch.allclose(x, torch.full_like(x, (51 / 255 - 0.2) / 0.1))
        assert d.info["anything"] == 1 and d.val is None
    finally:
        DATASETS.unregister("tiny_test_plugin")
