"""COCO box and mask AP, computed by pycocotools (`COCOeval`), the reference implementation.

The six numbers of UBN Tables 5-6 are the first six of `COCOeval.stats`, in COCO's order:
AP (mean over IoU thresholds 0.50:0.05:0.95, all areas, 100 detections per image), AP50,
AP75, and AP over small (area < 32^2 px), medium (32^2..96^2) and large (> 96^2) objects.
Each AP is the mean over categories of the 101-point interpolated precision (Lin et al.,
"Microsoft COCO", ECCV 2014; cocodataset.org/#detection-eval). They are reported in percent,
higher is better; pycocotools' -1 (no ground-truth object of that size) becomes None.

A model's outputs become COCO results: boxes XYXY -> [x, y, w, h]; a mask's probabilities
(1, H, W) are thresholded at 0.5 (as torchvision's and mmdetection's COCO evaluations do) and
encoded as compressed RLE.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

IouType = Literal["bbox", "segm"]
STATS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
PREFIX = {"bbox": "box", "segm": "mask"}


@dataclass(frozen=True)
class Metric:
    """A number a detection evaluation reports: its record name, unit and direction."""

    name: str
    unit: str = "%"
    higher_is_better: bool = True


def metrics(masks: bool) -> tuple[Metric, ...]:
    """The metrics `evaluate_detector` returns: box AP..APl, then mask AP..APl with masks."""
    types: tuple[IouType, ...] = ("bbox", "segm") if masks else ("bbox",)
    return tuple(Metric(f"{PREFIX[t]}_{s}") for t in types for s in STATS)


def to_coco_results(
    outputs: Iterable[dict[str, torch.Tensor]], image_ids: Iterable[int]
) -> list[dict[str, Any]]:
    """torchvision detector outputs (one dict per image: boxes XYXY, labels, scores, masks
    (K, 1, H, W) probabilities when present) -> COCO result dicts."""
    from pycocotools import mask as mask_utils

    results = []
    for out, image_id in zip(outputs, image_ids, strict=True):
        boxes = out["boxes"].detach().cpu().to(torch.float64)
        xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).tolist()
        labels, scores = out["labels"].tolist(), out["scores"].tolist()
        masks = out.get("masks")
        binary = None if masks is None else (masks[:, 0] >= 0.5).cpu().numpy().astype(np.uint8)
        for k, (box, label, score) in enumerate(zip(xywh, labels, scores, strict=True)):
            r: dict[str, Any] = {
                "image_id": int(image_id),
                "category_id": int(label),
                "bbox": box,
                "score": float(score),
            }
            if binary is not None:
                rle = mask_utils.encode(np.asfortranarray(binary[k]))
                r["segmentation"] = {"size": list(rle["size"]), "counts": rle["counts"].decode()}
            results.append(r)
    return results


def coco_metrics(coco_gt: Any, results: list[dict[str, Any]], iou_type: IouType) -> dict:
    """{"box_AP": ..., "box_APl": ...} (or "mask_..." for "segm") in percent, None where
    pycocotools reports -1 (no ground-truth object in that range)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    names = [f"{PREFIX[iou_type]}_{s}" for s in STATS]
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        if results:
            coco_dt = coco_gt.loadRes(results)
        else:  # loadRes fails on an empty list; no detection scores 0 where objects exist
            coco_dt = COCO()
            coco_dt.dataset = {**coco_gt.dataset, "annotations": []}
            coco_dt.createIndex()
        ev = COCOeval(coco_gt, coco_dt, iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {
        n: (None if v < 0 else 100.0 * float(v)) for n, v in zip(names, ev.stats[:6], strict=True)
    }


@torch.no_grad()
def evaluate_detector(model: torch.nn.Module, loader: Iterable, coco_gt: Any) -> dict:
    """Box AP..APl (and mask AP..APl for a Mask R-CNN) of `model` on `loader`'s images,
    scored against `coco_gt` (a pycocotools COCO of the same annotation file)."""
    was_training = model.training
    model.eval()
    results: list[dict[str, Any]] = []
    try:
        for images, targets in loader:
            outputs = model(images)
            results += to_coco_results(outputs, [int(t["image_id"]) for t in targets])
    finally:
        model.train(was_training)
    found = coco_metrics(coco_gt, results, "bbox")
    if model.roi_heads.has_mask():  # type: ignore[union-attr, operator]
        found.update(coco_metrics(coco_gt, results, "segm"))
    return found
