"""`style_synthetic`: generated content and style image folders, written as PNG files on first
use in the layout a user's COCO and WikiArt folders have (flat folders of images), served as
`style_folders` serves those (normbench.data.style_folders).

- **Content**: scikit-learn's handwritten digits, bilinearly upscaled to `size`, a digit's
  strokes in one colour over a background of another (both random), with faint noise; training
  images from the fixed training portion of `digits` (80% of every class, normbench.data.digits),
  test images from the held-out 20%.
- **Style**: textures that differ in colour statistics and structure, a kind drawn per image:
  stripes (random angle and period), a checkerboard (random cell), concentric rings, or
  smoothed noise; each painted with a random 3-colour palette.

Layout: `FOLDER/{content,style}/{train,test}/NNNNN.png`, FOLDER =
`<data root>/style_transfer_synthetic/<parameters>/`, written into a private folder and renamed
into place (concurrent readers see no folder or a complete one). Everything follows from the
parameters and `seed`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from normbench.contract import DatasetFacts
from normbench.data.base import DatasetOptionError, DataSplits, check_image_size
from normbench.data.files import data_root, write_once
from normbench.data.style_folders import pair_splits

KINDS = ("content", "style")
SPLITS = ("train", "test")


@dataclass(frozen=True)
class FolderSpec:
    """Image counts per split, the side (px) and the seed of every random choice."""

    n_train: int = 160
    n_test: int = 16
    size: int = 40
    seed: int = 0

    def __post_init__(self) -> None:
        if not (self.n_train >= 1 and self.n_test >= 1 and self.size >= 8):
            raise DatasetOptionError(
                f"style_synthetic needs n_train >= 1, n_test >= 1 and size >= 8, got {self}"
            )

    @property
    def key(self) -> str:
        return f"n{self.n_train}-{self.n_test}_s{self.size}_seed{self.seed}"


@dataclass(frozen=True)
class StyleFolders:
    """The four folders of a written `FolderSpec`."""

    root: Path

    def folder(self, kind: str, split: str) -> Path:
        return self.root / kind / split


def generated_folders(spec: FolderSpec | None = None, root: str | None = None) -> StyleFolders:
    """The folders of `spec`, written on first use under `<root>/style_transfer_synthetic/`."""
    spec = spec or FolderSpec()
    folder = data_root(root) / "style_transfer_synthetic" / spec.key
    return StyleFolders(write_once(folder, lambda tmp: write_folders(spec, tmp)))


@DatasetFacts(
    train_images=160, channels=3, image_size=32, count_option="n_train",
    test_images=16, test_count_option="n_test",
)  # fmt: skip
def style_synthetic(
    *,
    root: str | None = None,
    download: bool = False,
    image_size: int | None = None,
    val_fraction: float = 0.0,
    split_seed: int = 0,
    n_train: int = 160,
    n_test: int = 16,
    size: int = 40,
    seed: int = 0,
) -> DataSplits:
    """Generated folders (module doc) of `n_train` and `n_test` images of side `size` each,
    served with `image_size` crops (default 32, resized to `size` first)."""
    spec = FolderSpec(n_train, n_test, size, seed)
    home = generated_folders(spec, root)
    folders = {
        "content": home.folder("content", "train"),
        "style": home.folder("style", "train"),
        "test_content": home.folder("content", "test"),
        "test_style": home.folder("style", "test"),
    }
    crop = check_image_size(image_size, min(32, size), "style_synthetic")
    return pair_splits("style_synthetic", folders, val_fraction=val_fraction,
                       split_seed=split_seed, crop=crop, load=size,
                       info={"generated": spec.key})  # fmt: skip


def write_folders(spec: FolderSpec, folder: Path) -> None:
    """Write content and style images of both splits into `folder` (module doc)."""
    from normbench.data.base import stratified_split
    from normbench.data.digits import DIGITS_TEST_FRACTION, DIGITS_TEST_SEED, load_digits_tensor

    glyphs = load_digits_tensor(8)  # uint8 (1797, 1, 8, 8)
    parts = stratified_split(glyphs.labels.numpy(), DIGITS_TEST_FRACTION, DIGITS_TEST_SEED)
    rng = np.random.default_rng(spec.seed)
    for split, idx, n in zip(SPLITS, parts, (spec.n_train, spec.n_test), strict=True):
        chosen = rng.choice(idx, size=n, replace=n > len(idx))
        content = _content(glyphs.images[chosen].float() / 255.0, spec.size, rng)
        images = {"content": content, "style": [_texture(spec.size, rng) for _ in range(n)]}
        for kind in KINDS:
            out = folder / kind / split
            out.mkdir(parents=True)
            for i, image in enumerate(images[kind]):
                Image.fromarray(image).save(out / f"{i:05d}.png")


def _content(glyphs: torch.Tensor, size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """(n, 1, 8, 8) glyphs in [0, 1] -> n uint8 (size, size, 3) coloured digits."""
    up = F.interpolate(glyphs, size=(size, size), mode="bilinear", align_corners=False)
    ink = up[:, 0].clamp(0, 1).numpy()[..., None]  # (n, size, size, 1)
    n = len(ink)
    fg, bg = rng.uniform(0, 1, (n, 1, 1, 3)), rng.uniform(0, 1, (n, 1, 1, 3))
    noise = rng.normal(0, 0.03, ink.shape[:3] + (3,))
    pixels = np.clip(ink * fg + (1 - ink) * bg + noise, 0, 1)
    return list((pixels * 255).round().astype(np.uint8))


def _texture(size: int, rng: np.random.Generator) -> np.ndarray:
    """One uint8 (size, size, 3) texture of a random kind and palette (module doc)."""
    yy, xx = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    kind = rng.integers(4)
    if kind == 0:  # stripes
        angle, period = rng.uniform(0, np.pi), rng.uniform(3, size / 2)
        field = np.sin(2 * np.pi * (xx * np.cos(angle) + yy * np.sin(angle)) / period)
    elif kind == 1:  # checkerboard
        cell = int(rng.integers(2, max(size // 4, 3)))
        field = ((xx // cell + yy // cell) % 2) * 2.0 - 1
    elif kind == 2:  # rings around a random centre
        cy, cx, period = rng.uniform(0, size, 2).tolist() + [rng.uniform(3, size / 3)]
        field = np.sin(2 * np.pi * np.hypot(yy - cy, xx - cx) / period)
    else:  # smoothed noise
        coarse = torch.from_numpy(rng.normal(0, 1, (1, 1, 6, 6)))
        field = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
        field = np.tanh(field[0, 0].numpy())
    palette = rng.uniform(0, 1, (3, 3))  # three colours, blended by the field
    w = (field - field.min()) / max(float(field.max() - field.min()), 1e-9)  # [0, 1]
    low, mid, high = (np.clip(1 - 2 * abs(w - c), 0, 1)[..., None] for c in (0.0, 0.5, 1.0))
    pixels = (low * palette[0] + mid * palette[1] + high * palette[2]) / (low + mid + high)
    pixels += rng.normal(0, 0.02, pixels.shape)
    return (np.clip(pixels, 0, 1) * 255).round().astype(np.uint8)
