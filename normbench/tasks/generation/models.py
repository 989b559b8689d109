"""SNGAN's CIFAR-10 ResNet generator and projection discriminator, the generator's
class-conditional norm taken from the variant registry.

Miyato, Kataoka, Koyama & Yoshida, "Spectral Normalization for Generative Adversarial Networks"
(ICLR 2018, arXiv 1802.05957), Appendix B.4 ResNet architectures, with the projection
discriminator of Miyato & Koyama, "cGANs with Projection Discriminator" (ICLR 2018, arXiv
1802.05637); sizes as SaBN's `GAN/models/sngan_32.py` and `scripts/train_sngan_*_cifar10.sh`
(latent 128, generator width 256, discriminator width 128, bottom 4x4).

Generator G(z, y): z (N, latent) -> linear -> (N, W, b, b) -> n_up x GenBlock (each doubles
the side) -> BN -> ReLU -> conv3x3 -> tanh, images (N, C, S, S) in [-1, 1] with S = b * 2^n_up.
A GenBlock is  x + residual  with a learnable 1x1 shortcut on the upsampled x, and residual =
conv3x3(ReLU(norm2(conv3x3(up(ReLU(norm1(x, y))))), y)); up is nearest-neighbour x2. norm1 and
norm2 are the conditional norm (`ccbn`, `sabn` or a branch-indexed plugin) with one branch per
class, called with the class as the index (docs/variants.md#branch-index); the last norm before
the output conv is unconditional BN, as in the official code for both arms. A conditional norm
that is a normalization-activation layer (`norm_activation`, docs/variants.md; none of the
built-in conditional layers is) gets no ReLU after it.

Discriminator D(x, y) (spectral norm on every weight): OptimizedDisBlock (conv, ReLU, conv,
avg-pool 2; shortcut avg-pool then 1x1 conv), DisBlock with down-sampling, two DisBlocks
without; ReLU; sum over (H, W) -> h (N, W); out = linear(h) + <embed(y), h> (the projection),
logits (N, 1). No normalization layer in D.

Initialisation (official code): Xavier-uniform (gain 1) on every conv of G and D; the output
BN's gamma ~ N(1, 0.02); linear and embedding layers keep torch's defaults. Spectral norm is
torch's parametrization (one power iteration per training forward, as the official
`nn.utils.spectral_norm`), applied after the initialisation.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from normbench.errors import UserError
from normbench.variants_api import is_norm_activation

NormLayer = Callable[[int], nn.Module]


class GenerationError(UserError, ValueError):
    """A generator or discriminator that cannot be built as asked."""


def conditional_norm_layer(
    variant: str, num_classes: int, options: dict[str, Any] | None = None
) -> NormLayer:
    """`norm_layer(C)` of a registered class-conditional variant with one branch per class.

    The variant must be branch-indexed (`conditioning = "index"`, docs/variants.md#branch-index)
    and take `num_branches`, which this sets to `num_classes`. Raises GenerationError for a
    plain or style-conditioned layer, a branch-indexed one without `num_branches`, or
    `num_branches` among `options`; UnknownNameError for an unknown name."""
    from normbench.variants_api import VARIANTS, norm_layer

    options = dict(options or {})
    _check_conditional(VARIANTS.get(variant).obj, variant, options, num_classes)
    return norm_layer(variant, num_branches=num_classes, **options)


def class_conditional(norm_layer: NormLayer, num_classes: int) -> NormLayer:
    """A trial's `norm_layer` (`functools.partial(Variant, **options)`, as the registry
    builds it) with one branch per class; the checks and errors of `conditional_norm_layer`."""
    cls = getattr(norm_layer, "func", None)
    if not isinstance(norm_layer, functools.partial) or not isinstance(cls, type):
        raise GenerationError(
            f"the generator's norm must be a registered variant's norm_layer, not {norm_layer!r}"
        )
    from normbench.variants_api import VARIANTS

    names = [e.name for e in VARIANTS.entries() if e.obj is cls]
    name = names[0] if names else cls.__name__
    _check_conditional(cls, name, dict(norm_layer.keywords), num_classes)
    return functools.partial(norm_layer, num_branches=num_classes)


def _check_conditional(cls: type, name: str, options: dict[str, Any], num_classes: int) -> None:
    from normbench.variants_api import variant_options

    conditioning = getattr(cls, "conditioning", None)
    if conditioning != "index":
        kind = "a plain norm layer" if conditioning is None else f"conditioned on {conditioning!r}"
        raise GenerationError(
            f"variant {name!r} is {kind}, not class-conditional: the generator's norm must "
            "be branch-indexed (conditioning = 'index', docs/variants.md#branch-index), "
            "e.g. ccbn or sabn"
        )
    if "num_branches" in options:
        raise GenerationError(
            f"variant {name!r}: num_branches is set by the generator to the number of "
            f"classes ({num_classes}); remove it from the options"
        )
    if "num_branches" not in variant_options(cls):
        raise GenerationError(
            f"variant {name!r} is branch-indexed but takes no num_branches option, which "
            "the generator sets to the number of classes"
        )


def _xavier(module: nn.Module) -> nn.Module:
    """Xavier-uniform (gain 1) on a conv's weight, as the official `init_type xavier_uniform`."""
    assert isinstance(module, nn.Conv2d)
    nn.init.xavier_uniform_(module.weight, gain=1.0)
    return module


