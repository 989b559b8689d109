"""The fast path for small images: a whole split as a uint8 tensor on the training device.

Every batch is gathered, augmented and normalised on that device with a handful of tensor ops
(no Python loop over samples, no worker processes, no PIL). Augmentation follows torchvision's
order and semantics: `RandomCrop(size, padding=p)` (zero padding), `RandomHorizontalFlip()`,
`RandomRotation(deg)` (nearest, zero fill), then `ToTensor()` + `Normalize(mean, std)`.

Reproducibility: the shuffle order and every augmentation parameter of an epoch are drawn on
the CPU from a `torch.Generator` seeded from (seed, epoch), whatever the device, so an epoch's
batches depend only on (data, seed, epoch). A resumed trial calls `set_epoch(e)` and sees
exactly the batches it would have seen.

Training batches use drop_last: every step sees exactly `batch_size` images, so
batch-dependent normalisers (BN, ghost BN, batch-group norms) never meet a short or size-1
batch; the few dropped images differ every epoch because the order is reshuffled.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from normbench.data.base import Augment, TensorSet
from normbench.data.shard import Shard


def epoch_generator(seed: int, epoch: int, stream: int = 0) -> torch.Generator:
    """A CPU generator seeded from (seed, epoch, stream), well mixed by NumPy's SeedSequence."""
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(epoch), int(stream)])
    return torch.Generator().manual_seed(int(state.generate_state(1, dtype=np.uint64)[0] >> 1))


@dataclass
class AugmentParams:
    """Per-sample augmentation parameters, in the order samples are served."""

    dy: torch.Tensor  # int64 (N,), crop row offset in the padded image, 0..2p
    dx: torch.Tensor  # int64 (N,), crop column offset, 0..2p
    flip: torch.Tensor  # bool (N,)
    angle: torch.Tensor  # float32 (N,), degrees, counter-clockwise

    def slice(self, s: slice) -> AugmentParams:
        return AugmentParams(self.dy[s], self.dx[s], self.flip[s], self.angle[s])

    def to(self, device: torch.device) -> AugmentParams:
        return AugmentParams(*(t.to(device) for t in (self.dy, self.dx, self.flip, self.angle)))


def draw_params(n: int, aug: Augment, g: torch.Generator) -> AugmentParams:
    """Draw all four parameters for n samples (always all four, so turning one augmentation
    off does not change the others' random draws)."""
    p = aug.crop_padding
    dy = torch.randint(0, 2 * p + 1, (n,), generator=g)
    dx = torch.randint(0, 2 * p + 1, (n,), generator=g)
    flip = torch.rand(n, generator=g) < 0.5
    angle = (torch.rand(n, generator=g) * 2.0 - 1.0) * float(aug.rotation)
    if not aug.hflip:
        flip = torch.zeros_like(flip)
    return AugmentParams(dy, dx, flip, angle)


