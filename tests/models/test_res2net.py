"""Res2Net-50 (26w x 4s): the paper's parameter count, and the same function as timm's
independent implementation when given the same weights."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from normbench.models import create_backbone


def test_parameter_count_is_the_papers() -> None:
    model = create_backbone("imagenet_res2net50", 1000, nn.BatchNorm2d)
    count = sum(p.numel() for p in model.parameters())
    assert count == 25_699_120  # Res2Net paper Table: 25.70M; timm res2net50_26w_4s
    assert count / 1e6 == pytest.approx(25.70, abs=0.005)


def test_matches_timm_with_the_same_weights() -> None:
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    ours = create_backbone("imagenet_res2net50", 10, nn.BatchNorm2d).eval()
    ref = timm.create_model("res2net50_26w_4s", pretrained=False, num_classes=10).eval()
    theirs = list(ref.state_dict().values())
    mine = ours.state_dict()
    assert [tuple(v.shape) for v in mine.values()] == [tuple(v.shape) for v in theirs]
    # Random running statistics, so eval mode exercises every norm.
    for v in theirs:
        if v.is_floating_point():
            v.copy_(torch.rand_like(v) + 0.5)
    ours.load_state_dict(dict(zip(mine, theirs, strict=True)))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), rtol=1e-4, atol=1e-4)


def test_norm_layer_everywhere() -> None:
    made: list[int] = []

    def norm(c: int) -> nn.Module:
        made.append(c)
        return nn.BatchNorm2d(c)

    model = create_backbone("imagenet_res2net50", 10, norm)
    assert len(made) == sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    # stem 1 + per block (bn1 + 3 scale norms + bn3) + 4 shortcuts
    assert len(made) == 1 + 16 * 5 + 4
