"""`digits_coco`: an embedded detection and instance-segmentation data set, written in COCO
format on first use: scikit-learn's handwritten digits placed on canvases.

Each canvas (default 96x96 RGB, dark noise) holds 1 to 4 digits at random positions and sizes
(sides 16 to 36 px), each in a random bright colour, none overlapping. A digit is one object of
its class: COCO category ids 1..10 for the digits 0..9 (id 0 is the background class of
torchvision's detectors). Its mask is its pixels (the bilinearly upscaled glyph at >= half
intensity), its box and area pycocotools' `toBbox` and `area` of that mask, so the files agree
with the reference evaluator by construction. Segmentations are stored as compressed RLE,
which pycocotools and torchvision's COCO wrapper read as they read COCO's polygons.

Training canvases draw their digits from the fixed training portion of `digits` (80% of
every class, normbench.data.digits), validation canvases from the held-out 20%: no validation
digit is seen in training. Everything follows from the parameters and `seed`.

Layout, COCO's: `FOLDER/annotations/instances_{train,val}.json` and `FOLDER/{train,val}/*.png`,
with FOLDER = `<data root>/digits_coco/<parameters>/`. It is written into a private folder
and renamed into place, so concurrent readers see no folder or a complete one.

As a registered data set (`digits_coco_dataset`, name `digits_coco`), the "val" canvases are
the test split (the held-out digits, as COCO's val2017 is the reported split) and the
validation split is `val_fraction` of the training canvases; batches come from
`normbench.data.coco`'s loader.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from normbench.contract import DatasetFacts
from normbench.data.base import DatasetOptionError, DataSplits
from normbench.data.files import data_root, write_once

CATEGORIES = [{"id": d + 1, "name": str(d), "supercategory": "digit"} for d in range(10)]
SPLITS = ("train", "val")


@dataclass(frozen=True)
class CanvasSpec:
    """What the canvases are: counts per split, canvas side (px), digits per canvas and digit
    sides (px), inclusive ranges, and the seed of every random choice."""

    n_train: int = 512
    n_val: int = 128
    size: int = 96
    per_image: tuple[int, int] = (1, 4)
    sides: tuple[int, int] = (16, 36)
    seed: int = 0

    def __post_init__(self) -> None:
        lo, hi = self.sides
        if not (1 <= self.per_image[0] <= self.per_image[1] and 8 <= lo <= hi <= self.size):
            raise ValueError(
                f"digits_coco needs 1 <= per_image[0] <= per_image[1] and 8 <= sides[0] <= "
                f"sides[1] <= size, but got per_image={self.per_image}, sides={self.sides}, "
                f"size={self.size}"
            )

    @property
    def key(self) -> str:
        """The cache folder's name: every parameter, so another spec never reads this one."""
        return (
            f"v1-s{self.size}-n{self.n_train}-{self.n_val}-k{self.per_image[0]}-"
            f"{self.per_image[1]}-px{self.sides[0]}-{self.sides[1]}-seed{self.seed}"
        )


@dataclass(frozen=True)
class CocoFiles:
    """Where a COCO-format data set's files are: `images(split)` and `annotations(split)`."""

    folder: Path

    def images(self, split: str) -> Path:
        return self.folder / split

    def annotations(self, split: str) -> Path:
        return self.folder / "annotations" / f"instances_{split}.json"


def digits_coco(spec: CanvasSpec | None = None, root: str | None = None) -> CocoFiles:
    """The canvases of `spec`, written on first use under `<root>/digits_coco/`."""
    spec = spec or CanvasSpec()
    home = data_root(root) / "digits_coco"
    files = CocoFiles(home / spec.key)
    write_once(files.folder, lambda tmp: write_canvases(spec, tmp))
    return files


def write_canvases(spec: CanvasSpec, folder: Path) -> None:
    """Write both splits of `spec` into `folder` (COCO layout)."""
    from normbench.data.base import stratified_split
    from normbench.data.digits import DIGITS_TEST_FRACTION, DIGITS_TEST_SEED, load_digits_tensor

    glyphs = load_digits_tensor(8)  # uint8 (1797, 1, 8, 8), 0..255
    train_idx, val_idx = stratified_split(
        glyphs.labels.numpy(), DIGITS_TEST_FRACTION, DIGITS_TEST_SEED
    )
    rng = np.random.default_rng(spec.seed)
    (folder / "annotations").mkdir(parents=True)
    for split, idx, n in (("train", train_idx, spec.n_train), ("val", val_idx, spec.n_val)):
        (folder / split).mkdir()
        coco, pixels = _split(
            spec, rng, glyphs.images[idx, 0].numpy(), glyphs.labels[idx].numpy(), n
        )
        for name, image in pixels:
            Image.fromarray(image).save(folder / split / name)
        (folder / "annotations" / f"instances_{split}.json").write_text(json.dumps(coco))


