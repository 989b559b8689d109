"""Parameter counts of every backbone with BatchNorm, against closed-form counts written from
the architectures' definitions and against published numbers (pytorch-cifar100's README for
the CIFAR models, He et al. 2016 for ResNet-20, torchvision's model cards for ImageNet)."""

from __future__ import annotations

import pytest
from torch import nn

from normbench.models import create_backbone

STAGES = (64, 128, 256, 512)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def bn(c: int) -> int:
    return 2 * c  # affine weight + bias


def cifar_resnet_count(
    blocks: tuple[int, ...],
    bottleneck: bool,
    num_classes: int,
    *,
    width_per_planes: int = 1,
    groups: int = 1,
    reduce_groups: int = 1,
) -> int:
    """Conv weights + BN affine params + linear layer of a pytorch-cifar100 style ResNet."""
    total = 9 * 3 * 64 + bn(64)  # 3x3 stem conv
    c_in = 64
    for planes, n, stride in zip(STAGES, blocks, (1, 2, 2, 2), strict=True):
        for i in range(n):
            if bottleneck:
                w, c_out = planes * width_per_planes, 4 * planes
                total += c_in * w // reduce_groups + 9 * w * w // groups + w * c_out
                total += bn(w) + bn(w) + bn(c_out)
            else:
                c_out = planes
                total += 9 * c_in * c_out + 9 * c_out * c_out + bn(c_out) + bn(c_out)
            if (stride if i == 0 else 1) != 1 or c_in != c_out:
                total += c_in * c_out + bn(c_out)  # 1x1 projection shortcut
            c_in = c_out
    return total + c_in * num_classes + num_classes


def small_resnet_count(n: int, num_classes: int, option: str, width: int = 16) -> int:
    total = 9 * 3 * width + bn(width)
    c_in = width
    for c_out in (width, 2 * width, 4 * width):
        total += n * (9 * c_out * c_out + bn(c_out)) + (n - 1) * 9 * c_out * c_out
        total += 9 * c_in * c_out + n * bn(c_out)
        if option == "B" and c_in != c_out:
            total += c_in * c_out + bn(c_out)
        c_in = c_out
    return total + c_in * num_classes + num_classes


def vgg_count(widths: list[int], num_classes: int) -> int:
    total, c_in = 0, 3
    for c in widths:
        total += 9 * c_in * c + c + bn(c)  # conv with bias, then BN
        c_in = c
    return total + (512 * 4096 + 4096) + (4096 * 4096 + 4096) + (4096 * num_classes + num_classes)


RESNETS = {
    # name: (blocks, bottleneck, published count with 100 classes in millions)
    "resnet18": ((2, 2, 2, 2), False, 11.22),
    "resnet34": ((3, 4, 6, 3), False, 21.33),
    "resnet50": ((3, 4, 6, 3), True, 23.71),
    "resnet101": ((3, 4, 23, 3), True, 42.70),
    "resnet152": ((3, 8, 36, 3), True, 58.34),
}


@pytest.mark.parametrize("name", sorted(RESNETS))
def test_cifar_resnet_counts(name: str) -> None:
    blocks, bottleneck, published = RESNETS[name]
    got = n_params(create_backbone(name, 100, nn.BatchNorm2d))
    assert got == cifar_resnet_count(blocks, bottleneck, 100)
    assert got / 1e6 == pytest.approx(published, abs=0.005)


def test_resnext50_counts() -> None:
    # pytorch-cifar100 layout: 32 groups in both the 3x3 and the reducing 1x1 conv; 14.79M.
    got = n_params(create_backbone("resnext50", 100, nn.BatchNorm2d))
    expected = cifar_resnet_count(
        (3, 4, 6, 3), True, 100, width_per_planes=2, groups=32, reduce_groups=32
    )
    assert got == expected
    assert got / 1e6 == pytest.approx(14.79, abs=0.005)
    paper = n_params(create_backbone("resnext50", 100, nn.BatchNorm2d, grouped_reduce=False))
    assert paper == cifar_resnet_count((3, 4, 6, 3), True, 100, width_per_planes=2, groups=32)


