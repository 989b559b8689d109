"""Weight standardization as a backbone option (docs/variants.md#weight-standardization): equal to
timm's `StdConv2d` (the dev extra), composing with any layer, through the suite as users write it.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from normbench.models import BACKBONES, create_backbone
from normbench.models.std_conv import StdConv2d, standardize_convs, standardize_weight
from normbench.variants_api import norm_layer

timm_layers = pytest.importorskip("timm.layers")


def test_standardized_weight_formula_float64() -> None:
    w = torch.randn(6, 3, 3, 3, dtype=torch.float64) * 2 + 1
    flat = w.reshape(6, -1)
    mean = flat.mean(dim=1, keepdim=True)
    var = ((flat - mean) ** 2).mean(dim=1, keepdim=True)
    expected = ((flat - mean) / torch.sqrt(var + 1e-6)).reshape_as(w)
    torch.testing.assert_close(standardize_weight(w), expected, atol=1e-14, rtol=1e-13)


@pytest.mark.parametrize("groups", [1, 4])
def test_conv_equals_timm_std_conv(groups: int) -> None:
    torch.manual_seed(0)
    ours = StdConv2d(8, 12, 3, stride=2, padding=1, groups=groups, bias=True)
    theirs = timm_layers.StdConv2d(8, 12, 3, stride=2, padding=1, groups=groups, bias=True)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(2, 8, 9, 9)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = ours(xa), theirs(xb)
    torch.testing.assert_close(ya, yb, atol=1e-5, rtol=1e-5)
    probe = torch.randn(ya.shape)
    (ya * probe).sum().backward()
    (yb * probe).sum().backward()
    torch.testing.assert_close(xa.grad, xb.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours.weight.grad, theirs.weight.grad, atol=1e-4, rtol=1e-4)


def _timm_twin(model: nn.Module) -> nn.Module:
    """The same model with every conv a timm StdConv2d (its class swapped in)."""
    twin = copy.deepcopy(model)
    for m in twin.modules():
        if type(m) is nn.Conv2d:
            m.__class__ = timm_layers.StdConv2d
            m.eps = 1e-6
    return twin


@pytest.mark.parametrize(("backbone", "variant"), [("resnet20", "gn"), ("convnext_atto", "frn")])
def test_backbone_option_equals_timm_std_conv_everywhere(backbone: str, variant: str) -> None:
    """GN+WS (and WS under another layer, on another backbone): same initial weights as
    without the option, and the forward and backward of timm's StdConv2d in every conv."""
    norm = norm_layer(variant)
    torch.manual_seed(1)
    plain = create_backbone(backbone, 10, norm)
    torch.manual_seed(1)
    ws = create_backbone(backbone, 10, norm, weight_standardization=True)
    convs = [m for m in plain.modules() if type(m) is nn.Conv2d and m.weight[0].numel() > 1]
    std = [m for m in ws.modules() if isinstance(m, StdConv2d)]
    assert len(std) == len(convs) > 0
    assert not [m for m in ws.modules() if type(m) is nn.Conv2d]
    for a, b in zip(plain.state_dict().values(), ws.state_dict().values(), strict=True):
        assert torch.equal(a, b)  # no random number drawn, same keys and values
    twin = _timm_twin(plain)
    x = torch.randn(4, 3, 32, 32)
    ya, yb = ws(x), twin(x)
    torch.testing.assert_close(ya, yb, atol=1e-4, rtol=1e-4)
    ya.square().mean().backward()
    yb.square().mean().backward()
    for (name, p), q in zip(ws.named_parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-4, rtol=1e-3, msg=name)
    assert not torch.allclose(plain(x), ya)  # it did change something


def test_norm_layers_keep_their_convolutions() -> None:
    """A plugin layer holding an nn.Conv2d is a norm layer: its conv is not standardized."""

    class ConvNorm(nn.Module):
        paper = "none"
        batch_dependent = False

        def __init__(self, c: int) -> None:
            super().__init__()
            self.mix = nn.Conv2d(c, c, 1)

    model = nn.Sequential(nn.Conv2d(3, 4, 3), ConvNorm(4))
    assert standardize_convs(model) == 1
    assert isinstance(model[0], StdConv2d) and type(model[1].mix) is nn.Conv2d


def test_fan_in_one_convs_are_left_alone() -> None:
    """Standardized, a one-value filter is 0 (a patch-1 ConvNeXt stem on one-channel digits
    then passed nothing on, and GN+WS stayed at chance); such convs keep their weights."""
    assert torch.equal(standardize_weight(torch.randn(4, 1, 1, 1)), torch.zeros(4, 1, 1, 1))
    model = create_backbone(
        "convnext_atto", 10, norm_layer("gn"), in_channels=1, patch_size=1,
        weight_standardization=True,
    )  # fmt: skip
    assert type(model.stem[0]) is nn.Conv2d  # fan-in 1 x 1 x 1
    assert all(isinstance(b.conv_dw, StdConv2d) for b in model.stages[0].blocks)  # fan-in 49
    x = torch.randn(4, 1, 16, 16)
    assert model(x).std(dim=0).max() > 1e-3  # the input reaches the logits


def test_every_backbone_takes_the_option() -> None:
    for name in BACKBONES.names():
        options = BACKBONES.options(name)
        assert options is None or options["weight_standardization"] is False, name
    problems = BACKBONES.check_options("resnet20", {"weight_standardization": "yes"})
    assert problems and "weight_standardization" in problems[0].message
