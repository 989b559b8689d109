"""torchvision's ResNet blocks that put no ReLU after a normalization-activation layer.

torchvision's BasicBlock and Bottleneck call one `self.relu` module after `bn1` (and `bn2`) and
after the residual sum. A normalization-activation layer (EvoNorm-B0/S0, FRN with TLU:
`is_norm_activation`) replaces a norm and the ReLU after it, so these subclasses skip the ReLU
after such a norm and keep it after the sum, which follows no norm (the post-activation net's
own ReLU, kept in every normbench ResNet). With any other norm their forward is torchvision's,
step for step. Imported only when an ImageNet ResNet is built (torchvision is slow to import).
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from normbench.variants_api import is_norm_activation


class NormActBasicBlock(BasicBlock):
    """torchvision's BasicBlock, without the ReLU after a normalization-activation `bn1`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = _act(self, self.bn1(self.conv1(x)), self.bn1)
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)  # after the sum: not after a norm, always kept


class NormActBottleneck(Bottleneck):
    """torchvision's Bottleneck, without the ReLU after a normalization-activation `bn1`,
    `bn2`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = _act(self, self.bn1(self.conv1(x)), self.bn1)
        out = _act(self, self.bn2(self.conv2(out)), self.bn2)
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)  # after the sum: not after a norm, always kept


def _act(block: BasicBlock | Bottleneck, out: torch.Tensor, norm: nn.Module) -> torch.Tensor:
    """The block's ReLU on `norm`'s output `out`, unless `norm` is a normalization-activation
    layer (decided when the graph is built: a static branch for torch.fx and torch.compile)."""
    return out if is_norm_activation(norm) else block.relu(out)


# torchvision's builders: block, blocks per stage, groups, width per group (He et al. 2016
# Table 1; ResNeXt-50 32x4d: Xie et al. 2017)
LAYOUTS: dict[str, tuple[type[nn.Module], list[int], int, int]] = {
    "resnet18": (NormActBasicBlock, [2, 2, 2, 2], 1, 64),
    "resnet34": (NormActBasicBlock, [3, 4, 6, 3], 1, 64),
    "resnet50": (NormActBottleneck, [3, 4, 6, 3], 1, 64),
    "resnet101": (NormActBottleneck, [3, 4, 23, 3], 1, 64),
    "resnet152": (NormActBottleneck, [3, 8, 36, 3], 1, 64),
    "resnext50_32x4d": (NormActBottleneck, [3, 4, 6, 3], 32, 4),
}
