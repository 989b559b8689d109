"""AdaIN's VGG-19 encoder to relu4_1, frozen, and its weights: from a given file or torch's hub
cache, never downloaded.

Structures (each an `Encoder` returning the features at relu1_1, relu2_1, relu3_1, relu4_1):

- `adain_encoder`: the layout of AdaIN's VGG (the official codes' `vgg`: a fixed 1x1
  convolution first, the weights' own input transform, then 3x3 convolutions after reflection
  padding and 2x2 max pools in ceil mode), whose module indices match the `vgg_normalised.pth`
  file AdaIN and SaBN train with. `width_divisor` divides every width (a small encoder of the
  same structure for tests and smoke runs).
- `torchvision_encoder`: torchvision's VGG-19 `features[:21]` (zero padding, as its ImageNet
  weights were trained) behind the ImageNet normalisation.

`encoder_weights` names the source:

- `"vgg_normalised"` (the default, what AdaIN and SaBN train with): `vgg_normalised.pth`,
  the "normalised" VGG-19 of Gatys et al. converted from the Torch AdaIN release (pytorch-AdaIN,
  release v0.0.0). Its first, fixed 1x1 convolution maps RGB in [0, 1] to the caffe input it
  expects. Read from `encoder_path` when given, else `<torch hub dir>/checkpoints/`.
- `"torchvision"`: torchvision's `VGG19_Weights.IMAGENET1K_V1` (ImageNet; an encoder of other
  features: the losses are not comparable with the paper's), from `encoder_path` or the file
  torchvision itself caches (`<torch hub dir>/checkpoints/vgg19-dcbb9e9d.pth`).
- `"random"`: a randomly initialised encoder of AdaIN's structure (`random_init`; tests and
  smoke runs: its losses say nothing about how pictures look).

A missing file is `EncoderWeightsNotFound` (a UserError: one line saying which file to put
where, before anything trains). Files are read with `torch.load(weights_only=True)`: a weight
file never runs code.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from normbench.errors import UserError

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


def conv3x3_reflect(c_in: int, c_out: int) -> list[nn.Module]:
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
            layers += [*conv3x3_reflect(c_in, c_out), nn.ReLU()]
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


SOURCES = ("vgg_normalised", "torchvision", "random")
VGG_NORMALISED = "vgg_normalised.pth"
VGG_NORMALISED_FROM = "pytorch-AdaIN's release v0.0.0 (github.com/naoto0804/pytorch-AdaIN)"


class EncoderWeightsNotFound(UserError, FileNotFoundError):
    """The encoder's weight file is not where the task looks for it."""


def checkpoints_dir() -> Path:
    """Where torch (and torchvision) cache weight files: `<torch.hub.get_dir()>/checkpoints`."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def torchvision_file() -> str:
    """The file name torchvision caches its VGG-19 ImageNet weights under."""
    from torchvision.models import VGG19_Weights

    return Path(VGG19_Weights.IMAGENET1K_V1.url).name


def weights_path(source: str, path: str | None = None) -> Path | None:
    """The file `source` reads (None for "random"); EncoderWeightsNotFound when it is missing,
    ValueError for an unknown source."""
    if source not in SOURCES:
        raise ValueError(f"encoder_weights must be one of {list(SOURCES)}, got {source!r}")
    if source == "random":
        return None
    name = VGG_NORMALISED if source == "vgg_normalised" else torchvision_file()
    file = Path(path).expanduser() if path else checkpoints_dir() / name
    if file.is_file():
        return file
    origin = VGG_NORMALISED_FROM if source == "vgg_normalised" else "torchvision's VGG19_Weights"
    raise EncoderWeightsNotFound(
        f"the VGG-19 encoder weights ({source}) are missing: put {name} from "
        f"{origin} at {file}"
        + ("" if path else " (or give its path as encoder_path)")
        + "; nothing is downloaded at run time"
    )


def load_encoder(source: str, path: str | None = None, *, width_divisor: int = 1) -> Encoder:
    """The frozen encoder of `source` (module doc), weights loaded; `width_divisor` only with
    "random" (the weight files are full width)."""
    file = weights_path(source, path)
    if width_divisor != 1 and file is not None:
        raise ValueError(
            f"width_divisor {width_divisor} needs encoder_weights 'random' (the {source} "
            "weights are full width)"
        )
    if file is None:
        return random_init(adain_encoder(width_divisor))
    state = torch.load(file, map_location="cpu", weights_only=True)
    if source == "vgg_normalised":
        return load_vgg_normalised(state, file)
    try:
        return torchvision_encoder(state)
    except (KeyError, RuntimeError) as exc:
        raise UserError(
            f"{file} is not torchvision's VGG-19 state dict: {str(exc).splitlines()[0]}"
        ) from exc


def random_init(encoder: Encoder) -> Encoder:
    """Random weights that keep the features' scale through the depth (He init, fan-in, for
    ReLU; zero biases) behind a first 1x1 convolution that centres [0, 1] images: torch's
    default init shrinks the activations ~3x per layer, to a relu4_1 near 1e-4."""
    convs = [m for m in flat_encoder_modules(encoder) if isinstance(m, torch.nn.Conv2d)]
    with torch.no_grad():
        for k, conv in enumerate(convs):
            assert conv.bias is not None  # AdaIN's convolutions all have one
            if k == 0:
                conv.weight.copy_(torch.eye(3).reshape(3, 3, 1, 1))
                conv.bias.fill_(-0.5)
                continue
            torch.nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
            conv.bias.zero_()
    return encoder


def load_vgg_normalised(state: dict[str, torch.Tensor], file: Path | str = "") -> Encoder:
    """AdaIN's encoder with the first 31 modules' weights of `vgg_normalised.pth` (the file's
    `nn.Sequential` keys "<index>.weight" / "<index>.bias"; the layers after relu4_1 unused).
    UserError naming the file and the key when a tensor is missing or of another shape."""
    encoder = adain_encoder()
    for index, module in enumerate(flat_encoder_modules(encoder)):
        for name, param in module.named_parameters(recurse=False):
            key = f"{index}.{name}"
            value = state.get(key)
            if not isinstance(value, torch.Tensor) or value.shape != param.shape:
                got = tuple(value.shape) if isinstance(value, torch.Tensor) else "nothing"
                raise UserError(
                    f"{file} is not AdaIN's {VGG_NORMALISED}: key {key!r} "
                    f"holds {got}, expected a tensor of shape {tuple(param.shape)}"
                )
            with torch.no_grad():
                param.copy_(value)
    return encoder
