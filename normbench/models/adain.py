"""AdaIN's encoder-decoder (Huang & Belongie, ICCV 2017, arXiv 1703.06868, Sec. 6.1), with its
style layer taken from the variant registry (`adain`, `saadain`, or a plugin with
`conditioning = "style"`).

- **Encoder**: VGG-19 up to relu4_1, frozen (`normbench.models.vgg_encoder`: AdaIN's layout
  with `vgg_normalised.pth`, torchvision's with its ImageNet weights, or random).
- **Decoder**: the encoder mirrored (AdaIN's `decoder`): 3x3 convolutions after reflection
  padding, ReLU, nearest-neighbour 2x upsampling in place of the pools, no normalization, and
  a last convolution to 3 channels with nothing after it.
- **StyleTransferNet**: the style layer between them. `forward(content, style)` returns the
  per-sample content and style losses (`losses`): t = layer(f(c), f(s)), output g(t), as the
  official training graph (`BaseStyleNet.forward`), where the content loss's target t is not
  detached (SaAdaIN's shared affine gets gradient through it too). `stylize` is inference.

Images are float (N, 3, H, W) RGB in [0, 1]; H and W multiples of 8 give an output of the
input's size.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from normbench.models._common import (
    BackboneOptionError,
    NormLayer,
    check_positive_int,
    reject_last_norm,
)
from normbench.models.style_losses import content_loss, style_loss
from normbench.models.vgg_encoder import Encoder, conv3x3_reflect, load_encoder


def decoder(channels: int = 512) -> nn.Sequential:
    """AdaIN's decoder for relu4_1 features of `channels` (512 / width divisor): (N, C, H, W)
    -> (N, 3, 8H, 8W)."""
    c4, c3, c2, c1 = channels, channels // 2, channels // 4, channels // 8
    c3, c2, c1 = max(c3, 1), max(c2, 1), max(c1, 1)
    up = nn.Upsample(scale_factor=2, mode="nearest")
    layers: list[nn.Module] = [*conv3x3_reflect(c4, c3), nn.ReLU(), up]
    for c_in, c_out in ((c3, c3), (c3, c3), (c3, c3), (c3, c2)):
        layers += [*conv3x3_reflect(c_in, c_out), nn.ReLU()]
    layers.append(nn.Upsample(scale_factor=2, mode="nearest"))
    layers += [*conv3x3_reflect(c2, c2), nn.ReLU(), *conv3x3_reflect(c2, c1), nn.ReLU()]
    layers.append(nn.Upsample(scale_factor=2, mode="nearest"))
    layers += [*conv3x3_reflect(c1, c1), nn.ReLU(), *conv3x3_reflect(c1, 3)]
    return nn.Sequential(*layers)


class StyleLosses(NamedTuple):
    """Per-sample losses, (N,) each, unweighted."""

    content: torch.Tensor
    style: torch.Tensor


class StyleTransferNet(nn.Module):
    """Frozen encoder, style layer (`forward(x, style)`), trainable decoder (module doc)."""

    def __init__(self, encoder: Encoder, decoder: nn.Module, style_norm: nn.Module) -> None:
        super().__init__()
        self.encoder, self.style_norm, self.decoder = encoder, style_norm, decoder

    def forward(self, content: torch.Tensor, style: torch.Tensor | None = None) -> StyleLosses:
        """Per-sample losses of stylising `content` with `style` (N, 3, H, W) each; without a
        style each content image is its own (what a probe that passes inputs alone runs)."""
        style_feats = self.encoder(content if style is None else style)
        t = self.style_norm(self.encoder(content)[-1], style_feats[-1])
        output_feats = self.encoder(self.decoder(t))
        return StyleLosses(content_loss(output_feats[-1], t), style_loss(output_feats, style_feats))

    @torch.no_grad()
    def stylize(
        self, content: torch.Tensor, style: torch.Tensor, alpha: float = 1.0
    ) -> torch.Tensor:
        """The decoder's image for content and style, (N, 3, H, W); `alpha` in [0, 1] blends
        the target with the content features (AdaIN's content-style trade-off)."""
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")
        feat = self.encoder(content)[-1]
        t = self.style_norm(feat, self.encoder(style)[-1])
        return self.decoder(alpha * t + (1 - alpha) * feat)


def adain_vgg19(
    num_classes: int,
    norm_layer: NormLayer,
    *,
    in_channels: int = 3,
    last_norm_layer: NormLayer | None = None,
    encoder_weights: str = "vgg_normalised",
    encoder_path: str = "",
    width_divisor: int = 1,
) -> StyleTransferNet:
    """AdaIN's network as a backbone (`normbench.contract.BackboneFactory`): its one norm slot
    is the style layer, `norm_layer(C)` called as forward(x, style) (`norm_conditioning =
    "style"`: the registry gives only style-conditioned variants to it). `num_classes` is
    unused (the network outputs images); RGB input only. `encoder_weights`, `encoder_path`
    (empty: torch's hub cache) and `width_divisor` choose the encoder
    (`normbench.models.vgg_encoder.load_encoder`). Raises ValueError for another input width
    or a `last_norm_layer` (no residual blocks), `EncoderWeightsNotFound` for a missing file."""
    if in_channels != 3:
        raise BackboneOptionError(
            f"backbone 'adain_vgg19' takes RGB images, got {in_channels} channels"
        )
    reject_last_norm("adain_vgg19", last_norm_layer)
    check_positive_int("adain_vgg19", "width_divisor", width_divisor)
    encoder = load_encoder(encoder_weights, encoder_path or None, width_divisor=width_divisor)
    width = encoder.channels[-1]
    return StyleTransferNet(encoder, decoder(width), norm_layer(width))


adain_vgg19.norm_conditioning = "style"  # type: ignore[attr-defined]
FACTORIES = {"adain_vgg19": adain_vgg19}