def _split(
    spec: CanvasSpec, rng: np.random.Generator, glyphs: np.ndarray, labels: np.ndarray, n: int
) -> tuple[dict[str, Any], list[tuple[str, np.ndarray]]]:
    """(COCO annotation dict, [(file name, pixels)]) of `n` canvases."""
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    pixels = []
    for image_id in range(1, n + 1):
        canvas, objects = render_canvas(spec, rng, glyphs, labels)
        name = f"{image_id:06d}.png"
        images.append({"id": image_id, "file_name": name, "width": spec.size, "height": spec.size})
        pixels.append((name, canvas))
        for label, mask in objects:
            annotations.append(_annotation(len(annotations) + 1, image_id, label, mask))
    coco = {
        "info": {"description": f"normbench digits_coco {spec.key}"},
        "images": images,
        "annotations": annotations,
        "categories": CATEGORIES,
    }
    return coco, pixels


def _annotation(ann_id: int, image_id: int, label: int, mask: np.ndarray) -> dict[str, Any]:
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": int(label) + 1,
        "bbox": [float(v) for v in mask_utils.toBbox(rle)],
        "area": float(mask_utils.area(rle)),
        "segmentation": {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")},
        "iscrowd": 0,
    }


def render_canvas(
    spec: CanvasSpec, rng: np.random.Generator, glyphs: np.ndarray, labels: np.ndarray
) -> tuple[np.ndarray, list[tuple[int, np.ndarray]]]:
    """One canvas: uint8 (H, W, 3) pixels and [(digit, bool mask (H, W))] of its objects."""
    s = spec.size
    canvas = np.clip(rng.normal(24.0, 8.0, size=(s, s, 3)), 0, 255)
    placed: list[tuple[int, int, int]] = []  # (x, y, side) of each digit
    objects = []
    for _ in range(int(rng.integers(spec.per_image[0], spec.per_image[1] + 1))):
        spot = _free_spot(spec, rng, placed)
        if spot is None:
            continue
        x, y, side = spot
        i = int(rng.integers(len(glyphs)))
        glyph = Image.fromarray(glyphs[i]).resize((side, side), Image.Resampling.BILINEAR)
        ink = np.asarray(glyph, dtype=np.float64) / 255.0  # (side, side) in [0, 1]
        colour = rng.uniform(0.5, 1.0, size=3) * 255.0
        region = canvas[y : y + side, x : x + side]
        canvas[y : y + side, x : x + side] = np.maximum(region, ink[..., None] * colour)
        mask = np.zeros((s, s), dtype=bool)
        mask[y : y + side, x : x + side] = ink >= 0.5
        if mask.any():
            placed.append(spot)
            objects.append((int(labels[i]), mask))
    return canvas.round().astype(np.uint8), objects


def _free_spot(
    spec: CanvasSpec, rng: np.random.Generator, placed: list[tuple[int, int, int]]
) -> tuple[int, int, int] | None:
    """A square (x, y, side) that overlaps no placed one; None after 50 tries."""
    for _ in range(50):
        side = int(rng.integers(spec.sides[0], spec.sides[1] + 1))
        x, y = (int(v) for v in rng.integers(0, spec.size - side + 1, size=2))
        if all(x + side <= px or px + ps <= x or y + side <= py or py + ps <= y
               for px, py, ps in placed):  # fmt: skip
            return x, y, side
    return None


@DatasetFacts(
    train_images=512, channels=3, image_size=96, count_option="n_train",
    test_images=128, test_count_option="n_test",
)  # fmt: skip
def digits_coco_dataset(
    *,
    root: str | None = None,
    download: bool = False,
    image_size: int | None = None,
    val_fraction: float = 0.1,
    split_seed: int = 0,
    n_train: int = 512,
    n_test: int = 128,
    max_per_image: int = 4,
    min_side: int = 16,
    max_side: int = 36,
    canvas_seed: int = 0,
    masks: bool = True,
) -> DataSplits:
    """The embedded detection data set: `n_train` training and `n_test` test canvases of
    side `image_size` (default 96 px), 1 to `max_per_image` digits each, of sides `min_side` to
    `max_side` px, drawn from `canvas_seed`; written on first use (nothing is downloaded)."""
    from normbench.data.coco import coco_splits

    del download
    try:
        spec = CanvasSpec(
            n_train=int(n_train), n_val=int(n_test), size=int(image_size or 96),
            per_image=(1, int(max_per_image)), sides=(int(min_side), int(max_side)),
            seed=int(canvas_seed),
        )  # fmt: skip
    except (ValueError, TypeError) as exc:
        raise DatasetOptionError(f"digits_coco: {exc}") from exc
    files = digits_coco(spec, root)
    return coco_splits(
        "digits_coco",
        ((files.images("train"), files.annotations("train")),
         (files.images("val"), files.annotations("val"))),
        masks=masks,
        val_fraction=val_fraction,
        split_seed=split_seed,
        image_size=spec.size,
        info={"source": f"generated from scikit-learn digits ({spec.key})"},
    )  # fmt: skip