def _conv(c_in: int, c_out: int, k: int, sn: bool = False) -> nn.Module:
    conv = _xavier(nn.Conv2d(c_in, c_out, k, padding=k // 2))
    return spectral_norm(conv) if sn else conv


class GenBlock(nn.Module):
    """Pre-activation residual block doubling the side (see the module doc)."""

    def __init__(self, c_in: int, c_out: int, norm_layer: NormLayer) -> None:
        super().__init__()
        self.b1, self.c1 = norm_layer(c_in), _conv(c_in, c_out, 3)
        self.b2, self.c2 = norm_layer(c_out), _conv(c_out, c_out, 3)
        self.c_sc = _conv(c_in, c_out, 1)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = _relu_after(self.b1, self.b1(x, y))
        h = self.c1(F.interpolate(h, scale_factor=2))  # nearest x2: (N, C, 2H, 2W)
        h = self.c2(_relu_after(self.b2, self.b2(h, y)))
        return h + self.c_sc(F.interpolate(x, scale_factor=2))


def _relu_after(norm: nn.Module, h: torch.Tensor) -> torch.Tensor:
    """ReLU(h), `norm`'s output, unless `norm` is a normalization-activation layer (a
    branch-indexed plugin may be one; no built-in class-conditional layer is)."""
    return h if is_norm_activation(norm) else F.relu(h)


class Generator(nn.Module):
    """G(z, y): latent (N, latent_dim) and classes int64 (N,) -> images (N, C, S, S) in [-1, 1].

    `image_size` / `bottom_width` must be a power of two (the number of GenBlocks)."""

    def __init__(
        self,
        num_classes: int,
        norm_layer: NormLayer,
        *,
        out_channels: int = 3,
        image_size: int = 32,
        latent_dim: int = 128,
        width: int = 256,
        bottom_width: int = 4,
    ) -> None:
        super().__init__()
        n_up = math.log2(image_size / bottom_width) if image_size >= bottom_width else -1.0
        if n_up < 1 or n_up != int(n_up):
            raise GenerationError(
                f"image_size / bottom_width must be a power of two >= 2, but got "
                f"image_size={image_size}, bottom_width={bottom_width}"
            )
        self.num_classes, self.latent_dim = num_classes, latent_dim
        self.width, self.bottom_width = width, bottom_width
        self.l1 = nn.Linear(latent_dim, bottom_width**2 * width)
        self.blocks = nn.ModuleList(GenBlock(width, width, norm_layer) for _ in range(int(n_up)))
        self.b5 = nn.BatchNorm2d(width)  # unconditional in both arms (official sngan_32.py)
        nn.init.normal_(self.b5.weight, 1.0, 0.02)
        self.c5 = _conv(width, out_channels, 3)

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.l1(z).reshape(-1, self.width, self.bottom_width, self.bottom_width)  # (N, W, b, b)
        for block in self.blocks:
            h = block(h, y)
        return torch.tanh(self.c5(F.relu(self.b5(h))))


class OptimizedDisBlock(nn.Module):
    """D's first block: conv, ReLU, conv, avg-pool; shortcut avg-pool then 1x1 conv."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.c1, self.c2 = _conv(c_in, c_out, 3, sn=True), _conv(c_out, c_out, 3, sn=True)
        self.c_sc = _conv(c_in, c_out, 1, sn=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.avg_pool2d(self.c2(F.relu(self.c1(x))), 2)
        return h + self.c_sc(F.avg_pool2d(x, 2))


class DisBlock(nn.Module):
    """Pre-activation residual block, optionally halving the side by average pooling."""

    def __init__(self, c_in: int, c_out: int, downsample: bool) -> None:
        super().__init__()
        self.downsample = downsample
        self.c1, self.c2 = _conv(c_in, c_in, 3, sn=True), _conv(c_in, c_out, 3, sn=True)
        learnable = downsample or c_in != c_out
        self.c_sc = _conv(c_in, c_out, 1, sn=True) if learnable else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.c2(F.relu(self.c1(F.relu(x))))
        sc = x if self.c_sc is None else self.c_sc(x)
        if self.downsample:
            h, sc = F.avg_pool2d(h, 2), F.avg_pool2d(sc, 2)
        return h + sc


class Discriminator(nn.Module):
    """D(x, y): images (N, C, S, S) and classes int64 (N,) -> logits (N, 1) (projection)."""

    def __init__(self, num_classes: int, *, in_channels: int = 3, width: int = 128) -> None:
        super().__init__()
        self.blocks = nn.Sequential(
            OptimizedDisBlock(in_channels, width),
            DisBlock(width, width, downsample=True),
            DisBlock(width, width, downsample=False),
            DisBlock(width, width, downsample=False),
        )
        self.l5 = spectral_norm(nn.Linear(width, 1, bias=False))
        self.l_y = spectral_norm(nn.Embedding(num_classes, width))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.blocks(x)).sum(dim=(2, 3))  # (N, W): sum pooling, as the official
        return self.l5(h) + (self.l_y(y) * h).sum(dim=1, keepdim=True)


class GAN(nn.Module):
    """The generator and the discriminator of one trial, one module (one state_dict)."""

    def __init__(self, generator: Generator, discriminator: Discriminator) -> None:
        super().__init__()
        self.generator, self.discriminator = generator, discriminator

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """len(x) images (N, C, S, S) generated from fixed noise (seed 0; classes 0, 1, ... in
        turn), whatever x holds: what a probe that runs the model on a batch of real images
        (the training loop's condensation probe) sees. Training and evaluation call the two
        networks themselves."""
        g = self.generator
        z = torch.randn(len(x), g.latent_dim, generator=torch.Generator().manual_seed(0))
        y = torch.arange(len(x), device=x.device) % g.num_classes
        out: torch.Tensor = g(z.to(x.device), y)
        return out


def build_gan(
    num_classes: int,
    norm_layer: NormLayer,
    *,
    channels: int = 3,
    image_size: int = 32,
    latent_dim: int = 128,
    g_width: int = 256,
    d_width: int = 128,
    bottom_width: int = 4,
) -> GAN:
    """SNGAN's CIFAR-10 pair at the given sizes (defaults: the paper's); `norm_layer` from
    `conditional_norm_layer`."""
    g = Generator(
        num_classes,
        norm_layer,
        out_channels=channels,
        image_size=image_size,
        latent_dim=latent_dim,
        width=g_width,
        bottom_width=bottom_width,
    )
    return GAN(g, Discriminator(num_classes, in_channels=channels, width=d_width))
