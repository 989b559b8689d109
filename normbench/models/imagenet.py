"""ImageNet-size ResNets and ResNeXt-50 (32x4d) from torchvision, with any norm layer.

torchvision's ResNet takes `norm_layer`, but its init loop sets `weight = 1, bias = 0` on
every BatchNorm2d/GroupNorm, which breaks a subclass whose weight is None and overrides a
variant's own init. So the model is built with a placeholder norm that the loop ignores, and
each placeholder is then swapped for the real layer (the last norm of each block, `bn2` in a
BasicBlock and `bn3` in a Bottleneck, for `last_norm_layer` when given). Parameter counts with
BN and 1000 classes are torchvision's: 11.69M, 21.80M, 25.56M, 44.55M, 60.19M, 25.03M.

Normalization-activation layers (EvoNorm-B0/S0, FRN with TLU; `is_norm_activation`) replace a
norm and the ReLU after it, so with one the ReLU after `bn1` (and `bn2` in a Bottleneck) and
the stem's are left out. torchvision's blocks call one shared `self.relu` module after their
norms and after the residual sum, so no module can be swapped; the blocks are instead
torchvision's classes with a forward that skips `self.relu` after such a norm and keeps it after
the sum, which follows no norm (`normbench.models.torchvision_blocks`). With any other norm the
model is torchvision's: same modules, same state_dict, same output
(tests/models/test_norm_activation_backbones.py checks it against torchvision's own).

`in_channels != 3` replaces the 7x7 stem conv by one with that many input channels.
Pretrained weights are never loaded: the benchmark trains every normalization from scratch.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from normbench.models._common import (
    NO_RELU_AFTER_NORM_ACTIVATION,
    NormLayer,
    activation_after,
    check_bool,
    zero_norm_weight,
)


class _Placeholder(nn.Module):
    """Stands in for a norm layer while torchvision builds the model; replaced right after."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - always replaced
        raise RuntimeError("normbench placeholder norm was not replaced")


def _last_norm_names(model: nn.Module) -> set[str]:
    """Qualified names of the last norm in each residual branch."""
    from torchvision.models.resnet import BasicBlock, Bottleneck

    names = set()
    for name, m in model.named_modules():
        if isinstance(m, Bottleneck):
            names.add(f"{name}.bn3")
        elif isinstance(m, BasicBlock):
            names.add(f"{name}.bn2")
    return names


def _swap_norms(model: nn.Module, norm_layer: NormLayer, last_norm_layer: NormLayer) -> None:
    last = _last_norm_names(model)
    for name, m in list(model.named_modules()):
        if isinstance(m, _Placeholder):
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name)
            make = last_norm_layer if name in last else norm_layer
            parent._modules[child] = make(m.num_features)


def _factory(arch: str) -> Callable[..., nn.Module]:
    """A registry factory for `torchvision.models.<arch>`, per the backbone factory contract."""
    name = f"imagenet_{arch}"

    def build(
        num_classes: int,
        norm_layer: NormLayer,
        *,
        in_channels: int = 3,
        last_norm_layer: NormLayer | None = None,
        zero_init_residual: bool = False,
    ) -> nn.Module:
        from torchvision.models.resnet import ResNet  # lazy: torchvision is slow to import

        from normbench.models.torchvision_blocks import LAYOUTS

        zero_init = check_bool(name, "zero_init_residual", zero_init_residual)
        block, layers, groups, width = LAYOUTS[arch]
        model = ResNet(
            block,  # type: ignore[arg-type]
            layers,
            num_classes=num_classes,
            groups=groups,
            width_per_group=width,
            norm_layer=_Placeholder,
        )
        _swap_norms(model, norm_layer, last_norm_layer or norm_layer)
        model.relu = activation_after(model.bn1)  # the stem's, used only there
        if in_channels != 3:
            model.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
            nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
        if zero_init:
            for last in _last_norm_names(model):
                zero_norm_weight(model.get_submodule(last))
        return model

    build.__name__ = build.__qualname__ = name
    build.__doc__ = f"torchvision's {arch} (224x224 ImageNet layout) with any norm layer."
    return build


ARCHS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d")
FACTORIES = {  # revision 2: why in models/_common.py
    f"imagenet_{arch}": NO_RELU_AFTER_NORM_ACTIVATION(_factory(arch)) for arch in ARCHS
}
