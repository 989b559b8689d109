"""Small COCO 2017 file sets in the real on-disk format (annotations/instances_<split>.json
with polygon and RLE segmentations, crowd regions, category ids with gaps, an image without
objects; JPEG images in <split>/), for tests of the `coco` data set and the COCO suites."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

CATEGORIES = [
    {"id": 1, "name": "person"},
    {"id": 3, "name": "car"},
    {"id": 90, "name": "toothbrush"},
]


def write_coco(root: Path, rng: np.random.Generator, *, size: int = 48,
               counts: dict[str, int] | None = None) -> Path:  # fmt: skip
    """Write `root/annotations/instances_{split}.json` and `root/{split}/*.jpg` for train2017
    and val2017 (`counts` images each): bright rectangles on dark noise, one object each, as a
    polygon (or RLE when crowd); the last image of each split has no object. Returns root."""
    counts = counts or {"train2017": 12, "val2017": 4}
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    for split, n in counts.items():
        (root / split).mkdir(exist_ok=True)
        images, annotations = [], []
        for i in range(1, n + 1):
            px = rng.integers(0, 40, size=(size, size, 3), dtype=np.uint8)
            if i < n:  # the last image has no object
                w, h = (int(v) for v in rng.integers(size // 4, size // 2, size=2))
                x, y = (int(v) for v in rng.integers(0, size - max(w, h), size=2))
                px[y : y + h, x : x + w] = rng.integers(150, 255, size=3, dtype=np.uint8)
                crowd = i % 5 == 0
                ann = {"id": len(annotations) + 1, "image_id": i,
                       "category_id": CATEGORIES[i % 3]["id"], "bbox": [x, y, w, h],
                       "area": float(w * h), "iscrowd": int(crowd)}  # fmt: skip
                if crowd:
                    m = np.zeros((size, size), dtype=np.uint8)
                    m[y : y + h, x : x + w] = 1
                    rle = mask_utils.encode(np.asfortranarray(m))
                    ann["segmentation"] = {"size": [size, size], "counts": rle["counts"].decode()}
                else:
                    ann["segmentation"] = [[x, y, x + w, y, x + w, y + h, x, y + h]]
                annotations.append(ann)
            name = f"{i:012d}.jpg"
            Image.fromarray(px).save(root / split / name, quality=95)
            images.append({"id": i, "file_name": name, "width": size, "height": size})
        coco = {"images": images, "annotations": annotations, "categories": CATEGORIES}
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(coco))
    return root