def source_pixels(
    prm: AugmentParams, h: int, w: int, rotate: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """For every output pixel, the (row, col) it copies in the crop+flip frame, and where
    rotation looks outside the image (filled with zeros), as (B, H, W) tensors.

    Rotation (torchvision `rotate(img, angle)`: counter-clockwise, about the image centre,
    nearest, same size): in pixel units about the centre (x right, y down), output pixel
    q = (u, v) copies source pixel R q, R = [[cos a, -sin a], [sin a, cos a]], rounded to the
    nearest pixel centre (half to even, as grid_sample's nearest mode).
    """
    dev = prm.dy.device
    i = torch.arange(h, device=dev, dtype=torch.float32).view(1, h, 1)
    j = torch.arange(w, device=dev, dtype=torch.float32).view(1, 1, w)
    if not rotate:
        b = prm.dy.shape[0]
        return i.long().expand(b, h, w), j.long().expand(b, h, w), None
    a = torch.deg2rad(prm.angle.float()).view(-1, 1, 1)
    cos, sin = torch.cos(a), torch.sin(a)
    u, v = j + 0.5 - w / 2, i + 0.5 - h / 2  # pixel centres about the image centre
    col = torch.round(cos * u - sin * v + (w / 2 - 0.5)).long()  # (B, H, W)
    row = torch.round(sin * u + cos * v + (h / 2 - 0.5)).long()
    inside = (row >= 0) & (row < h) & (col >= 0) & (col < w)
    return row.clamp_(0, h - 1), col.clamp_(0, w - 1), inside


def augment_uint8(x: torch.Tensor, aug: Augment, prm: AugmentParams) -> torch.Tensor:
    """Random crop (zero padding), flip, then rotation of a uint8 (B, C, H, W) batch, in
    torchvision's order, as ONE gather: crop, flip and rotation only move pixels, so their
    composition is an index map. Output pixel (i, j) of sample b copies padded pixel
    (dy_b + r, dx_b + c'), with (r, c) the rotation's source pixel in the crop frame and
    c' = W - 1 - c when b is flipped, else c; zero where rotation looks outside the image.
    """
    b, ch, h, w = x.shape
    p = aug.crop_padding
    if p > 0:
        x = F.pad(x, (p, p, p, p))  # (B, C, H+2p, W+2p), zeros
    hp, wp = x.shape[-2:]
    r, c, inside = source_pixels(prm, h, w, aug.rotation > 0)
    c = torch.where(prm.flip.view(-1, 1, 1), w - 1 - c, c)
    flat = ((prm.dy.view(-1, 1, 1) + r) * wp + prm.dx.view(-1, 1, 1) + c).view(b, 1, h * w)
    out = torch.gather(x.reshape(b, ch, hp * wp), 2, flat.expand(b, ch, h * w))  # (B,C,H*W)
    if inside is not None:
        out *= inside.view(b, 1, h * w).to(out.dtype)  # rotation's zero fill
    return out.view(b, ch, h, w)


class Normalizer:
    """uint8 (or 0..255 float) images -> (x / 255 - mean) / std, as one multiply-add."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...], device: torch.device):
        m = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        s = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.scale = 1.0 / (255.0 * s)
        self.shift = -m / s

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x.float().mul_(self.scale).add_(self.shift)


class TensorLoader:
    """Batches of a `TensorSet` kept on `device`, yielding normalised float (x, y).

    train=True: shuffled, augmented, drop_last, optionally limited to `limit_batches` per
    epoch. train=False: in order, no augmentation, every sample (last batch may be short).
    Iterating advances the epoch by one; `set_epoch(e)` pins the next epoch to e.

    `batch_size` is what one batch holds on this rank; with a data-parallel `shard` (rank r of
    N) the loader serves only that rank's part (`normbench.data.shard`): B rows of each global
    batch of N x B in training, every N-th batch in evaluation.
    """

    def __init__(
        self,
        data: TensorSet,
        *,
        batch_size: int,
        device: torch.device | str,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        train: bool,
        augment: Augment | None = None,
        seed: int = 0,
        limit_batches: int | None = None,
        shard: Shard | None = None,
    ) -> None:
        self.device = torch.device(device)
        self.images = data.images.to(self.device)
        self.labels = data.labels.to(self.device)
        self.batch_size = int(batch_size)
        self.train = train
        self.augment = augment or Augment()
        self.seed = int(seed)
        self.limit_batches = limit_batches
        self.shard = shard or Shard()
        self.epoch = 0
        self.normalize = Normalizer(mean, std, self.device)

    @property
    def num_samples(self) -> int:
        return int(self.labels.shape[0])

    def __len__(self) -> int:
        return self.shard.num_batches(
            self.num_samples, self.batch_size, train=self.train, limit_batches=self.limit_batches
        )

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch, self.epoch = self.epoch, self.epoch + 1
        n, bs = self.num_samples, self.batch_size
        if not self.train:
            for k in self.shard.eval_batches(n, bs):
                s = self.shard.eval_rows(k, bs, n)
                yield self.normalize(self.images[s]), self.labels[s]
            return
        order, params = self.epoch_plan(epoch)
        for k in range(len(self)):
            s = self.shard.train_rows(k, bs)
            idx = order[s]
            x = self.images[idx]  # uint8 (B, C, H, W)
            if self.augment != Augment():
                x = augment_uint8(x, self.augment, params.slice(s))
            yield self.normalize(x), self.labels[idx]

    def epoch_plan(self, epoch: int) -> tuple[torch.Tensor, AugmentParams]:
        """The sample order and per-position augmentation parameters of a training epoch
        (all ranks draw the same), drawn on the CPU from (seed, epoch) and moved to the device."""
        g = epoch_generator(self.seed, epoch)
        order = torch.randperm(self.num_samples, generator=g)
        params = draw_params(self.num_samples, self.augment, g)
        return order.to(self.device), params.to(self.device)
