"""The `detection` and `instance_segmentation` tasks (UBN Sec 4.2.3, Tables 5-6): torchvision's
Faster R-CNN and Mask R-CNN with FPN (`normbench.tasks.detection.models`) built on the trial's
backbone with the variant placed, the variant's norm layer in FPN and heads too; trained on the
sum of the detector's losses; scored by pycocotools' box AP (the headline of `detection`) or
mask AP (`instance_segmentation`'s), each with AP50, AP75, APs, APm and APl (percent, higher
is better; `normbench.tasks.detection.evaluate`).

A batch is a list of images (3, H, W) in [0, 1] and a list of target dicts (boxes, labels,
area, iscrowd, masks), as a COCO-format data set's loader gives them (`normbench.data.coco`:
`digits_coco`, `coco`). Evaluation scores every rank's predictions together: each rank
gathers its predictions and the ground truth of its images (boxes, areas, crowd flags, masks
as RLE, image sizes) with `ctx.gather`, and pycocotools scores them against a COCO index
built from that ground truth, so no rank needs the annotation file.

Options: `layout` "v2" (torchvision's v2 sizes: FPN width 256, fc 1024, anchors 32-512 px,
shorter side = the data set's `image_size`, default 800 for `coco`) or "small" (a CPU-size
detector for `digits_coco`: `width` channels, anchors 8-128 px, no resize).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
from collections.abc import Callable, Iterable
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from normbench.contract import Metric, Revision, Scoring
from normbench.tasks.base import Batch, EvalContext, ModelContext, Step
from normbench.tasks.detection.evaluate import PREFIX, STATS, coco_metrics, to_coco_results
from normbench.tasks.detection.models import (
    BODIES,
    Body,
    Kind,
    Layout,
    body_of,
    detector,
    small_layout,
    torchvision_v2_layout,
)

LAYOUTS = ("v2", "small")
DETECTION_DATASETS = ("coco", "digits_coco")
_LOSSES = {
    "loss_classifier": "box head classification loss (cross-entropy)",
    "loss_box_reg": "box head regression loss (smooth L1)",
    "loss_objectness": "RPN objectness loss (binary cross-entropy)",
    "loss_rpn_box_reg": "RPN box regression loss (smooth L1)",
    "loss_mask": "mask head loss (per-pixel binary cross-entropy)",
}
_WHAT = {
    "AP": "COCO AP: mean over IoU 0.50:0.05:0.95 and categories",
    "AP50": "AP at IoU 0.50",
    "AP75": "AP at IoU 0.75",
    "APs": "AP on small objects (area < 32^2 px)",
    "APm": "AP on medium objects (32^2..96^2 px)",
    "APl": "AP on large objects (> 96^2 px)",
}


def _scoring(iou_types: tuple[str, ...], losses: tuple[str, ...]) -> Scoring:
    parts = tuple(Metric(n, n, "", False, ("train",), _LOSSES[n]) for n in losses)
    aps = tuple(
        Metric(f"{PREFIX[t]}_{s}", f"{PREFIX[t]} {s}", "%", True, ("val", "test"), _WHAT[s])
        for t in iou_types
        for s in STATS
    )
    head = aps[len(STATS) * (len(iou_types) - 1)]  # mask AP with masks, else box AP
    return Scoring(
        metrics=(Metric("loss", "loss", "", False, ("train",), "sum of the detector's losses"),
                 *parts, *aps),
        headline=head.name,
        shown=tuple(m.name for m in aps if m is not head),
    )  # fmt: skip


class _Detector:
    """What both tasks share; `kind` says which torchvision detector."""

    kind: ClassVar[Kind]
    scoring: ClassVar[Scoring]
    # the box and mask heads' (models.without_activation_after_norm_activation)
    revision = Revision(
        2, "no ReLU after normalization-activation layers in the heads", when="norm_activation"
    )

    def __init__(self, *, layout: str = "v2", width: int = 64) -> None:
        self.layout, self.width = layout, int(width)
        self.num_classes = 0

    @classmethod
    def cost(cls, options: dict[str, Any]) -> str:
        """Why the dry run gives no estimate (normbench.contract.TaskCost)."""
        return (
            "counts no cost: its detector adds an FPN, the RPN and RoI heads to the backbone "
            "at its own image sizes, which the estimate does not count"
        )

    @classmethod
    def check_options(
        cls, options: dict[str, Any], *, dataset: str | None = None, backbone: str | None = None
    ) -> dict[str, str]:
        out: dict[str, str] = {}
        layout, width = options.get("layout", "v2"), options.get("width", 64)
        if layout not in LAYOUTS:
            out["layout"] = f"layout must be one of {', '.join(LAYOUTS)}, but got {layout!r}"
        if isinstance(width, bool) or not isinstance(width, int) or width < 8:
            out["width"] = f"width must be an integer >= 8, but got {width!r}"
        if backbone is not None:
            try:
                body_of(backbone)
            except ValueError:
                choices = ", ".join(b.factory for b in BODIES.values())
                out["backbone"] = (
                    f"{cls.kind} puts an FPN on a ResNet's four stages; backbone {backbone!r} "
                    f"is not one: choose {choices}"
                )
        from normbench.data.registry import BUILTIN_DATASETS

        if dataset in BUILTIN_DATASETS and dataset not in DETECTION_DATASETS:
            out["dataset"] = (
                f"{cls.kind} needs a COCO-format data set ({', '.join(DETECTION_DATASETS)}, or "
                f"a plugin's), not the classification data set {dataset!r}"
            )
        return out

    def norm_widths(self) -> dict[str, frozenset[int]]:
        """The widths of the detector's own norms (`ctx.norm_layer`: after every FPN conv, in
        the box head's convs and the mask head's), by where they come from; the body's are
        the backbone's. Suite validation checks the variant's options at these widths too."""
        parts = "FPN, box and mask heads" if self.kind == "mask_rcnn" else "FPN and box head"
        origin = "task.options.width" if self.layout == "small" else "layout v2"
        width = self._layout(image_size=1).width  # the widths do not follow the image size
        return {f"{parts} ({origin})": frozenset({width})}

    def _layout(self, image_size: int) -> Layout:
        if self.layout == "small":
            return small_layout(image_size, width=self.width)
        # torchvision's v2 sizes, the shorter side at the data set's image size
        v2 = torchvision_v2_layout()
        side = (image_size, round(image_size * v2.max_size / v2.min_size))
        return dataclasses.replace(v2, min_size=side[0], max_size=side[1])

    def build_model(self, ctx: ModelContext) -> nn.Module:
        self.num_classes = ctx.num_classes
        classifier = ctx.backbone(1, in_channels=ctx.in_channels)  # its fc is never run
        return detector(
            self.kind, classifier, stages_of(classifier), ctx.num_classes, ctx.norm_layer,
            layout=self._layout(ctx.image_size),
        )  # fmt: skip

    def training_step(self, forward: Callable[..., Any], batch: Batch) -> Step:
        images, targets = batch
        losses: dict[str, torch.Tensor] = forward(images, targets)
        n = len(images)
        loss = sum(losses.values(), torch.zeros((), device=images[0].device))
        return Step(loss, {k: v.detach().double() * n for k, v in losses.items()})

    @torch.no_grad()
    def evaluate(
        self, forward: Callable[..., Any], batches: Iterable[Batch], ctx: EvalContext
    ) -> dict[str, float | None]:
        results: list[dict[str, Any]] = []
        truth: list[dict[str, Any]] = []
        for images, targets in batches:
            with ctx.autocast():
                outputs = forward(ctx.inputs(images))
            ids = [int(t["image_id"]) for t in targets]
            results += to_coco_results(outputs, ids)
            truth += [ground_truth(x, t) for x, t in zip(images, targets, strict=True)]
        shares = ctx.gather((results, truth))
        results = [r for share in shares for r in share[0]]
        truth = [t for share in shares for t in share[1]]
        if not truth:
            return {}
        gt = coco_index(truth, self.num_classes)
        found: dict[str, float | None] = {}
        for iou in ("bbox", "segm") if self.kind == "mask_rcnn" else ("bbox",):
            found.update(coco_metrics(gt, results, iou))  # type: ignore[arg-type]
        return found


def stages_of(classifier: nn.Module) -> Body:
    """The FPN's view of a ResNet classifier: its four stages and their output widths."""
    stages = BODIES["resnet50"].stages
    widths = []
    for name in stages:
        convs = [m for m in getattr(classifier, name).modules() if isinstance(m, nn.Conv2d)]
        widths.append(int(convs[-1].out_channels))  # the last block's last conv
    return Body("", stages, tuple(widths))


