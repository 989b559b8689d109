"""`synthetic`: deterministic, learnable images for tests and smoke runs (no files needed).

Every class has a smooth random template (a 4x4 grid of random colours, bilinearly
upsampled to the image size). A sample is its class template at a random contrast and
brightness, plus pixel noise:

    x = clip(128 + contrast * (template - 128) + brightness + noise, 0, 255),
    contrast ~ U(0.6, 1.0), brightness ~ N(0, 12), noise ~ N(0, `noise`) per pixel.

Templates and samples come from a NumPy generator seeded with `data_seed` (default 0), never
from the trial seed, so every trial sees the same images. Classes differ in their large-scale
colour layout, which a small convnet learns in a few epochs; noise keeps it from being
trivial. Augmentation default: crop with padding 2 and horizontal flip.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from normbench.contract import DatasetFacts
from normbench.data.base import (
    Augment,
    DatasetOptionError,
    DataSplits,
    TensorSet,
    carve_val,
    channel_stats,
    check_image_size,
)

SYNTHETIC_AUGMENT = Augment(crop_padding=2, hflip=True, rotation=0.0)


def _templates(rng: np.random.Generator, k: int, c: int, size: int) -> torch.Tensor:
    """(K, C, S, S) float templates in 0..255: 4x4 random colours, bilinearly upsampled."""
    coarse = torch.from_numpy(rng.uniform(0.0, 255.0, size=(k, c, 4, 4)))
    return F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)


def make_synthetic(
    n: int, templates: torch.Tensor, noise: float, rng: np.random.Generator
) -> TensorSet:
    """n samples with classes cycling 0..K-1 (balanced), drawn from `rng`."""
    k, c, s, _ = templates.shape
    labels = torch.arange(n) % k
    contrast = torch.from_numpy(rng.uniform(0.6, 1.0, size=(n, 1, 1, 1)))
    bright = torch.from_numpy(rng.normal(0.0, 12.0, size=(n, 1, 1, 1)))
    eps = torch.from_numpy(rng.normal(0.0, noise, size=(n, c, s, s)))
    x = 128.0 + contrast * (templates[labels] - 128.0) + bright + eps  # (N, C, S, S)
    return TensorSet(x.round_().clamp_(0, 255).to(torch.uint8), labels)


def _check_count(name: str, value: int, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise DatasetOptionError(
            f"synthetic: {name} must be an integer >= {minimum}, but got {value!r}"
        )
    return value


@DatasetFacts(
    train_images=2000, channels=3, image_size=16, count_option="n_train",
    test_images=500, test_count_option="n_test",
)  # fmt: skip
def synthetic(
    *,
    root: str | None = None,
    download: bool = False,
    image_size: int | None = None,
    val_fraction: float = 0.1,
    split_seed: int = 0,
    num_classes: int = 10,
    n_train: int = 2000,
    n_test: int = 500,
    channels: int = 3,
    noise: float = 40.0,
    data_seed: int = 0,
) -> DataSplits:
    """Class templates plus noise; `root` and `download` are accepted and ignored."""
    del root, download
    size = check_image_size(image_size, 16, "synthetic")
    k = _check_count("num_classes", num_classes, 2)
    c = _check_count("channels", channels, 1)
    _check_count("n_train", n_train, k)
    _check_count("n_test", n_test, 1)
    if not isinstance(noise, int | float) or noise < 0:
        raise DatasetOptionError(f"synthetic: noise must be a number >= 0, but got {noise!r}")
    rng = np.random.default_rng(int(data_seed))
    templates = _templates(rng, k, c, size)
    train_full = make_synthetic(n_train, templates, float(noise), rng)
    test = make_synthetic(n_test, templates, float(noise), rng)
    mean, std = channel_stats(train_full.images)
    train, val = carve_val(train_full, val_fraction, split_seed)
    return DataSplits(
        name="synthetic",
        train=train,
        val=val,
        test=test,
        num_classes=k,
        in_channels=c,
        image_size=size,
        mean=mean,
        std=std,
        augment=SYNTHETIC_AUGMENT,
        info={"source": f"generated (data_seed {data_seed})", "val_split": "stratified"},
    )


def _check_synthetic_options(options: dict[str, Any]) -> dict[str, str]:
    """normbench's option hook (run at suite validation): the counts `synthetic` checks,
    without generating any data."""
    out: dict[str, str] = {}
    k = options.get("num_classes", 10)
    for name, minimum in (("num_classes", 2), ("channels", 1), ("n_train", k), ("n_test", 1)):
        if name in options:
            try:
                _check_count(name, options[name], minimum if isinstance(minimum, int) else 2)
            except DatasetOptionError as exc:
                out[name] = str(exc)
    return out


synthetic.check_options = _check_synthetic_options  # type: ignore[attr-defined]