@pytest.mark.parametrize(("name", "n"), [("resnet20", 3), ("resnet32", 5), ("resnet56", 9)])
@pytest.mark.parametrize("option", ["A", "B"])
def test_small_resnet_counts(name: str, n: int, option: str) -> None:
    got = n_params(create_backbone(name, 10, nn.BatchNorm2d, shortcut=option))
    assert got == small_resnet_count(n, 10, option)


def test_resnet20_matches_he_et_al() -> None:
    # He et al. 2016, Table 6: ResNet-20 has 0.27M parameters (option A, 10 classes).
    got = n_params(create_backbone("resnet20", 10, nn.BatchNorm2d))
    assert got == 269_722
    assert got / 1e6 == pytest.approx(0.27, abs=0.005)


def test_small_resnet_width_option() -> None:
    got = n_params(create_backbone("resnet20", 10, nn.BatchNorm2d, width=32))
    assert got == small_resnet_count(3, 10, "A", width=32)


M = 0
VGGS = {
    "vgg11": [64, M, 128, M, 256, 256, M, 512, 512, M, 512, 512, M],
    "vgg13": [64, 64, M, 128, 128, M, 256, 256, M, 512, 512, M, 512, 512, M],
    "vgg16": [64, 64, M, 128, 128, M] + [256] * 3 + [M] + ([512] * 3 + [M]) * 2,
    "vgg19": [64, 64, M, 128, 128, M] + [256] * 4 + [M] + ([512] * 4 + [M]) * 2,
}


@pytest.mark.parametrize("name", sorted(VGGS))
def test_vgg_counts(name: str) -> None:
    got = n_params(create_backbone(name, 100, nn.BatchNorm2d))
    assert got == vgg_count([c for c in VGGS[name] if c != M], 100)


def test_vgg16_matches_pytorch_cifar100() -> None:
    got = n_params(create_backbone("vgg16", 100, nn.BatchNorm2d))
    assert got / 1e6 == pytest.approx(34.0, abs=0.05)  # README: vgg16_bn 34.0M


def test_inceptionv4_matches_pytorch_cifar100() -> None:
    got = n_params(create_backbone("inceptionv4", 100, nn.BatchNorm2d))
    assert got / 1e6 == pytest.approx(41.3, abs=0.05)  # README: inceptionv4 41.3M


@pytest.mark.parametrize(
    ("name", "published"),
    [
        ("imagenet_resnet18", 11_689_512),
        ("imagenet_resnet34", 21_797_672),
        ("imagenet_resnet50", 25_557_032),
        ("imagenet_resnet101", 44_549_160),
        ("imagenet_resnet152", 60_192_808),
        ("imagenet_resnext50_32x4d", 25_028_904),
    ],
)
def test_imagenet_counts(name: str, published: int) -> None:
    # torchvision's model cards (1000 classes, BatchNorm).
    assert n_params(create_backbone(name, 1000, nn.BatchNorm2d)) == published


def preact_resnet_count(blocks: tuple[int, ...], num_classes: int, width: int = 64) -> int:
    """Stem conv without norm; per block a norm before each of its two 3x3 convs (on its
    input width, then on its planes) and a norm-free 1x1 shortcut conv when the shape changes."""
    total, c_in = 9 * 3 * width, width
    stages = (width, 2 * width, 4 * width, 8 * width)
    for planes, n, stride in zip(stages, blocks, (1, 2, 2, 2), strict=True):
        for i in range(n):
            total += bn(c_in) + 9 * c_in * planes + bn(planes) + 9 * planes * planes
            if (stride if i == 0 else 1) != 1 or c_in != planes:
                total += c_in * planes
            c_in = planes
    return total + c_in * num_classes + num_classes


def test_preact_resnet18_count() -> None:
    # The common CIFAR PreActResNet-18 (the SaBN Adv model) has 11,171,146 parameters.
    got = n_params(create_backbone("preact_resnet18", 10, nn.BatchNorm2d))
    assert got == preact_resnet_count((2, 2, 2, 2), 10) == 11_171_146
    small = n_params(create_backbone("preact_resnet18", 10, nn.BatchNorm2d, width=8))
    assert small == preact_resnet_count((2, 2, 2, 2), 10, width=8)
