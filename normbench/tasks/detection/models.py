"""Faster R-CNN and Mask R-CNN with FPN (torchvision), a given `norm_layer(C)` everywhere the
architecture has a norm: backbone, FPN and heads.

The layout is torchvision's v2 models (`fasterrcnn_resnet50_fpn_v2`, `maskrcnn_resnet50_fpn_v2`;
Li et al., "Benchmarking Detection Transfer Learning with Vision Transformers", arXiv
2111.11429), which put a norm after every FPN conv, in a box head of four 3x3 convs + one fc
layer, and in a mask head of four 3x3 convs; the RPN head has two convs and no norm, as there.
Where those builders hard-code `nn.BatchNorm2d` (and build the ResNet with it), this builds the
same parts from torchvision's public classes with `norm_layer`, the way mmdetection's
`norm_cfg` or detectron2's `get_norm` pick one norm for a whole detector. The backbone is a
normbench classification backbone factory (`imagenet_resnet50`, ...) built with `norm_layer`;
the FPN reads its stages (its classifier head is never run). No pretrained weights are loaded.

Normalization-activation layers (EvoNorm-B0/S0, FRN with TLU) replace a norm and the ReLU after
it: the body (an ImageNet ResNet, normbench.models.imagenet) leaves its ReLUs out after them,
and so do the box and mask heads, whose convs are torchvision's `Conv2dNormActivation` (conv,
norm, ReLU; `without_activation_after_norm_activation`). The FPN's convs have no activation.

`torchvision_v2_layout()` is the v2 models' sizes (FPN and head width 256, fc 1024, anchors
32-512 px, images resized to 800-1333 px), for COCO; `small_layout(image_size)` is a CPU-size
detector for the `digits_coco` canvases (width 64, fc 256, anchors 8-128 px, no resize).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from torch import nn

from normbench.variants_api import is_norm_activation

NormLayer = Callable[[int], nn.Module]
Kind = Literal["faster_rcnn", "mask_rcnn"]


@dataclass(frozen=True)
class Body:
    """A classification backbone as a detector's body: the registered factory, the child
    modules whose outputs feed the FPN (strides 4, 8, 16, 32) and their channel counts."""

    factory: str
    stages: tuple[str, ...]
    channels: tuple[int, ...]


_RESNET_STAGES = ("layer1", "layer2", "layer3", "layer4")
_WIDE = (256, 512, 1024, 2048)  # Bottleneck stages
BODIES: dict[str, Body] = {
    "resnet18": Body("imagenet_resnet18", _RESNET_STAGES, (64, 128, 256, 512)),
    "resnet34": Body("imagenet_resnet34", _RESNET_STAGES, (64, 128, 256, 512)),
    "resnet50": Body("imagenet_resnet50", _RESNET_STAGES, _WIDE),
    "resnet101": Body("imagenet_resnet101", _RESNET_STAGES, _WIDE),
    "resnet152": Body("imagenet_resnet152", _RESNET_STAGES, _WIDE),
    "resnext50": Body("imagenet_resnext50_32x4d", _RESNET_STAGES, _WIDE),
}


@dataclass(frozen=True)
class Layout:
    """The detector's sizes: FPN and conv-head `width`, box-head `fc_width`, one anchor size
    per FPN level (px, aspect ratios 0.5, 1, 2), torchvision's resize bounds (px), and the
    sampled anchors / RoIs per image for the losses, and the proposals per image the RPN
    keeps (training, evaluation; before and after its NMS)."""

    width: int = 256
    fc_width: int = 1024
    anchor_sizes: tuple[int, ...] = (32, 64, 128, 256, 512)
    min_size: int = 800
    max_size: int = 1333
    rpn_batch_size_per_image: int = 256
    box_batch_size_per_image: int = 512
    proposals: tuple[int, int] = (2000, 1000)


def torchvision_v2_layout() -> Layout:
    """The sizes of torchvision's v2 Faster/Mask R-CNN (the COCO setting of UBN Tables 5-6)."""
    return Layout()


def small_layout(image_size: int, width: int = 64) -> Layout:
    """A detector that trains on `digits_coco` canvases on a CPU in minutes; `width` is
    the FPN and conv heads' (the box head's cost grows with its square, per RoI)."""
    return Layout(
        width=width,
        fc_width=4 * width,
        anchor_sizes=(8, 16, 32, 64, 128),
        min_size=image_size,
        max_size=image_size,
        rpn_batch_size_per_image=128,
        box_batch_size_per_image=32,  # the conv box head's cost is per RoI
        proposals=(300, 50),  # a canvas holds at most a few digits
    )


