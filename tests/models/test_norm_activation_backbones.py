"""Normalization-activation layers (EvoNorm-B0/S0, FRN with TLU) in the torchvision ImageNet
ResNets, the detectors built on them, the NAS-Bench-201 networks, the SNGAN generator and timm's
norm+act slots: no activation takes such a layer's output, and with any other norm the models
are what they were.

The independent check runs the model and watches tensors, not the backbone code: every
activation module's input is compared, by value, with every norm layer's output. An activation
*directly after* a norm is one whose input equals that norm's output (nothing in between; a
NAS-Bench-201 node that adds zeros or passes a skip connection changes no value). With EvoNorm
no activation may take an EvoNorm's output, and exactly the activations that took BN's output in
the BN model must be gone: every other activation (after a residual sum, after a pooling) stays.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from normbench.cli import main
from normbench.models import create_backbone
from normbench.models.nas201 import RESNET_CELL, ReLUConvNorm
from normbench.variants_api import is_norm_activation, norm_layer

ACTIVATIONS = (nn.ReLU, nn.SiLU)
SUITES = Path(__file__).resolve().parents[2] / "suites"
# node 1 = skip of node 0, node 2 = conv(node 1) + pool(node 0), node 3 = conv(node 2) alone
SKIP_CHAIN = "|skip_connect~0|+|nor_conv_1x1~1|avg_pool_3x3~0|+|nor_conv_3x3~2|none~0|none~1|"
# node 1 = pool(node 0): the ReLU of the conv on node 1 follows a pooling, not a norm
POOL_FIRST = "|avg_pool_3x3~0|+|nor_conv_3x3~1|none~0|+|nor_conv_3x3~2|skip_connect~0|none~1|"


def _watch(model: nn.Module, run: Callable[[], Any]) -> dict[str, int]:
    """Run `run()` with hooks: {'calls': activation calls, 'after_norm': those whose input
    equals a plain norm's output, 'after_norm_act': ... a normalization-activation layer's}."""
    outputs: list[tuple[torch.Tensor, bool]] = []
    inputs: list[torch.Tensor] = []

    def norm_hook(m: nn.Module, args: Any, out: torch.Tensor) -> None:
        outputs.append((out.detach().clone(), is_norm_activation(m)))

    def act_hook(m: nn.Module, args: Any) -> None:  # before an in-place ReLU overwrites it
        inputs.append(args[0].detach().clone())

    handles = [
        m.register_forward_hook(norm_hook)
        if hasattr(m, "num_features")
        else m.register_forward_pre_hook(act_hook)
        for m in model.modules()
        if hasattr(m, "num_features") or isinstance(m, ACTIVATIONS)
    ]
    try:
        with torch.no_grad():
            run()
    finally:
        for h in handles:
            h.remove()

    def key(t: torch.Tensor) -> tuple[Any, ...]:
        return (*t.shape, float(t.double().sum()))

    def fed(norm_act: bool) -> int:
        by_key: dict[tuple[Any, ...], list[torch.Tensor]] = {}
        for o, na in outputs:
            if na == norm_act:
                by_key.setdefault(key(o), []).append(o)
        return sum(any(torch.equal(o, x) for o in by_key.get(key(x), [])) for x in inputs)

    return {"calls": len(inputs), "after_norm": fed(False), "after_norm_act": fed(True)}


def _check_dropped_exactly_the_pairs(
    build: Callable[[str], nn.Module],
    run: Callable[[nn.Module], Any],
    variants: tuple[str, ...] = ("evonorm_b0", "frn"),
) -> None:
    torch.manual_seed(0)
    bn_model = build("bn")
    bn = _watch(bn_model, lambda: run(bn_model))
    assert bn["after_norm"] > 0 and bn["after_norm_act"] == 0
    for variant in variants:
        model = build(variant)
        seen = _watch(model, lambda m=model: run(m))
        assert seen["after_norm_act"] == 0, (variant, seen)
        assert seen["calls"] == bn["calls"] - bn["after_norm"], (variant, seen, bn)


def _image(model: nn.Module, size: int = 16) -> Any:
    return model(torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1)))


@pytest.mark.parametrize("backbone", ["imagenet_resnet18", "imagenet_resnet50"])
def test_imagenet_resnets_drop_only_the_relus_after_norm_activation_layers(backbone: str) -> None:
    _check_dropped_exactly_the_pairs(lambda v: create_backbone(backbone, 10, norm_layer(v)), _image)


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_imagenet_resnets_with_bn_are_torchvisions(arch: str) -> None:
    """Same modules, same state_dict and the same output as torchvision's own model built
    from the same seed (its blocks with their one shared ReLU)."""
    import torchvision

    torch.manual_seed(0)
    ours = create_backbone(f"imagenet_{arch}", 10, norm_layer("bn"))
    torch.manual_seed(0)
    theirs = getattr(torchvision.models, arch)(num_classes=10)
    kinds = [(n, type(m).__name__.removeprefix("NormAct")) for n, m in ours.named_modules()]
    assert kinds == [(n, type(m).__name__) for n, m in theirs.named_modules()]
    for (k, a), (k2, b) in zip(ours.state_dict().items(), theirs.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(a, b), k
    torch.testing.assert_close(_image(ours), _image(theirs), rtol=0, atol=0)


@pytest.mark.parametrize("genotype", [RESNET_CELL, SKIP_CHAIN, POOL_FIRST])
def test_nas201_drops_only_the_relus_that_take_a_norm_activation_output(genotype: str) -> None:
    _check_dropped_exactly_the_pairs(
        lambda v: create_backbone(
            "nas201", 10, norm_layer(v), genotype=genotype, channels=4, cells_per_stage=2
        ),
        _image,
    )


def test_nas201_resnet_cell_reads_as_the_post_activation_block_with_norm_activations() -> None:
    """Hand-written: ReLU(x) -> conv -> norm-act -> conv -> norm-act, plus x. The first cell's
    input is the stem's norm-act (no ReLU), the other cells' a sum (ReLU); the reduction block's
    second conv has no ReLU, its first one takes a cell's sum; the head's ReLU is gone. With BN
    every operation starts with its ReLU and the head keeps it, as before."""
    for variant, relu in (("evonorm_b0", False), ("bn", True)):
        model: Any = create_backbone(
            "nas201", 10, norm_layer(variant), channels=4, cells_per_stage=2
        )
        first = [isinstance(m[0], nn.ReLU) for m in model.modules() if isinstance(m, ReLUConvNorm)]
        # in order: 2 cells (conv on node 0, conv on node 1), a reduction block (conv_a,
        # conv_b), 2 cells, a reduction block, 2 cells: 16 ReLU-conv-norm units
        expected = [True] * 16 if relu else [False, False] + [True, False] * 7
        assert first == expected, variant
        assert isinstance(model.lastact[1], nn.ReLU) == relu


def test_detectors_drop_the_heads_relus_after_norm_activation_layers() -> None:
    from normbench.tasks.detection.models import build_detector, small_layout

    def build(variant: str) -> nn.Module:
        layout = small_layout(32, width=8)
        return build_detector("mask_rcnn", "resnet18", 3, norm_layer(variant), layout=layout)

    def run(model: nn.Module) -> Any:
        return model.eval()([torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(2))])

    _check_dropped_exactly_the_pairs(build, run, ("evonorm_b0",))


def test_the_generator_puts_no_relu_after_a_conditional_norm_activation_layer() -> None:
    from normbench.tasks.generation.models import GenBlock

    class Shift(nn.Module):  # a branch-indexed plugin's stand-in: y picks nothing here
        def __init__(self, c: int, norm_activation: bool) -> None:
            super().__init__()
            self.num_features, self.norm_activation = c, norm_activation

        def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return x - 0.5  # negative values: a ReLU would change them

    x, y = torch.randn(2, 3, 4, 4), torch.zeros(2, dtype=torch.long)
    up = nn.functional.interpolate
    for norm_activation in (True, False):
        torch.manual_seed(0)
        block = GenBlock(3, 3, lambda c, na=norm_activation: Shift(c, na))
        act = (lambda t: t) if norm_activation else torch.relu
        h = block.c1(up(act(x - 0.5), scale_factor=2))
        expected = block.c2(act(h - 0.5)) + block.c_sc(up(x, scale_factor=2))
        torch.testing.assert_close(block(x, y), expected)


def test_shipped_detection_suite_trains_with_evonorm_b0(capsys: pytest.CaptureFixture) -> None:
    """The user's path: `normbench train --suite suites/detection_digits.yaml --set ...` with
    EvoNorm-B0 in the body and the heads, shrunk to 6 batches of 3 epochs; its training loss
    (the detector's summed losses, recorded per epoch) falls by more than a quarter."""
    from normbench.suite.loader import load_suite

    suite = SUITES / "detection_digits.yaml"
    sets = ["variants=[evonorm_b0]", "seeds=1", "train.limit_batches=6", "train.probe=false",
            "dataset.n_train=60", "dataset.n_test=8"]  # fmt: skip
    (trial,) = load_suite(suite, overrides=sets).trials()
    argv = ["train", "--suite", str(suite), "--trial", trial.trial_id, "--json"]
    with pytest.raises(SystemExit) as exc:
        main(argv + [a for s in sets for a in ("--set", s)])
    assert exc.value.code == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3]
    losses = [r["train_loss"] for r in records]
    assert losses[-1] < 0.75 * losses[0], losses
