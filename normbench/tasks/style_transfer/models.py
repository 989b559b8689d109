"""AdaIN's encoder-decoder (Huang & Belongie, ICCV 2017, arXiv 1703.06868, Sec. 6.1), with its
style layer taken from the variant registry (`adain`, `saadain`, or a plugin with
`conditioning = "style"`).

- **Encoder**: VGG-19 up to relu4_1, frozen; it returns the features at relu1_1, relu2_1,
  relu3_1 and relu4_1. `adain_encoder` is the layout of AdaIN's VGG (the official codes' `vgg`:
  a fixed 1x1 convolution first, the weights' own input transform, then 3x3 convolutions after
  reflection padding and 2x2 max pools in ceil mode), whose module indices match the
  `vgg_normalised.pth` file AdaIN and SaBN train with. `torchvision_encoder` is torchvision's
  VGG-19 `features[:21]` (zero padding, as its ImageNet weights were trained) behind the
  ImageNet normalisation. `width_divisor` divides every width (a small encoder of the same
  structure for tests and smoke runs).
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

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import nn

from normbench.tasks.style_transfer.losses import content_loss, style_loss

# VGG-19 to relu4_1 by stage: each stage ends at relu{k}_1; "M" is a 2x2 max pool.
STAGES: tuple[tuple[int | str, ...], ...] = (
    (64,),
    (64, "M", 128),
    (128, "M", 256),
    (256, 256, 256, "M", 512),
)
FEATURES = ("relu1_1", "relu2_1", "relu3_1", "relu4_1")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _width(c: int, divisor: int) -> int:
    return max(c // divisor, 1)


def _conv3x3(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.ReflectionPad2d(1), nn.Conv2d(c_in, c_out, 3)]


class Encoder(nn.Module):
    """Frozen stages; forward(x) gives the features at the end of each, [relu1_1 ... relu4_1].
    `channels` lists their widths."""

    def __init__(self, stages: Sequence[nn.Module], channels: Sequence[int]) -> None:
        super().__init__()
        self.stages = nn.ModuleList(stages)
        self.channels = tuple(channels)
        self.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features


def adain_encoder(width_divisor: int = 1) -> Encoder:
    """AdaIN's VGG-19 to relu4_1, randomly initialised (load weights with
    `weights.load_vgg_normalised`). Its stages hold the official `vgg`'s modules 0-3, 4-10,
    11-17 and 18-30, so `flat_encoder_modules` indexes them as the weight file does."""
    stages: list[nn.Module] = []
    c_in, channels = 3, []
    first: list[nn.Module] = [nn.Conv2d(3, 3, 1)]
    for layout in STAGES:
        layers: list[nn.Module] = first
        first = []
        for item in layout:
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2, ceil_mode=True))
                continue
            c_out = _width(int(item), width_divisor)
            layers += [*_conv3x3(c_in, c_out), nn.ReLU()]
            c_in = c_out
        stages.append(nn.Sequential(*layers))
        channels.append(c_in)
    return Encoder(stages, channels)


def flat_encoder_modules(encoder: Encoder) -> list[nn.Module]:
    """The encoder's modules in order, indexed as the official `nn.Sequential` `vgg`."""
    return [m for stage in encoder.stages for m in stage.children()]


def torchvision_encoder(state_dict: dict[str, torch.Tensor] | None = None) -> Encoder:
    """torchvision's VGG-19 `features[:21]` (built by torchvision's `make_layers`, config "E",
    without the classifier's 120M parameters) split at relu1_1 ... relu4_1, behind a fixed 1x1
    convolution that applies the ImageNet normalisation its weights expect. `state_dict`: a
    torchvision VGG-19 state dict (its `features.<i>.*` keys for i < 21 are loaded; the rest is
    ignored), else random weights. Raises KeyError/RuntimeError for a mismatching dict."""
    from torchvision.models.vgg import cfgs, make_layers

    features = make_layers(cfgs["E"], batch_norm=False)[:21]
    if state_dict is not None:
        prefix = "features."
        own = {k: state_dict[prefix + k] for k in features.state_dict()}
        features.load_state_dict(own)
    normalise = nn.Conv2d(3, 3, 1)
    std = torch.tensor(IMAGENET_STD)
    normalise.weight = nn.Parameter(torch.diag(1.0 / std).reshape(3, 3, 1, 1))
    normalise.bias = nn.Parameter(-torch.tensor(IMAGENET_MEAN) / std)
    f = features
    stages = [nn.Sequential(normalise, *f[0:2]), f[2:7], f[7:12], f[12:21]]
    return Encoder(stages, (64, 128, 256, 512))


def decoder(channels: int = 512) -> nn.Sequential:
    """AdaIN's decoder for relu4_1 features of `channels` (512 / width divisor): (N, C, H, W)
    -> (N, 3, 8H, 8W)."""
    c4, c3, c2, c1 = channels, channels // 2, channels // 4, channels // 8
    c3, c2, c1 = max(c3, 1), max(c2, 1), max(c1, 1)
    up = nn.Upsample(scale_factor=2, mode="nearest")
    layers: list[nn.Module] = [*_conv3x3(c4, c3), nn.ReLU(), up]
    for c_in, c_out in ((c3, c3), (c3, c3), (c3, c3), (c3, c2)):
        layers += [*_conv3x3(c_in, c_out), nn.ReLU()]
    layers.append(nn.Upsample(scale_factor=2, mode="nearest"))
    layers += [*_conv3x3(c2, c2), nn.ReLU(), *_conv3x3(c2, c1), nn.ReLU()]
    layers.append(nn.Upsample(scale_factor=2, mode="nearest"))
    layers += [*_conv3x3(c1, c1), nn.ReLU(), *_conv3x3(c1, 3)]
    return nn.Sequential(*layers)


class StyleLosses(NamedTuple):
    """Per-sample losses, (N,) each, unweighted."""

    content: torch.Tensor
    style: torch.Tensor


class StyleTransferNet(nn.Module):
    """Frozen encoder, style layer (`forward(x, style)`), trainable decoder (module doc)."""

    def __init__(self, encoder: Encoder, decoder: nn.Module, style_norm: nn.Module) -> None:
        super().__init__()
        if getattr(style_norm, "conditioning", None) != "style":
            raise ValueError(
                f"the style layer must take the style features (conditioning = 'style'), got "
                f"{type(style_norm).__name__}"
            )
        self.encoder, self.style_norm, self.decoder = encoder, style_norm, decoder

    def forward(self, content: torch.Tensor, style: torch.Tensor) -> StyleLosses:
        style_feats = self.encoder(style)
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
