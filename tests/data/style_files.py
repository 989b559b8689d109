"""Files the style transfer task reads, written by tests in their real formats: AdaIN's
`vgg_normalised.pth` (a state dict of random tensors under the file's own keys and shapes) and
flat folders of content and style images (JPEG and PNG, as COCO's and WikiArt's are)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

# AdaIN's `vgg` to relu4_1, module by module (AdaIN paper Sec. 6.1 and its official code's
# layout): (index, out, in, kernel) of every convolution; reflection pads before each 3x3;
# 2x2 ceil-mode max pools at 7, 14 and 27; the file's keys use these indices.
CONVS = [(0, 3, 3, 1), (2, 64, 3, 3), (5, 64, 64, 3), (9, 128, 64, 3), (12, 128, 128, 3),
         (16, 256, 128, 3), (19, 256, 256, 3), (22, 256, 256, 3), (25, 256, 256, 3),
         (29, 512, 256, 3)]  # fmt: skip


def vgg_normalised_state(seed: int) -> dict[str, torch.Tensor]:
    """The tensors of a `vgg_normalised.pth` (He-scaled random weights, small biases)."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for index, out, inp, k in CONVS:
        state[f"{index}.weight"] = (
            torch.randn(out, inp, k, k, generator=g) * (2 / (inp * k * k)) ** 0.5
        )
        state[f"{index}.bias"] = torch.randn(out, generator=g) * 0.1
    state["32.weight"] = torch.zeros(1)  # a layer after relu4_1: the file has them, unused
    return state


def write_vgg_normalised(path: Path, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(vgg_normalised_state(seed), path)
    return path


def write_image_folder(folder: Path, n: int, rng: np.random.Generator, side: int = 24) -> None:
    """`n` random RGB images of side x side-4 px in a flat folder, JPEG and PNG by turns."""
    folder.mkdir(parents=True)
    for i in range(n):
        pixels = rng.integers(0, 256, size=(side - 4, side, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:06d}.{('jpg', 'png')[i % 2]}")
