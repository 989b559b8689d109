"""Backbones: the registry door (`register_backbone`, `create_backbone`) and the built-ins.

Every backbone is a factory following the contract in ARCHITECTURE.md:
`fn(num_classes, norm_layer, *, in_channels=3, last_norm_layer=None, **options) -> nn.Module`.
Built-ins are listed in `BUILTIN_BACKBONES` (`normbench.models.registry`, beside the
`BACKBONES` registry), which registers them through the same call a plugin uses (entry-point
group `normbench.backbones`, or a plugin file calling `@register_backbone("name")`).

Families, one module each:
- `cifar_resnet`: CIFAR ResNet/ResNeXt in the pytorch-cifar100 layout: resnet18, resnet34,
  resnet50, resnet101, resnet152, resnext50.
- `small_resnet`: He et al.'s small CIFAR ResNets: resnet20, resnet32, resnet56.
- `vgg`: VGG with norm layers, CIFAR layout: vgg11, vgg13, vgg16, vgg19.
- `inception_v4`: Inception-v4 for 32x32 inputs: inceptionv4.
- `imagenet`: torchvision's ImageNet ResNets: imagenet_resnet18/34/50/101/152,
  imagenet_resnext50_32x4d, imagenet_res2net50.
- `convnext`: ConvNeXt-style networks for small images: convnext_atto, convnext_tiny.

Every backbone also takes `weight_standardization` (`std_conv`), applied around the factory.
"""

from __future__ import annotations

from normbench.models._common import BackboneOptionError
from normbench.models.registry import (
    BACKBONES,
    BUILTIN_BACKBONES,
    backbone_options,
    create_backbone,
    list_backbones,
    register_backbone,
)

__all__ = [
    "BACKBONES",
    "BUILTIN_BACKBONES",
    "BackboneOptionError",
    "backbone_options",
    "create_backbone",
    "list_backbones",
    "register_backbone",
]
