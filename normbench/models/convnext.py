"""ConvNeXt-style backbones for small images (Liu, Mao, Wu, Feichtenhofer, Darrell & Xie, "A
ConvNet for the 2020s", CVPR 2022, arXiv 2201.03545), in timm's `conv_mlp` layout: 1x1
convolutions instead of linear layers, so every norm sees (N, C, H, W) maps and any norm layer
fits each of ConvNeXt's LayerNorm positions (docs/variants.md#convnext).

Layout: patchify stem (conv k = s = `patch_size`, then norm); four stages of `depths` blocks at
`dims` channels, each stage after the first opening with norm + 2x2 conv of stride 2; global
average pooling, LayerNorm, linear. With `patch_size=4` and LN2d it is timm's
`convnext_*(conv_mlp=True)` (tests/models/test_convnext.py). Block (inverted bottleneck):

    x + drop_path(γ_ls ⊙ conv1x1(GELU(conv1x1(norm(dwconv7x7(x))))))      (4x expansion)

`norm_layer` goes where ConvNeXt has a LayerNorm over channels (stem, stage transitions,
blocks); `last_norm_layer`, when given, replaces the norm of each block (its only one). Our
choices [ours]:

* `patch_size=2` (ConvNeXt: 4, for 224 px): 32x32 images give stages of 16/8/4/2 pixels; 1
  keeps 16x16 digits at 16/8/4/2.
* The head's norm, over the pooled C-vector, stays `nn.LayerNorm` for every layer compared:
  a norm of a 1x1 map is another function (IN refuses it, FRN turns into sign(x)), and the
  head is the classifier's, as the fc of a ResNet.
* The stage transitions are named `downsampling`, not `downsample`: they are not shortcuts, so
  the "except-shortcut" placement does not touch them.
* Init as ConvNeXt: truncated normal (std 0.02) conv and linear weights, zero biases, layer
  scale γ_ls = `layer_scale_init` (1e-6); stochastic depth rising linearly to
  `drop_path_rate` over the blocks (torchvision's `stochastic_depth`, per sample).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torchvision.ops import stochastic_depth

from normbench.models._common import (
    BackboneOptionError,
    NormLayer,
    check_bool,
    check_positive_int,
    zero_norm_weight,
)


class ConvNeXtBlock(nn.Module):
    """dwconv7x7 - norm - 1x1 (4x) - GELU - 1x1, layer scale, stochastic depth, residual."""

    def __init__(
        self, dim: int, norm_layer: NormLayer, *, drop_path: float, layer_scale_init: float
    ) -> None:
        super().__init__()
        self.conv_dw = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = norm_layer(dim)
        self.pwconv1 = nn.Conv2d(dim, 4 * dim, 1)
        self.act = nn.GELU()
        self.pwconv2 = nn.Conv2d(4 * dim, dim, 1)
        self.layer_scale = (
            nn.Parameter(torch.full((dim,), layer_scale_init)) if layer_scale_init > 0 else None
        )
        self.drop_path = drop_path

    @property
    def last_norm(self) -> nn.Module:
        return self.norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.pwconv2(self.act(self.pwconv1(self.norm(self.conv_dw(x)))))
        if self.layer_scale is not None:
            out = out * self.layer_scale.reshape(1, -1, 1, 1)
        return x + stochastic_depth(out, self.drop_path, "row", self.training)


class ConvNeXtStage(nn.Module):
    """Optional transition (norm + 2x2 conv of stride 2: (N, C_in, H, W) -> (N, C, H/2, W/2)),
    then `depth` blocks at C channels."""

    def __init__(
        self,
        c_in: int,
        dim: int,
        rates: list[float],
        norm_layer: NormLayer,
        block_norm: NormLayer,
        layer_scale_init: float,
    ) -> None:
        super().__init__()
        self.downsampling = (
            nn.Sequential(norm_layer(c_in), nn.Conv2d(c_in, dim, 2, stride=2))
            if c_in != dim
            else nn.Identity()
        )
        self.blocks = nn.Sequential(
            *(
                ConvNeXtBlock(dim, block_norm, drop_path=r, layer_scale_init=layer_scale_init)
                for r in rates
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.downsampling(x))


class ConvNeXt(nn.Module):
    def __init__(
        self,
        depths: tuple[int, ...],
        dims: tuple[int, ...],
        num_classes: int,
        norm_layer: NormLayer,
        *,
        in_channels: int = 3,
        last_norm_layer: NormLayer | None = None,
        patch_size: int = 2,
        drop_path_rate: float = 0.0,
        layer_scale_init: float = 1e-6,
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        self.stem = nn.Sequential(  # (N, in, H, W) -> (N, dims[0], H/p, W/p)
            nn.Conv2d(in_channels, dims[0], patch_size, stride=patch_size), norm_layer(dims[0])
        )
        blocks = sum(depths)  # stochastic depth rising linearly from 0 (first) to the rate (last)
        rates = [drop_path_rate * i / max(blocks - 1, 1) for i in range(blocks)]
        stages, c_in = [], dims[0]
        for depth, dim in zip(depths, dims, strict=True):
            stage_rates, rates = rates[:depth], rates[depth:]
            block_norm = last_norm_layer or norm_layer
            stages.append(
                ConvNeXtStage(c_in, dim, stage_rates, norm_layer, block_norm, layer_scale_init)
            )
            c_in = dim
        self.stages = nn.Sequential(*stages)
        self.head_norm = nn.LayerNorm(dims[-1], eps=1e-6)
        self.fc = nn.Linear(dims[-1], num_classes)
        self._init_weights()
        if zero_init_residual:  # as the ResNets': each block's (only) norm starts at γ = 0
            for m in self.modules():
                if isinstance(m, ConvNeXtBlock):
                    zero_norm_weight(m.last_norm)

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(x))
        return self.fc(self.head_norm(x.mean(dim=(2, 3))))  # (N, C, H, W) -> (N, C)


def _factory(name: str, depths: tuple[int, ...], dims: tuple[int, ...], params: str) -> Callable:
    """A registry factory for one ConvNeXt size, following the backbone factory contract."""

    def build(
        num_classes: int,
        norm_layer: NormLayer,
        *,
        in_channels: int = 3,
        last_norm_layer: NormLayer | None = None,
        patch_size: int = 2,
        drop_path_rate: float = 0.0,
        layer_scale_init: float = 1e-6,
        zero_init_residual: bool = False,
    ) -> nn.Module:
        check_positive_int(name, "patch_size", patch_size)
        for option, value in (("drop_path_rate", drop_path_rate),
                              ("layer_scale_init", layer_scale_init)):  # fmt: skip
            if (
                not isinstance(value, int | float)
                or isinstance(value, bool)
                or not (0.0 <= value < 1.0)
            ):
                raise BackboneOptionError(
                    f"backbone {name!r}: option {option!r} must be a number in [0, 1), "
                    f"but got {value!r}"
                )
        return ConvNeXt(
            depths,
            dims,
            num_classes,
            norm_layer,
            in_channels=in_channels,
            last_norm_layer=last_norm_layer,
            patch_size=patch_size,
            drop_path_rate=float(drop_path_rate),
            layer_scale_init=float(layer_scale_init),
            zero_init_residual=check_bool(name, "zero_init_residual", zero_init_residual),
        )

    build.__name__ = build.__qualname__ = name
    build.__doc__ = (
        f"ConvNeXt {name.split('_')[1]} for small images: depths {depths}, dims {dims}; "
        f"{params} parameters with LN2d, 100 classes."
    )
    return build


convnext_atto = _factory("convnext_atto", (2, 2, 6, 2), (40, 80, 160, 320), "?")
convnext_tiny = _factory("convnext_tiny", (3, 3, 9, 3), (96, 192, 384, 768), "?")

FACTORIES = {"convnext_atto": convnext_atto, "convnext_tiny": convnext_tiny}
