"""COCO AP by pycocotools equals a hand computation on a hand-made prediction file.

One 100x100 image, one category, three ground-truth boxes (COCO areas: small < 32^2 <= medium
< 96^2 <= large):
    A [10, 10, 20, 20] area 400 (small), B [50, 50, 40, 40] area 1600 (medium),
    C [10, 60, 35, 35] area 1225 (medium);
and four detections, by score:
    d2 0.95 [0, 0, 8, 8]     overlaps nothing: a false positive (area 64, small)
    d1 0.90 = A              IoU 1
    d3 0.70 [50, 50, 40, 29] inside B: IoU 1160 / 1600 = 0.725, a hit for IoU thresholds
                             0.50..0.70, a miss for 0.75..0.95
    d4 0.60 = C              IoU 1

By hand, in score order (COCO: AP is the mean over the 101 recall points r = 0, 0.01, .., 1
of the best precision at recall >= r, 0 where recall never reaches r):
- all areas, thresholds 0.50..0.70: FP TP TP TP -> recall 0, 1/3, 2/3, 1, precision 0, 1/2,
  2/3, 3/4 -> 3/4 at every r: AP50 = 0.75;
- thresholds 0.75..0.95: FP TP FP TP -> recall 0, 1/3, 1/3, 2/3, precision 0, 1/2, 1/3, 1/2
  -> 1/2 for the 67 points r <= 2/3, 0 above: AP75 = 33.5 / 101;
- AP = mean over the ten thresholds = (0.75 + 33.5 / 101) / 2;
- small (only A counts; B and C are ignored, so are the detections matched to them or outside
  the range): FP(d2) TP(d1) -> 1/2 at every r: APs = 0.5;
- medium (B and C; d1 matches the ignored A, d2 is outside the range): 0.50..0.70: TP TP ->
  1; 0.75..0.95: FP(d3) TP(d4) -> 1/2 for the 51 points r <= 1/2: APm = (1 + 25.5 / 101) / 2;
- no large object: APl is None (pycocotools' -1).
Masks equal to the boxes' rectangles give the same IoUs and areas, so mask AP = box AP.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from normbench.tasks.detection.evaluate import coco_metrics, metrics, to_coco_results

GT = {"A": [10, 10, 20, 20], "B": [50, 50, 40, 40], "C": [10, 60, 35, 35]}
DETS = [(0.95, [0, 0, 8, 8]), (0.90, GT["A"]), (0.70, [50, 50, 40, 29]), (0.60, GT["C"])]
HAND = {
    "AP": (0.75 + 33.5 / 101) / 2,
    "AP50": 0.75,
    "AP75": 33.5 / 101,
    "APs": 0.5,
    "APm": (1 + 25.5 / 101) / 2,
    "APl": None,
}


def rectangle(box: list[int]) -> np.ndarray:
    m = np.zeros((100, 100), dtype=np.uint8)
    x, y, w, h = box
    m[y : y + h, x : x + w] = 1
    return m


def rle(box: list[int]) -> dict:
    r = mask_utils.encode(np.asfortranarray(rectangle(box)))
    return {"size": list(r["size"]), "counts": r["counts"].decode()}


@pytest.fixture
def coco_gt(tmp_path: Path) -> COCO:
    anns = [
        {"id": k + 1, "image_id": 1, "category_id": 1, "bbox": box, "area": box[2] * box[3],
         "segmentation": rle(box), "iscrowd": 0}
        for k, box in enumerate(GT.values())
    ]  # fmt: skip
    path = tmp_path / "instances.json"
    path.write_text(
        json.dumps(
            {
                "images": [{"id": 1, "file_name": "1.png", "width": 100, "height": 100}],
                "annotations": anns,
                "categories": [{"id": 1, "name": "thing"}],
            }
        )
    )
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(path))


def expected(prefix: str) -> dict[str, float | None]:
    return {f"{prefix}_{k}": (None if v is None else 100 * v) for k, v in HAND.items()}


def assert_hand(got: dict[str, float | None], prefix: str) -> None:
    assert got.keys() == expected(prefix).keys()
    for name, value in expected(prefix).items():
        if value is None:
            assert got[name] is None, name
        else:
            assert got[name] == pytest.approx(value, abs=1e-9), name


def test_box_ap_equals_the_hand_computation(coco_gt: COCO) -> None:
    results = [{"image_id": 1, "category_id": 1, "bbox": box, "score": s} for s, box in DETS]
    assert_hand(coco_metrics(coco_gt, results, "bbox"), "box")


def test_model_outputs_become_results_with_the_same_ap(coco_gt: COCO) -> None:
    """A detector's outputs (boxes XYXY, mask probabilities (K, 1, H, W)) through
    `to_coco_results`: box and mask AP both equal the hand computation."""
    boxes = torch.tensor([[x, y, x + w, y + h] for _, (x, y, w, h) in DETS], dtype=torch.float32)
    probs = torch.stack([torch.from_numpy(rectangle(b)).float() for _, b in DETS])[:, None]
    probs = probs * 0.9 + 0.05  # inside 0.95, outside 0.05: thresholded at 0.5
    out = {"boxes": boxes, "labels": torch.ones(4, dtype=torch.int64),
           "scores": torch.tensor([s for s, _ in DETS]), "masks": probs}  # fmt: skip
    results = to_coco_results([out], [1])
    assert [r["bbox"] for r in results] == [[float(v) for v in b] for _, b in DETS]
    assert_hand(coco_metrics(coco_gt, results, "bbox"), "box")
    assert_hand(coco_metrics(coco_gt, results, "segm"), "mask")


def test_no_detection_scores_zero_and_metrics_are_declared(coco_gt: COCO) -> None:
    none = coco_metrics(coco_gt, [], "segm")  # no detection: 0 where objects exist
    assert none == {"mask_AP": 0.0, "mask_AP50": 0.0, "mask_AP75": 0.0, "mask_APs": 0.0,
                    "mask_APm": 0.0, "mask_APl": None}  # fmt: skip
    names = [m.name for m in metrics(masks=True)]
    assert names[:3] == ["box_AP", "box_AP50", "box_AP75"] and names[-1] == "mask_APl"
    assert all(m.unit == "%" and m.higher_is_better for m in metrics(masks=False))
