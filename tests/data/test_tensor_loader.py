"""Tensor loader: augmentation against torchvision references, determinism, normalisation."""

from __future__ import annotations

import itertools

import pytest
import torch
import torchvision.transforms.functional as TF

from normbench.data.base import Augment, TensorSet
from normbench.data.shard import Shard
from normbench.data.tensor_loader import AugmentParams, TensorLoader, augment_uint8

MEAN, STD = (0.25, 0.5, 0.75), (0.2, 0.3, 0.4)


def _data(n: int = 24, size: int = 8, seed: int = 0) -> TensorSet:
    """Random images whose label is their index, so each served image can be traced."""
    g = torch.Generator().manual_seed(seed)
    return TensorSet(
        torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8), torch.arange(n)
    )


def _loader(
    data: TensorSet,
    aug: Augment,
    *,
    bs: int = 5,
    seed: int = 0,
    train: bool = True,
    limit: int | None = None,
    shard: Shard | None = None,
) -> TensorLoader:
    return TensorLoader(
        data,
        batch_size=bs,
        device="cpu",
        mean=MEAN,
        std=STD,
        train=train,
        augment=aug,
        seed=seed,
        limit_batches=limit,
        shard=shard,
    )


def _unnormalize(x: torch.Tensor) -> torch.Tensor:
    """Back to 0..255 with the textbook formula x * std + mean, times 255."""
    m, s = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    return ((x * s + m) * 255).round()


def _candidates(img: torch.Tensor, pad: int, hflip: bool) -> list[torch.Tensor]:
    """Every output torchvision RandomCrop(size, padding=pad) + RandomHorizontalFlip can give."""
    h, w = img.shape[-2:]
    padded = TF.pad(img, [pad])  # zero fill, as RandomCrop(padding=p)
    out = []
    for top, left in itertools.product(range(2 * pad + 1), repeat=2):
        crop = TF.crop(padded, top, left, h, w)
        out += [crop, TF.hflip(crop)] if hflip else [crop]
    return out


@pytest.mark.parametrize("hflip", [True, False])
def test_crop_flip_matches_torchvision(hflip: bool) -> None:
    data = _data()
    loader = _loader(data, Augment(crop_padding=2, hflip=hflip))
    seen_flip = False
    for x, y in loader:
        for img, label in zip(_unnormalize(x), y, strict=True):
            src = data.images[label].float()
            cands = _candidates(src, 2, hflip)
            assert any(torch.equal(img, c) for c in cands), "not a crop(+flip) of its source"
            seen_flip |= not any(torch.equal(img, c) for c in cands[:: 2 if hflip else 1])
    assert seen_flip == hflip  # flips happen only when asked


def _reference(
    src: torch.Tensor, pad: int, dy: int, dx: int, flip: bool, angle: float
) -> torch.Tensor:
    """torchvision.transforms.functional, one image: pad, crop, flip, rotate (nearest, fill 0)."""
    h, w = src.shape[-2:]
    out = TF.crop(TF.pad(src, [pad]), dy, dx, h, w)
    out = TF.hflip(out) if flip else out
    return TF.rotate(out, angle, interpolation=TF.InterpolationMode.NEAREST, fill=0)


@pytest.mark.parametrize("rotation", [0.0, 15.0, 40.0])
def test_pipeline_matches_torchvision_with_the_same_parameters(rotation: float) -> None:
    data = _data(20, 12)
    loader = _loader(data, Augment(crop_padding=3, hflip=True, rotation=rotation), bs=10)
    order, prm = loader.epoch_plan(0)  # the offsets, flips and angles epoch 0 uses
    assert prm.angle.abs().max() <= rotation and (rotation == 0 or prm.angle.abs().max() > 1)
    got = torch.cat([_unnormalize(x) for x, _ in loader])  # iterates epoch 0
    ref = torch.stack(
        [
            _reference(
                data.images[order[k]],
                3,
                int(prm.dy[k]),
                int(prm.dx[k]),
                bool(prm.flip[k]),
                float(prm.angle[k]),
            ).float()
            for k in range(20)
        ]
    )
    if rotation == 0:
        assert torch.equal(got, ref)
    else:  # a nearest-pixel tie may round the other way in float32
        assert (got == ref).float().mean() > 0.999


