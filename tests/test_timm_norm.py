"""The timm adapter against timm itself: normbench's `bn` in timm's norm+act slots is timm's
own BatchNormAct2d (same keys, same outputs), every variant fills every slot with timm's
activation, and models that cannot take it raise instead of swapping silently."""

from __future__ import annotations

import pytest
import torch

timm = pytest.importorskip("timm")

from normbench.timm_norm import create_model, norm_act_layer  # noqa: E402
from normbench.variants import BUILTIN_VARIANTS  # noqa: E402


@pytest.fixture(autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: threads only add contention
    yield
    torch.set_num_threads(previous)


def test_bn_matches_timm_batchnormact() -> None:
    """EfficientNet: norm+act slots with SiLU and without activation, bound by timm."""
    torch.manual_seed(0)
    reference = timm.create_model("efficientnet_b0", num_classes=5)
    ours = create_model("efficientnet_b0", "bn", num_classes=5)
    assert ours.state_dict().keys() == reference.state_dict().keys()
    ours.load_state_dict(reference.state_dict())
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    for training in (True, False):
        reference.train(training)
        ours.train(training)
        torch.testing.assert_close(ours(x), reference(x), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(ours.bn1.running_mean, reference.bn1.running_mean)


@pytest.mark.parametrize("variant", list(BUILTIN_VARIANTS))
def test_every_variant_fills_every_slot_with_timms_activation(variant) -> None:
    with torch.device("meta"):
        reference = timm.create_model("efficientnet_b0")
        ours = create_model("efficientnet_b0", variant)
    slots = {n: m for n, m in reference.named_modules() if type(m).__name__ == "BatchNormAct2d"}
    assert slots
    for name, ref in slots.items():
        mine = ours.get_submodule(name)
        assert isinstance(mine, BUILTIN_VARIANTS[variant]), name
        if getattr(mine, "norm_activation", False):  # EvoNorm, FRN with its TLU
            assert type(mine.act) is torch.nn.Identity, name  # their own nonlinearity only
        else:
            assert type(mine.act) is type(ref.act), name  # SiLU where timm has SiLU, else Identity


@pytest.mark.parametrize(("variant", "timms"), [("frn", "frntlu"), ("evonorm_b0", "evonormb0")])
def test_norm_activation_variants_follow_timms_own_layers(variant: str, timms: str) -> None:
    """timm's own EvoNorm2dB0 / FilterResponseNormTlu2d in regnetx_002 (timm picks them by
    name) swallow the model's activation: no act follows them, and a slot without activation
    (`apply_act=False`: each block's last conv) turns FRN's TLU off. normbench's variants in
    the same slots: no activation after any of them, FRN's TLU where timm's has one; EvoNorm
    keeps its nonlinearity everywhere (timm's without it is not a layer normbench offers)."""
    with torch.device("meta"):
        reference = timm.create_model("regnetx_002", norm_layer=timms)
        ours = create_model("regnetx_002", variant)
    slots = {n: m for n, m in reference.named_modules() if hasattr(m, "apply_act")}
    assert len(slots) == 44 and not any(hasattr(m, "act") for m in slots.values())
    assert sum(m.apply_act for m in slots.values()) == 27  # 17 slots without activation
    for name, ref in slots.items():
        mine = ours.get_submodule(name)
        assert type(mine.act) is torch.nn.Identity, name
        if variant == "frn":
            assert mine.apply_act == ref.apply_act and mine.norm_activation == ref.apply_act, name
    acts = [n for n, m in ours.named_modules() if isinstance(m, torch.nn.ReLU)]
    assert acts == [n for n, m in reference.named_modules() if isinstance(m, torch.nn.ReLU)]


def test_frn_without_its_tlu_is_a_norm_with_the_models_activation() -> None:
    """FRN's own `apply_act: false` (no TLU in any slot) is not timm's per-slot keyword: the
    slots then act as timm's FilterResponseNormAct2d, with the model's activation where the
    model asks for one (regnetx_002's ReLU in timm's own build)."""
    with torch.device("meta"):
        reference = timm.create_model("regnetx_002", norm_layer="frn")
        ours = timm.create_model("regnetx_002", norm_layer=norm_act_layer("frn", apply_act=False))
    slots = {n: m for n, m in reference.named_modules() if hasattr(m, "act")}
    assert len(slots) == 44
    for name, ref in slots.items():
        mine = ours.get_submodule(name)
        assert mine.tau is None and not mine.norm_activation, name
        assert type(mine.act) is type(ref.act), name  # ReLU in 27 slots, Identity in 17


@pytest.mark.parametrize("variant", ["ubn"])
def test_trains_in_a_regnet(variant) -> None:
    model = create_model("regnetx_002", variant, num_classes=3, variant_options={})
    y = model(torch.randn(2, 3, 64, 64))
    y.sum().backward()
    assert y.shape == (2, 3) and torch.isfinite(model.stem.conv.weight.grad).all()


def test_options_reach_the_layer_and_bad_names_fail() -> None:
    with torch.device("meta"):
        model = timm.create_model("efficientnet_b0", norm_layer=norm_act_layer("gn", num_groups=4))
    assert model.bn1.num_groups == 4
    with pytest.raises(Exception, match="nope"):
        norm_act_layer("nope")


def test_models_that_cannot_take_it_raise() -> None:
    with pytest.raises(ValueError, match="a norm\\+act layer would apply it twice"):
        create_model("resnet18", "ubn")  # norm_layer(C), then its own ReLU
    # the same through timm itself, as the README shows it: never a second ReLU after bn2
    with pytest.raises(ValueError, match=r"Pass normbench.variants_api.norm_layer\('ubn'\)"):
        timm.create_model("resnet18", norm_layer=norm_act_layer("ubn"))
    with pytest.raises(ValueError, match="does not take a norm_layer argument"):
        create_model("mobilenetv3_small_050", "ubn")  # sets norm_layer itself


def test_timm_convert_sync_batchnorm_keeps_the_activation() -> None:
    """timm's conversion of a normbench `bn` model gives timm's SyncBatchNormAct with the same
    activation in every slot, and the same eval logits (SyncBatchNorm in eval is BN); before,
    a bare SyncBatchNorm dropped regnetx_002's 27 activations."""
    from timm.layers import SyncBatchNormAct, convert_sync_batchnorm

    model = create_model("regnetx_002", "bn", num_classes=3).eval()
    slots = {n: type(m.act) for n, m in model.named_modules() if hasattr(m, "act")}
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    before = model(x)
    converted = convert_sync_batchnorm(model).eval()
    for name, act in slots.items():
        layer = converted.get_submodule(name)
        assert isinstance(layer, SyncBatchNormAct) and isinstance(layer.act, act), name
    assert not any(type(m) is torch.nn.SyncBatchNorm for m in converted.modules()), (
        "a bare SyncBatchNorm"
    )
    torch.testing.assert_close(converted(x), before)
