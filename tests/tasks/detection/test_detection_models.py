"""Faster R-CNN and Mask R-CNN with FPN carry the given norm layer in every norm slot of the
backbone, the FPN and the heads (none of torchvision's hard-coded BatchNorm2d is left), build
ResNet-50/101 bodies without downloading anything, and train and predict as torchvision's
detectors do."""

from __future__ import annotations

import functools
from collections import Counter

import pytest
import torch
from torch import nn

from normbench.tasks.detection.models import BODIES, build_detector, small_layout
from normbench.variants_api import norm_layer

# Norm slots counted from the architectures: a ResNet body has the stem's norm, 2 (BasicBlock)
# or 3 (Bottleneck) per block and one per downsampling shortcut (stages 2-4, and stage 1 of a
# Bottleneck net); the v2 FPN one after each of its 4 lateral and 4 output convs; the box head
# one after each of its 4 convs, the mask head likewise.
BODY_NORMS = {
    "resnet18": 1 + 2 * 8 + 3,
    "resnet50": 1 + 3 * 16 + 4,
    "resnet101": 1 + 3 * 33 + 4,
}
PARTS = {"backbone.body": None, "backbone.fpn": 8, "roi_heads.box_head": 4}


class Marked(nn.GroupNorm):
    """A norm layer the test can find: GroupNorm(1, C) that records its width."""

    def __init__(self, num_features: int, widths: list[int]) -> None:
        super().__init__(1, num_features)
        widths.append(num_features)


def where(model: nn.Module, cls: type) -> Counter:
    """How many `cls` modules sit in each part of the detector."""
    found: Counter = Counter()
    for name, module in model.named_modules():
        if isinstance(module, cls):
            found[".".join(name.split(".")[:2])] += 1
    return found


@pytest.mark.parametrize(
    ("kind", "backbone"),
    [("faster_rcnn", "resnet50"), ("mask_rcnn", "resnet101"), ("mask_rcnn", "resnet18")],
)
def test_the_norm_layer_fills_every_norm_slot(
    kind: str, backbone: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_download(*args: object, **kwargs: object) -> None:
        raise AssertionError("a pretrained weight was requested")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    widths: list[int] = []
    with torch.device("meta"):  # the architecture without its memory
        model = build_detector(kind, backbone, 91, functools.partial(Marked, widths=widths))
    expected = {**PARTS, "backbone.body": BODY_NORMS[backbone]}
    if kind == "mask_rcnn":
        expected["roi_heads.mask_head"] = 4
    assert where(model, Marked) == Counter(expected)
    batch_norms = (nn.modules.batchnorm._NormBase,)
    from torchvision.ops import FrozenBatchNorm2d

    assert not where(model, batch_norms) and not where(model, FrozenBatchNorm2d)
    assert sorted(set(widths))[-1] == (512 if backbone == "resnet18" else 2048)
    assert widths.count(256) >= 8 + 4  # FPN and heads at torchvision's width
    assert model.roi_heads.box_predictor.cls_score.out_features == 91


def test_a_small_detector_trains_and_predicts() -> None:
    torch.manual_seed(0)
    model = build_detector(
        "mask_rcnn",
        "resnet18",
        11,
        norm_layer("gn", num_groups=8),
        layout=small_layout(48, width=32),
        box_detections_per_img=10,  # torchvision's own option, passed through
    )
    images = [torch.rand(3, 48, 48) for _ in range(2)]
    masks = torch.zeros(2, 48, 48, dtype=torch.uint8)
    masks[0, 5:20, 5:15], masks[1, 25:45, 20:40] = 1, 1
    targets = [
        {"boxes": torch.tensor([[5.0, 5.0, 15.0, 20.0]]), "labels": torch.tensor([3]),
         "masks": masks[:1]},
        {"boxes": torch.tensor([[20.0, 25.0, 40.0, 45.0]]), "labels": torch.tensor([10]),
         "masks": masks[1:]},
    ]  # fmt: skip
    losses = model(images, targets)
    assert set(losses) == {
        "loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"
    }  # fmt: skip
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    model.eval()
    with torch.no_grad():
        out = model(images)
    assert len(out) == 2 and set(out[0]) == {"boxes", "labels", "scores", "masks"}
    assert out[0]["masks"].shape[1:] == (1, 48, 48)  # pasted back at the image's size
    assert len(out[0]["boxes"]) <= 10


def test_unknown_names_are_refused() -> None:
    with pytest.raises(ValueError, match="choices: imagenet_resnet18, imagenet_resnet34, "):
        build_detector("faster_rcnn", "vgg16", 11, nn.BatchNorm2d)
    with pytest.raises(ValueError, match="kind must be"):
        build_detector("retinanet", "resnet18", 11, nn.BatchNorm2d)  # type: ignore[arg-type]
    assert set(BODIES) == {"resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
                           "resnext50"}  # fmt: skip


@pytest.mark.parametrize(
    ("task", "options", "width"),
    [("detection", {"layout": "small", "width": 24}, 24),
     ("instance_segmentation", {"layout": "small", "width": 40}, 40),
     ("instance_segmentation", {}, 256)],
)  # fmt: skip
def test_the_tasks_declared_norm_widths_are_those_it_builds(
    task: str, options: dict, width: int
) -> None:
    """`norm_widths()` (what suite validation checks a variant's options at, besides the
    backbone's widths) names every width the task gives `ctx.norm_layer` in FPN and heads."""
    from normbench.models import create_backbone
    from normbench.spec import Recipe
    from normbench.tasks import ModelContext, create_task

    made = create_task(task, options)
    own: list[int] = []
    ctx = ModelContext(
        backbone=lambda n, *, in_channels: create_backbone(
            "imagenet_resnet18", n, nn.BatchNorm2d, in_channels=in_channels
        ),
        norm_layer=functools.partial(Marked, widths=own),
        num_classes=4, in_channels=3, image_size=40, recipe=Recipe(), device=torch.device("meta"),
    )  # fmt: skip
    with torch.device("meta"):
        made.build_model(ctx)
    (declared,) = made.norm_widths().values()
    assert set(own) == declared == {width}