def test_rotation_by_90_degrees_is_exact() -> None:
    x = _data(3, 8).images
    zeros = torch.zeros(3, dtype=torch.int64)
    prm = AugmentParams(zeros, zeros, zeros.bool(), torch.full((3,), 90.0))
    # counter-clockwise 90 degrees: new[i, j] = old[j, W-1-i], which is torch.rot90(k=1)
    got = augment_uint8(x, Augment(rotation=90.0), prm)
    assert torch.equal(got, torch.rot90(x, 1, dims=(-2, -1)))


def test_normalisation_and_eval_order() -> None:
    data = _data(7)
    batches = list(_loader(data, Augment(crop_padding=4, hflip=True), bs=3, train=False))
    assert [len(b[1]) for b in batches] == [3, 3, 1]  # eval keeps every sample, in order
    x = torch.cat([b[0] for b in batches])
    m, s = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    expect = (data.images.double() / 255.0 - m) / s
    assert x.dtype == torch.float32 and torch.allclose(x.double(), expect, atol=1e-5)
    assert torch.cat([b[1] for b in batches]).tolist() == list(range(7))


def test_drop_last_limit_and_one_pass() -> None:
    data = _data(23)
    loader = _loader(data, Augment(crop_padding=1, hflip=True), bs=5)
    labels = [y for _, y in loader]
    assert len(loader) == 4 and all(len(y) == 5 for y in labels)  # 23 // 5, no short batch
    assert len(set(torch.cat(labels).tolist())) == 20  # no sample twice in an epoch
    assert len(list(_loader(data, Augment(), bs=5, limit=2))) == 2


def _epoch(loader: TensorLoader, epoch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    loader.set_epoch(epoch)
    return list(loader)


def test_batches_depend_only_on_seed_and_epoch() -> None:
    data, aug = _data(), Augment(crop_padding=2, hflip=True, rotation=15.0)
    a = _loader(data, aug, seed=7)
    for _ in range(3):  # iterate epochs 0, 1, 2; the next iteration is epoch 3
        list(a)
    resumed = _epoch(_loader(data, aug, seed=7), 3)  # a resumed trial pins epoch 3
    for (xa, ya), (xb, yb) in zip(list(a), resumed, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    other_epoch = _epoch(_loader(data, aug, seed=7), 4)
    other_seed = _epoch(_loader(data, aug, seed=8), 3)
    assert not torch.equal(resumed[0][1], other_epoch[0][1])
    assert not torch.equal(resumed[0][1], other_seed[0][1])


def test_turning_one_augmentation_off_keeps_the_order() -> None:
    data = _data()
    full = _epoch(_loader(data, Augment(crop_padding=2, hflip=True)), 1)
    plain = _epoch(_loader(data, Augment()), 1)
    assert all(torch.equal(a[1], b[1]) for a, b in zip(full, plain, strict=True))


@pytest.mark.parametrize("ranks", [2, 3])
def test_rank_serves_only_its_rows_of_each_global_batch(ranks: int) -> None:
    data, aug, b = _data(), Augment(crop_padding=2, hflip=True, rotation=15.0), 3
    whole = _loader(data, aug, bs=ranks * b, seed=4)  # one process: the N x B batches
    for r in range(ranks):
        part = _loader(data, aug, bs=b, seed=4, shard=Shard(r, ranks))
        assert len(part) == len(whole) == 24 // (ranks * b)  # every rank takes as many steps
        for epoch in (0, 1):
            rows = slice(r * b, (r + 1) * b)
            for (x, y), (wx, wy) in zip(_epoch(part, epoch), _epoch(whole, epoch), strict=True):
                assert torch.equal(x, wx[rows]) and torch.equal(y, wy[rows])  # bit for bit
    assert len(_loader(data, aug, bs=b, shard=Shard(1, ranks), limit=1)) == 1


@pytest.mark.parametrize("ranks", [2, 3])
def test_eval_rank_serves_every_nth_batch(ranks: int) -> None:
    data = _data(23)
    whole = list(_loader(data, Augment(), bs=5, train=False))  # 5 batches, the last of 3
    served = []
    for r in range(ranks):
        part = _loader(data, Augment(), bs=5, train=False, shard=Shard(r, ranks))
        got = list(part)
        assert len(part) == len(got) == len(whole[r::ranks])
        for (x, y), (wx, wy) in zip(got, whole[r::ranks], strict=True):
            assert torch.equal(x, wx) and torch.equal(y, wy)
        served += [int(i) for _, y in got for i in y]
    assert sorted(served) == list(range(23))  # the ranks' sums cover every image once