def ground_truth(image: torch.Tensor, target: dict[str, Any]) -> dict[str, Any]:
    """One image's ground truth as COCO records: its size and its objects (XYWH boxes, area,
    crowd flag, category, and the mask as compressed RLE when the target has masks)."""
    from pycocotools import mask as mask_utils

    h, w = int(image.shape[-2]), int(image.shape[-1])
    boxes = target["boxes"].detach().cpu().to(torch.float64)
    xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).tolist()
    objects = []
    masks = target.get("masks")
    rles = []
    if masks is not None and len(masks):
        pixels = masks.detach().cpu().numpy().astype(np.uint8).transpose(1, 2, 0)  # (H, W, K)
        rles = mask_utils.encode(np.asfortranarray(pixels))
    for k, box in enumerate(xywh):
        obj: dict[str, Any] = {
            "bbox": box,
            "area": float(target["area"][k]),
            "iscrowd": int(target["iscrowd"][k]),
            "category_id": int(target["labels"][k]),
        }
        if masks is not None:
            rle = rles[k]
            obj["segmentation"] = {"size": list(rle["size"]), "counts": rle["counts"].decode()}
        objects.append(obj)
    return {"image": {"id": int(target["image_id"]), "height": h, "width": w}, "objects": objects}


def coco_index(truth: list[dict[str, Any]], num_classes: int) -> Any:
    """A pycocotools COCO of the gathered ground truth; categories 1..num_classes-1."""
    from pycocotools.coco import COCO

    annotations: list[dict[str, Any]] = []
    for t in truth:
        for obj in t["objects"]:
            annotations.append({**obj, "id": len(annotations) + 1, "image_id": t["image"]["id"]})
    gt = COCO()
    gt.dataset = {
        "images": [t["image"] for t in truth],
        "annotations": annotations,
        "categories": [{"id": c} for c in range(1, num_classes)],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    return gt


class Detection(_Detector):
    """Object detection: Faster R-CNN with FPN, scored by COCO box AP (UBN Table 5)."""

    kind = "faster_rcnn"
    scoring = _scoring(("bbox",), tuple(k for k in _LOSSES if k != "loss_mask"))


class InstanceSegmentation(_Detector):
    """Instance segmentation: Mask R-CNN with FPN, scored by COCO mask AP, with box AP beside
    it (UBN Table 6)."""

    kind = "mask_rcnn"
    scoring = _scoring(("bbox", "segm"), tuple(_LOSSES))
    # the mask head normalises each device's positive RoIs, as many as each device has: no
    # virtual devices, no statistics across ranks (normbench.engine.build.spec_refusals)
    uneven_norm_batches = True
