"""SNGAN's generator and projection discriminator: the parameter counts of the official CIFAR-10
pair counted by hand, the class reaching the generator only through its registered conditional
norms (ccbn, sabn, a plugin), refusals in one line, the projection and spectral norm against
independent computations."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

from normbench import registry
from normbench.errors import UnknownNameError
from normbench.registry import load_plugin
from normbench.tasks.generation.models import (
    Discriminator,
    GenerationError,
    Generator,
    build_gan,
    conditional_norm_layer,
)
from normbench.variants import CategoricalConditionalBatchNorm2d, SandwichBatchNorm2d

# Hand count of SaBN's sngan_32 at the scripts' sizes (latent 128, widths 256 / 128, 10 classes).
# G: l1 128*4096 + 4096; per GenBlock two 3x3 convs 256->256 (+bias), a 1x1 shortcut (+bias),
# two norms of 10 class rows of 2*256 (ccbn; sabn adds 2*256 each); BN 2*256; conv 256->3 (+3).
G_BLOCK = 2 * (256 * 256 * 9 + 256) + (256 * 256 + 256)
G_CCBN = (128 * 4096 + 4096) + 3 * (G_BLOCK + 2 * 10 * 512) + 2 * 256 + (256 * 3 * 9 + 3)
G_SABN = G_CCBN + 3 * 2 * 512
# D: first block convs 3->128, 128->128, 1x1 3->128; second block two 3x3 and a 1x1 shortcut;
# two blocks of two 3x3 convs; linear 128->1 without bias; projection embedding 10 x 128.
C3 = 128 * 128 * 9 + 128
D_COUNT = (
    (3 * 128 * 9 + 128 + C3 + 3 * 128 + 128) + (2 * C3 + 128 * 128 + 128) + 4 * C3 + 128 + 1280
)


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize(("variant", "expected"), [("ccbn", G_CCBN), ("sabn", G_SABN)])
def test_sngan_cifar10_pair_has_the_hand_counted_parameters(variant: str, expected: int) -> None:
    gan = build_gan(10, conditional_norm_layer(variant, 10))
    assert count(gan.generator) == expected  # 4.30M for ccbn, as SNGAN's ResNet generator
    assert count(gan.discriminator) == D_COUNT
    norms = [m for m in gan.generator.modules() if isinstance(m, CategoricalConditionalBatchNorm2d)]
    assert len(norms) == 6 and all(m.num_branches == 10 for m in norms)
    assert isinstance(norms[0], SandwichBatchNorm2d) is (variant == "sabn")
    assert type(gan.generator.b5) is nn.BatchNorm2d  # the last norm stays unconditional BN


def small_generator(variant: str = "ccbn", **options) -> Generator:
    torch.manual_seed(0)
    norm = conditional_norm_layer(variant, 3, options)
    return Generator(3, norm, out_channels=1, image_size=8, latent_dim=6, width=8)


def test_the_class_reaches_the_generator_only_through_its_norms() -> None:
    """Same noise, two classes: different images; with every class row of every norm made
    equal, the same images (the class has no other way in)."""
    g = small_generator().eval()
    z = torch.randn(2, 6).repeat(1, 1)
    zz = torch.cat([z[:1], z[:1]])
    out = g(zz, torch.tensor([0, 1]))
    assert out.shape == (2, 1, 8, 8) and out.abs().max() <= 1
    assert not torch.allclose(out[0], out[1])
    with torch.no_grad():
        for m in g.modules():
            if isinstance(m, CategoricalConditionalBatchNorm2d):
                m.embed.weight.copy_(m.embed.weight[:1].expand_as(m.embed.weight))
    out = g(zz, torch.tensor([0, 2]))
    torch.testing.assert_close(out[0], out[1])


PLUGIN = '''
import torch
from torch import nn
from normbench import register_variant
from normbench.variants import BranchIndexed


@register_variant("class_scale_norm")
class ClassScaleNorm(BranchIndexed, nn.Module):
    """A plugin conditional norm: per-class scale of a per-sample standardised x."""

    paper = "a plugin (test double)"
    batch_dependent = False

    def __init__(self, num_features, *, num_branches=1, eps=1e-5, momentum=0.1, device=None,
                 dtype=None):
        super().__init__()
        self.num_branches = num_branches
        self.weight = nn.Parameter(torch.ones(num_features, device=device, dtype=dtype))
        self.bias = None
        self.scale = nn.Parameter(torch.arange(1.0, num_branches + 1).repeat(num_features, 1).T)

    def forward(self, x, index=None):
        k = self.resolve_index(x, index)
        k = torch.full((x.shape[0],), k) if isinstance(k, int) else k
        x = (x - x.mean(dim=(1, 2, 3), keepdim=True)) / (x.std(dim=(1, 2, 3), keepdim=True) + 1e-5)
        return x * self.scale[k][:, :, None, None] * self.weight[:, None, None]


@register_variant("style_norm")
class StyleNorm(nn.Module):
    paper = "a style-conditioned plugin (test double)"
    batch_dependent = False
    conditioning = "style"

    def __init__(self, num_features, *, eps=1e-5, momentum=0.1, device=None, dtype=None):
        super().__init__()
        self.weight = self.bias = None

    def forward(self, x, style=None):
        return x


@register_variant("fixed_branches")
class FixedBranches(BranchIndexed, nn.Module):
    paper = "branch-indexed without num_branches (test double)"
    batch_dependent = False
    num_branches = 2

    def __init__(self, num_features, *, eps=1e-5, momentum=0.1, device=None, dtype=None):
        super().__init__()
        self.weight = self.bias = None

    def forward(self, x, index=None):
        return x
'''


@pytest.fixture()
def plugin(tmp_path: Path) -> Iterator[None]:
    path = tmp_path / "conditional_plugin.py"
    path.write_text(PLUGIN)
    load_plugin(str(path))
    yield
    registry._reset_all()  # the built-ins come back on next use, without the plugin


def test_a_plugin_conditional_norm_builds_the_generator(plugin: None) -> None:
    g = small_generator("class_scale_norm").eval()
    z = torch.randn(1, 6).repeat(3, 1)
    out = g(z, torch.tensor([0, 1, 2]))
    assert {m.num_branches for m in g.modules() if hasattr(m, "scale")} == {3}
    assert not torch.allclose(out[0], out[2])


@pytest.mark.parametrize(
    ("variant", "options", "error", "match"),
    [
        ("bn", {}, GenerationError, "'bn' is a plain norm layer, not class-conditional.*ccbn"),
        ("style_norm", {}, GenerationError, "conditioned on 'style'"),
        ("fixed_branches", {}, GenerationError, "takes no num_branches option"),
        ("sabn", {"num_branches": 4}, GenerationError, "set by the generator.*classes \\(3\\)"),
        ("nope", {}, UnknownNameError, "nope"),
    ],
)
def test_a_norm_that_cannot_be_class_conditional_is_refused_in_one_line(
    plugin: None, variant: str, options: dict, error: type, match: str
) -> None:
    with pytest.raises(error, match=match) as info:
        conditional_norm_layer(variant, 3, options)
    assert "\n" not in str(info.value)


def test_generator_sizes_must_double_up_to_the_image() -> None:
    norm = conditional_norm_layer("ccbn", 2)
    with pytest.raises(GenerationError, match="power of two"):
        Generator(2, norm, image_size=24, bottom_width=4)
    with pytest.raises(GenerationError, match="power of two"):
        Generator(2, norm, image_size=4, bottom_width=4)
    assert len(Generator(2, norm, image_size=16, width=4).blocks) == 2


def test_projection_discriminator_and_spectral_norm() -> None:
    """D(x, y) = w·h + <embed(y), h> with h the ReLU'd features summed over (H, W); after
    enough power iterations every weight's largest singular value (torch.linalg) is 1."""
    torch.manual_seed(0)
    d = Discriminator(3, in_channels=1, width=8)
    x = torch.randn(4, 1, 8, 8)
    y = torch.tensor([0, 2, 1, 2])
    for _ in range(30):  # power iterations run in training forwards
        d(x, y)
    d.eval()
    h = torch.relu(d.blocks(x)).sum(dim=(2, 3))
    expected = h @ d.l5.weight.T + (d.l_y.weight[y] * h).sum(1, keepdim=True)
    torch.testing.assert_close(d(x, y), expected)
    weights = [m.weight for m in d.modules() if isinstance(m, nn.Conv2d | nn.Linear | nn.Embedding)]
    assert len(weights) == 4 * 2 + 2 + 2  # eight 3x3 convs, two shortcuts, linear, embedding
    for w in weights:
        sigma = torch.linalg.matrix_norm(w.detach().reshape(w.shape[0], -1), ord=2)
        assert sigma.item() == pytest.approx(1.0, abs=0.02)
