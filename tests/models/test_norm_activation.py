"""Normalization-activation layers (EvoNorm-B0/S0, FRN with its TLU) replace a norm *and* the
ReLU after it, so the backbones put no ReLU after them; and ResNet-20's pre-activation form is
the network EvoNorm's official code builds.

The independent statement checked: EvoNorm's official ResNet (tensorflow/tpu,
`models/official/resnet/resnet_model.py`, read at commit
7dc921f846c9e4071f3884b768a7ddf521272a49) refuses the post-activation form ("Evonorms require
the pre-activation form"); its pre-activation residual block is

    a = evonorm(x); shortcut = x (or a 1x1 conv of a); out = conv3x3(evonorm(conv3x3(a)))
    return out + shortcut

with nothing applied to an EvoNorm's output but the next convolution, nothing after the sum,
a stem convolution without norm and one final evonorm before the average pooling. The tests
read the consumers of every layer off the traced graph (torch.fx), not off the backbone code.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import fx, nn

from normbench.engine.build import build_model
from normbench.models.small_resnet import PadShortcut
from normbench.spec import TrialSpec
from normbench.variants_api import VARIANTS

NORM_ACT = [("evonorm_b0", {}), ("evonorm_s0", {"num_groups": 2}), ("frn", {})]


class _LeafTracer(fx.Tracer):
    """Keeps convs, norms, ReLUs and the padding shortcut as single graph nodes (an
    nn.Identity is traced through: its consumer is the next layer)."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        leaves = (nn.Conv2d, nn.ReLU, nn.Linear, nn.AdaptiveAvgPool2d, PadShortcut)
        if isinstance(m, nn.Identity):
            return False  # torch.nn modules are leaves by default
        return (
            isinstance(m, leaves)
            or hasattr(m, "num_features")
            or super().is_leaf_module(m, qualname)
        )


def _model(
    variant: str, options: dict[str, Any], name: str = "resnet20", **backbone: Any
) -> nn.Module:
    backbone = {"width": 4, **backbone} if name == "resnet20" else backbone
    spec = TrialSpec(
        variant=variant, backbone=name, dataset="digits", epochs=1,
        variant_options=options, backbone_options=backbone,
    )  # fmt: skip
    return build_model(spec, num_classes=10, in_channels=1)  # the path a trial builds


def _consumers(model: nn.Module, picked: Any) -> dict[str, list[str]]:
    """{name of each graph node `picked(node, module)` selects: the kinds of what its output
    flows into: 'conv', 'relu', 'pad' (the option-A shortcut), 'add', 'pool', or a norm's
    class name}."""
    graph = _LeafTracer().trace(model)
    modules = dict(model.named_modules())

    def module(node: fx.Node) -> nn.Module | None:
        return modules[str(node.target)] if node.op == "call_module" else None

    def kind(node: fx.Node) -> str:
        m = module(node)
        if m is None:
            return getattr(node.target, "__name__", str(node.target))
        kinds = {nn.Conv2d: "conv", nn.ReLU: "relu", PadShortcut: "pad"}
        return kinds.get(
            type(m), "pool" if isinstance(m, nn.AdaptiveAvgPool2d) else type(m).__name__
        )

    return {
        str(n.name if module(n) is None else n.target): sorted(kind(u) for u in n.users)
        for n in graph.nodes
        if picked(n, module(n))
    }


def _layers(cls: type) -> Any:
    return lambda node, m: isinstance(m, cls)


def _sums(node: fx.Node, m: nn.Module | None) -> bool:
    return m is None and getattr(node.target, "__name__", "") == "add"


@pytest.mark.parametrize(("variant", "options"), NORM_ACT)
def test_preact_resnet20_places_norm_activation_layers_as_evonorms_official_resnet(
    variant: str, options: dict[str, Any]
) -> None:
    model = _model(variant, options, preact=True)
    cls = VARIANTS.get(variant).obj
    consumers = _consumers(model, _layers(cls))
    assert len(consumers) == 2 * 9 + 1  # norm1, norm2 of 9 blocks, one final; none in the stem
    final = consumers.pop("final.0")
    assert final == ["pool"]  # the final norm-activation feeds the average pooling directly
    for name, users in consumers.items():
        # norm1 feeds conv1 (and, in block 1 of stages 2-3, no shortcut: option A pads x);
        # norm2 feeds conv2: an EvoNorm's output goes into a convolution and nowhere else
        assert users == ["conv"], (name, users)
    stem = [type(m).__name__ for m in model.stem]
    assert stem == ["Conv2d"]
    assert not any(isinstance(m, nn.ReLU) for m in model.modules())  # no extra activation
    # each block's sum is its output, with no activation after it (the official return): it
    # feeds the next block (its norm1, its identity or padded shortcut) or the final norm
    sums = _consumers(model, _sums)
    assert len(sums) == 9
    assert set().union(*map(set, sums.values())) == {cls.__name__, "add", "pad"}


def test_bn_keeps_its_relu_in_both_forms() -> None:
    """BN is a norm only: the ReLU of each BN-ReLU pair stays (19 pairs either form)."""
    bn = VARIANTS.get("bn").obj
    for preact in (False, True):
        consumers = _consumers(_model("bn", {}, preact=preact), _layers(bn))
        relu_fed = [n for n, users in consumers.items() if users == ["relu"]]
        # post-activation: stem + norm1 of 9 blocks (norm2 feeds the sum); pre-activation:
        # norm1, norm2 of 9 blocks and the final one
        assert len(relu_fed) == (10 if not preact else 19), consumers


@pytest.mark.parametrize(("variant", "options"), NORM_ACT)
def test_post_activation_resnet20_puts_no_relu_after_norm_activation_layers(
    variant: str, options: dict[str, Any]
) -> None:
    consumers = _consumers(_model(variant, options), _layers(VARIANTS.get(variant).obj))
    assert consumers["stem.1"] == ["add", "conv"]  # -> block 1: conv1 and identity shortcut
    for i in range(3):
        assert consumers[f"layer1.{i}.norm1"] == ["conv"]
        assert consumers[f"layer1.{i}.norm2"] == ["add"]  # before the sum, as BN's


def test_frn_without_its_tlu_is_a_norm_and_keeps_the_relu() -> None:
    consumers = _consumers(_model("frn", {"apply_act": False}), _layers(VARIANTS.get("frn").obj))
    assert consumers["stem.1"] == ["relu"] and consumers["layer2.1.norm1"] == ["relu"]


def test_preact_resnet20_trains_with_evonorm_b0() -> None:
    """The pre-activation form runs forward and backward with EvoNorm-B0 and a B shortcut
    (a 1x1 conv of the pre-activated input, no norm)."""
    torch.manual_seed(0)
    model = _model("evonorm_b0", {}, preact=True, shortcut="B")
    x = torch.randn(8, 1, 16, 16)
    model(x).sum().backward()
    first = model.layer2[0]
    assert isinstance(first.shortcut, nn.Conv2d) and first.pad_shortcut is None
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize(
    "backbone", ["vgg11", "inceptionv4", "resnet50", "preact_resnet18", "imagenet_res2net50"]
)
def test_other_backbones_put_no_relu_after_evonorm(backbone: str) -> None:
    evonorm = VARIANTS.get("evonorm_s0").obj
    consumers = _consumers(_model("evonorm_s0", {}, backbone), _layers(evonorm))
    assert consumers and not any("relu" in users for users in consumers.values()), consumers
    bn = _consumers(_model("bn", {}, backbone), _layers(VARIANTS.get("bn").obj))
    assert sum("relu" in users for users in bn.values()) > len(bn) / 2  # BN keeps its ReLUs
