"""FourThingsNorm2d (docs/variants.md#fourthings) against a numpy port of the official TF algorithm
and its special cases (BN, BGN, GN)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from normbench.variants.bgn import BatchGroupNorm2d
from normbench.variants.fourthings import FourThingsNorm2d

DT = torch.float64
EPS = 1e-5


def _np_train(x, gamma, beta, epg, cpg, mov, m):
    """Official training step: raw moments, one-pass biased variance per block, buffer EMA."""
    n, c = x.shape[:2]
    a, q = x.mean(axis=(2, 3)), (x**2).mean(axis=(2, 3))
    mov = ((1 - m) * mov[0] + m * a.mean(0), (1 - m) * mov[1] + m * q.mean(0))
    y = np.empty_like(x)
    for s in range(0, n, epg):
        for c0 in range(0, c, cpg):
            blk = (slice(s, s + epg), slice(c0, c0 + cpg))
            mu, sq = a[blk].mean(), q[blk].mean()
            y[blk] = (x[blk] - mu) / np.sqrt(sq - mu * mu + EPS)
    return y * gamma[None, :, None, None] + beta[None, :, None, None], mov


def _np_eval(x, gamma, beta, cpg, mov, alpha):
    """Official inference with example weighing: mix the moments, var = s - mu^2."""
    n, c = x.shape[:2]
    a, q = x.mean(axis=(2, 3)), (x**2).mean(axis=(2, 3))
    y = np.empty_like(x)
    for i in range(n):
        for c0 in range(0, c, cpg):
            ch = slice(c0, c0 + cpg)
            mu = (1 - alpha) * mov[0][ch].mean() + alpha * a[i, ch].mean()
            sq = (1 - alpha) * mov[1][ch].mean() + alpha * q[i, ch].mean()
            y[i, ch] = (x[i, ch] - mu) / np.sqrt(sq - mu * mu + EPS)
    return y * gamma[None, :, None, None] + beta[None, :, None, None]


@pytest.mark.parametrize(
    ("options", "batch", "epg", "cpg"),
    [
        ({"examples_per_group": 2, "channels_per_group": 2, "eval_example_weight": 0.3}, 8, 2, 2),
        ({"examples_per_group": 3, "channel_groups": 2, "eval_example_weight": 0.5}, 8, 3, 4),
        ({}, 6, 6, 1),
        ({"examples_per_group": 1, "channels_per_group": 4, "eval_example_weight": 1.0}, 4, 1, 4),
        ({"examples_per_group": 50, "channels_per_group": 99}, 5, 5, 8),
    ],
)
def test_matches_numpy_port(options, batch, epg, cpg) -> None:
    torch.manual_seed(batch + epg + cpg)
    layer = FourThingsNorm2d(8, momentum=0.01, dtype=DT, **options)
    assert layer.channels_per_group == cpg
    with torch.no_grad():
        layer.weight.uniform_(0.5, 1.5)
        layer.bias.normal_()
    gamma, beta = layer.weight.detach().numpy(), layer.bias.detach().numpy()
    mov = (np.zeros(8), np.ones(8))
    for step in range(3):
        x = torch.randn(batch, 8, 3, 3, dtype=DT) * 2 + step
        y_ref, mov = _np_train(x.numpy(), gamma, beta, epg, cpg, mov, 0.01)
        np.testing.assert_allclose(layer(x).detach().numpy(), y_ref, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(layer.running_mean.numpy(), mov[0], rtol=1e-12)
    np.testing.assert_allclose(layer.running_sq_mean.numpy(), mov[1], rtol=1e-12)
    layer.eval()
    x = torch.randn(3, 8, 3, 3, dtype=DT) + 0.5
    alpha = options.get("eval_example_weight", 0.0)
    y_ref = _np_eval(x.numpy(), gamma, beta, cpg, mov, alpha)
    np.testing.assert_allclose(layer(x).detach().numpy(), y_ref, rtol=1e-9, atol=1e-9)


def test_cpg1_whole_batch_equals_batchnorm_in_training() -> None:
    torch.manual_seed(0)
    ours, ref = FourThingsNorm2d(5, dtype=DT), nn.BatchNorm2d(5, dtype=DT)
    for _ in range(2):
        x = torch.randn(6, 5, 4, 4, dtype=DT) * 3
        x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
        y1, y2 = ours(x1), ref(x2)
        torch.testing.assert_close(y1, y2)
        w = torch.randn_like(x)
        (y1 * w).sum().backward()
        (y2 * w).sum().backward()
        torch.testing.assert_close(x1.grad, x2.grad)
    torch.testing.assert_close(ours.weight.grad, ref.weight.grad)
    explicit = FourThingsNorm2d(5, examples_per_group=6, dtype=DT)
    x = torch.randn(6, 5, 2, 2, dtype=DT)
    torch.testing.assert_close(explicit(x), ref(x))


def test_grouped_whole_batch_equals_bgn_in_training() -> None:
    torch.manual_seed(1)
    ours = FourThingsNorm2d(8, channel_groups=4, dtype=DT)
    bgn = BatchGroupNorm2d(8, num_groups=4, dtype=DT)
    for _ in range(2):
        x = torch.randn(4, 8, 3, 3, dtype=DT)
        torch.testing.assert_close(ours(x), bgn(x))


def test_alpha_one_single_examples_is_group_norm_in_eval() -> None:
    layer = FourThingsNorm2d(8, channel_groups=2, eval_example_weight=1.0, dtype=DT).eval()
    x = torch.randn(3, 8, 4, 4, dtype=DT) * 5 + 2
    torch.testing.assert_close(layer(x), F.group_norm(x, 2, eps=EPS))


def test_momentum_none_cumulative_raw_moments() -> None:
    layer = FourThingsNorm2d(3, momentum=None, dtype=DT)
    xs = [torch.randn(4, 3, 2, 2, dtype=DT) + i for i in range(3)]
    for x in xs:
        layer(x)
    sq = torch.stack([(x**2).mean(dim=(0, 2, 3)) for x in xs]).mean(0)
    torch.testing.assert_close(layer.running_sq_mean, sq)
    assert int(layer.num_batches_tracked) == 3


def test_initial_buffers_and_eval_changes_nothing() -> None:
    layer = FourThingsNorm2d(4, eval_example_weight=0.2)
    assert torch.equal(layer.running_sq_mean, torch.ones(4))
    assert not hasattr(layer, "running_var")
    layer(torch.randn(4, 4, 3, 3))
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    layer.eval()
    layer(torch.randn(2, 4, 3, 3))
    assert all(torch.equal(v, before[k]) for k, v in layer.state_dict().items())


@pytest.mark.parametrize(
    "options",
    [
        {"channels_per_group": 2, "channel_groups": 2},
        {"channels_per_group": 3},
        {"examples_per_group": 0},
        {"eval_example_weight": 1.5},
        {"eval_example_weight": float("nan")},
    ],
)
def test_invalid_options_raise(options) -> None:
    with pytest.raises(ValueError, match="FourThingsNorm2d"):
        FourThingsNorm2d(8, **options)


def test_channel_groups_follow_the_official_rule() -> None:
    # cpg = max(C // channel_groups, 1): 8 // 3 = 2 channels, so 4 groups, shown in the repr.
    layer = FourThingsNorm2d(8, channel_groups=3)
    assert (layer.channels_per_group, layer.num_groups) == (2, 4)
    assert "num_groups=4" in repr(layer)
    with pytest.raises(ValueError, match="num_features % channels_per_group == 0"):
        FourThingsNorm2d(9, channel_groups=2)  # cpg = 4 does not divide 9


def test_channels_last_matches_contiguous() -> None:
    a = FourThingsNorm2d(8, examples_per_group=2, channels_per_group=2, eval_example_weight=0.3)
    b = FourThingsNorm2d(8, examples_per_group=2, channels_per_group=2, eval_example_weight=0.3)
    x = torch.randn(6, 8, 3, 3)
    xc = x.contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(a(x), b(xc))
    a.eval(), b.eval()
    torch.testing.assert_close(a(x), b(xc))


def test_half_input_with_fp32_parameters_keeps_dtype() -> None:
    layer = FourThingsNorm2d(8, channels_per_group=2, eval_example_weight=0.5)
    x = torch.randn(4, 8, 3, 3).to(torch.bfloat16)
    assert layer(x).dtype == torch.bfloat16 and layer.running_mean.dtype == torch.float32
    assert layer.eval()(x).dtype == torch.bfloat16
