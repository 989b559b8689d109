"""The VGG-19 encoder's weights, from a given file or torch's hub cache; never downloaded.

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

from pathlib import Path

import torch

from normbench.errors import UserError
from normbench.tasks.style_transfer.models import (
    Encoder,
    adain_encoder,
    flat_encoder_modules,
    torchvision_encoder,
)

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
        f"style_transfer: the VGG-19 encoder weights ({source}) are missing: put {name} from "
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
            f"style_transfer: {file} is not torchvision's VGG-19 state dict: "
            f"{str(exc).splitlines()[0]}"
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
                    f"style_transfer: {file} is not AdaIN's {VGG_NORMALISED}: key {key!r} "
                    f"holds {got}, expected a tensor of shape {tuple(param.shape)}"
                )
            with torch.no_grad():
                param.copy_(value)
    return encoder