def build_detector(
    kind: Kind,
    backbone: str,
    num_classes: int,
    norm_layer: NormLayer,
    *,
    layout: Layout | None = None,
    **options: Any,
) -> nn.Module:
    """Faster R-CNN (`kind="faster_rcnn"`) or Mask R-CNN (`"mask_rcnn"`) with FPN on the
    `backbone` body (`BODIES`), `norm_layer(C)` in every norm slot of body, FPN, box head and
    mask head. `num_classes` counts the background (COCO: 91). `options` go to torchvision's
    `FasterRCNN`/`MaskRCNN` (e.g. `box_detections_per_img`)."""
    from normbench.models import create_backbone

    body = body_of(backbone)
    classifier = create_backbone(body.factory, 1, norm_layer)  # its fc is never run
    return detector(kind, classifier, body, num_classes, norm_layer, layout=layout, **options)


def body_of(backbone: str) -> Body:
    """The body of a detection backbone name (`resnet50`) or its classification factory's
    (`imagenet_resnet50`); ValueError naming the choices."""
    for name, body in BODIES.items():
        if backbone in (name, body.factory):
            return body
    choices = ", ".join(b.factory for b in BODIES.values())
    raise ValueError(f"unknown detection backbone {backbone!r}; choices: {choices}")


def detector(
    kind: Kind,
    classifier: nn.Module,
    body: Body,
    num_classes: int,
    norm_layer: NormLayer,
    *,
    layout: Layout | None = None,
    **options: Any,
) -> nn.Module:
    """The detector of `build_detector` on a classifier already built with the norm layer
    (a task's `ctx.backbone(...)`): its `body.stages` feed the FPN."""
    from torchvision.models.detection import FasterRCNN, MaskRCNN
    from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead, FastRCNNPredictor
    from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
    from torchvision.models.detection.rpn import AnchorGenerator, RPNHead

    if kind not in ("faster_rcnn", "mask_rcnn"):
        raise ValueError(f"kind must be 'faster_rcnn' or 'mask_rcnn', but got {kind!r}")
    lay = layout or torchvision_v2_layout()
    w = lay.width
    anchors = AnchorGenerator(
        tuple((s,) for s in lay.anchor_sizes), ((0.5, 1.0, 2.0),) * len(lay.anchor_sizes)
    )
    parts: dict[str, Any] = {
        "rpn_anchor_generator": anchors,
        "rpn_head": RPNHead(w, anchors.num_anchors_per_location()[0], conv_depth=2),
        "box_head": FastRCNNConvFCHead((w, 7, 7), [w] * 4, [lay.fc_width], norm_layer=norm_layer),
        # given, not left to torchvision, whose default assumes fc width 1024
        "box_predictor": FastRCNNPredictor(lay.fc_width, num_classes),
        "min_size": lay.min_size,
        "max_size": lay.max_size,
        "rpn_batch_size_per_image": lay.rpn_batch_size_per_image,
        "box_batch_size_per_image": lay.box_batch_size_per_image,
        **{
            f"rpn_{when}_nms_top_n_{phase}": n
            for when in ("pre", "post")
            for phase, n in zip(("train", "test"), lay.proposals, strict=True)
        },  # fmt: skip
        **options,
    }
    fpn = fpn_body(classifier, body, norm_layer, w)
    if kind == "faster_rcnn":
        return without_activation_after_norm_activation(FasterRCNN(fpn, **parts))
    mask_head = MaskRCNNHeads(w, [w] * 4, 1, norm_layer=norm_layer)
    # the predictor's transposed conv keeps the head's width (torchvision: 256 -> 256)
    model = MaskRCNN(
        fpn, mask_head=mask_head, mask_predictor=MaskRCNNPredictor(w, w, num_classes), **parts
    )
    return without_activation_after_norm_activation(model)


def without_activation_after_norm_activation(model: nn.Module) -> nn.Module:
    """`model` with the activation of each torchvision `Conv2dNormActivation` (a Sequential
    conv, norm, activation) whose norm is a normalization-activation layer replaced by
    `nn.Identity` (`is_norm_activation`); in place, returned. Blocks with any other norm, or
    without an activation (the FPN's), are left as they are."""
    from torchvision.ops.misc import Conv2dNormActivation

    for m in model.modules():
        if isinstance(m, Conv2dNormActivation) and len(m) == 3 and is_norm_activation(m[1]):
            m[2] = nn.Identity()
    return model


def fpn_body(classifier: nn.Module, body: Body, norm_layer: NormLayer, width: int) -> nn.Module:
    """The classifier's stages (`body`) feeding an FPN of `width` channels with a norm after
    every conv (+ a max-pooled level)."""
    from torchvision.models.detection.backbone_utils import BackboneWithFPN
    from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

    return BackboneWithFPN(
        classifier,
        return_layers={stage: str(i) for i, stage in enumerate(body.stages)},
        in_channels_list=list(body.channels),
        out_channels=width,
        extra_blocks=LastLevelMaxPool(),
        norm_layer=norm_layer,
    )
