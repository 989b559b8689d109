"""The ConvNeXt-style backbones (docs/variants.md#convnext): with patch 4 and LN2d they are
timm's ConvNeXt in its conv_mlp layout (the dev extra), weights copied in; any layer fits;
placements and the contract's `last_norm_layer` work."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from normbench.models import BACKBONES, create_backbone
from normbench.models.convnext import ConvNeXtBlock
from normbench.variants_api import norm_layer

timm = pytest.importorskip("timm")

RENAME = {"gamma": "layer_scale", "mlp.fc1": "pwconv1", "mlp.fc2": "pwconv2",
          "downsample": "downsampling", "head.norm": "head_norm", "head.fc": "fc"}  # fmt: skip


def _ours_name(timm_name: str) -> str:
    for old, new in RENAME.items():
        timm_name = timm_name.replace(old, new)
    return timm_name


@pytest.mark.parametrize("name", ["convnext_atto"])  # tiny differs in depths and dims only
def test_equals_timm_convnext_conv_mlp(name: str) -> None:
    theirs = timm.create_model(name, num_classes=10, conv_mlp=True, pretrained=False)
    ours = create_backbone(name, 10, norm_layer("layernorm2d"), patch_size=4)
    state = {_ours_name(k): v for k, v in theirs.state_dict().items()}
    assert state.keys() == ours.state_dict().keys()
    with torch.no_grad():
        for p in theirs.parameters():  # off the init: layer scale 1e-6 would hide the blocks
            p.add_(0.05 * torch.randn_like(p))
    ours.load_state_dict({_ours_name(k): v for k, v in theirs.state_dict().items()})
    x = torch.randn(2, 3, 32, 32)
    ya, yb = ours(x), theirs(x)
    torch.testing.assert_close(ya, yb, atol=1e-5, rtol=1e-4)
    ya.square().sum().backward()
    yb.square().sum().backward()
    grads = {_ours_name(k): p.grad for k, p in theirs.named_parameters()}
    for k, p in ours.named_parameters():
        torch.testing.assert_close(p.grad, grads[k], atol=1e-4, rtol=1e-3, msg=k)


def test_parameter_counts() -> None:
    """ConvNeXt-T: timm's 28,589,128 at 1000 classes and patch 4, minus 900 classes of
    head (768 x 900 + 900) and plus the patch-2 stem difference (3 x 96 x (4 - 16))."""
    tiny = create_backbone("convnext_tiny", 100, norm_layer("layernorm2d"))
    assert sum(p.numel() for p in tiny.parameters()) == 28_589_128 - 769 * 900 - 3 * 96 * 12
    atto = create_backbone("convnext_atto", 100, norm_layer("layernorm2d"))
    assert sum(p.numel() for p in atto.parameters()) == 3_405_180


# IN refuses 1x1 maps: the head's norm is a LayerNorm for every layer (the module docstring)
@pytest.mark.parametrize("variant", ["frn", "in"])
def test_every_layer_fits_and_trains(variant: str) -> None:
    model = create_backbone(
        "convnext_atto", 10, norm_layer(variant), in_channels=1, patch_size=1, drop_path_rate=0.1
    )
    x = torch.randn(4, 1, 16, 16)  # digits-sized: stages at 16/8/4/2 pixels
    loss = nn.functional.cross_entropy(model.train()(x), torch.arange(4))
    loss.backward()
    assert torch.isfinite(loss) and model.stem[0].weight.grad is not None
    assert model.eval()(x).shape == (4, 10)


def test_last_norm_layer_replaces_the_block_norms_only() -> None:
    model = create_backbone(
        "convnext_atto", 10, norm_layer("bn"), last_norm_layer=norm_layer("dyt")
    )
    blocks = [m for m in model.modules() if isinstance(m, ConvNeXtBlock)]
    assert len(blocks) == 12 and all(type(b.norm).__name__ == "DynamicTanh2d" for b in blocks)
    assert type(model.stem[1]).__name__ == "BatchNorm2d"
    assert type(model.stages[1].downsampling[0]).__name__ == "BatchNorm2d"


def test_options_are_checked() -> None:
    assert BACKBONES.options("convnext_tiny") == {
        "weight_standardization": False,
        "patch_size": 2,
        "drop_path_rate": 0.0,
        "layer_scale_init": 1e-6,
        "zero_init_residual": False,
    }
    with pytest.raises(ValueError, match="drop_path_rate"):
        create_backbone("convnext_atto", 10, nn.BatchNorm2d, drop_path_rate=1.5)
    with pytest.raises(ValueError, match="patch_size"):
        create_backbone("convnext_atto", 10, nn.BatchNorm2d, patch_size=0)
