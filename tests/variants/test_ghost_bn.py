"""GhostBatchNorm2d (docs/variants.md#ghost-bn) against nn.BatchNorm2d run chunk by chunk, as the
official loop."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from normbench.variants.ghost_bn import GhostBatchNorm2d

DT = torch.float64


def _pair(channels: int, momentum: float | None, **options) -> tuple[nn.Module, nn.Module]:
    ours = GhostBatchNorm2d(channels, momentum=momentum, dtype=DT, **options)
    ref = nn.BatchNorm2d(channels, momentum=momentum, dtype=DT)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        ours.weight.copy_(torch.rand(channels, generator=g, dtype=DT) + 0.5)
        ours.bias.copy_(torch.randn(channels, generator=g, dtype=DT))
        ref.weight.copy_(ours.weight)
        ref.bias.copy_(ours.bias)
    return ours, ref


def _check_against_chunks(ours, ref, batch, chunks_of, steps=3, hw=(3, 2)) -> None:
    """Run both for `steps` batches; `chunks_of(x)` splits x the way the official loop does."""
    channels = ours.num_features
    for step in range(steps):
        x = torch.randn(batch, channels, *hw, dtype=DT) * (step + 1) + step
        x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
        w = torch.randn_like(x)
        y1 = ours(x1)
        y2 = torch.cat([ref(chunk) for chunk in chunks_of(x2)])
        torch.testing.assert_close(y1, y2)
        (y1 * w).sum().backward()
        (y2 * w).sum().backward()
        torch.testing.assert_close(x1.grad, x2.grad)
    torch.testing.assert_close(ours.weight.grad, ref.weight.grad)
    torch.testing.assert_close(ours.bias.grad, ref.bias.grad)
    torch.testing.assert_close(ours.running_mean, ref.running_mean, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ours.running_var, ref.running_var, rtol=1e-12, atol=1e-12)
    assert int(ours.num_batches_tracked) == int(ref.num_batches_tracked)
    ours.eval(), ref.eval()
    x = torch.randn(5, channels, *hw, dtype=DT)
    torch.testing.assert_close(ours(x), ref(x))


@pytest.mark.parametrize(
    ("batch", "ghost", "momentum"),
    [(12, 4, 0.1), (10, 4, 0.1), (11, 5, None), (12, 4, None), (9, 2, 0.0), (8, 4, 1.0)],
)
def test_ghost_batch_size_equals_chunked_batchnorm(batch, ghost, momentum) -> None:
    torch.manual_seed(batch * 31 + ghost)
    ours, ref = _pair(4, momentum, ghost_batch_size=ghost)
    _check_against_chunks(ours, ref, batch, lambda x: x.split(ghost))


@pytest.mark.parametrize(("batch", "splits"), [(12, 3), (10, 4), (10, 6), (7, 7)])
def test_num_splits_has_torch_chunk_semantics(batch, splits) -> None:
    torch.manual_seed(batch * 17 + splits)
    ours, ref = _pair(3, 0.1, num_splits=splits, ghost_batch_size=2)
    _check_against_chunks(ours, ref, batch, lambda x: x.chunk(splits))
    # torch.chunk(6) of 10 gives 5 chunks of 2: the counter counts real chunks.
    assert int(ours.num_batches_tracked) == 3 * len(torch.empty(batch).chunk(splits))


def test_one_ghost_batch_equals_batchnorm_exactly() -> None:
    torch.manual_seed(5)
    ours, ref = _pair(4, 0.1, ghost_batch_size=16)
    for _ in range(2):
        x = torch.randn(16, 4, 2, 2, dtype=DT)
        assert torch.equal(ours(x), ref(x))
    assert torch.equal(ours.running_var, ref.running_var)
    assert int(ours.num_batches_tracked) == 2


def test_closed_form_ema_by_hand() -> None:
    """r_K = (1-m)^K r_0 + sum_b m (1-m)^(K-b) s_b with unbiased variances
    (docs/variants.md#ghost-bn)."""
    layer = GhostBatchNorm2d(2, ghost_batch_size=3, momentum=0.2, dtype=DT)
    x = torch.randn(8, 2, 2, 2, dtype=DT)
    layer(x)
    m, rm, rv = 0.2, torch.zeros(2, dtype=DT), torch.ones(2, dtype=DT)
    chunks = [x[0:3], x[3:6], x[6:8]]
    k = len(chunks)
    rm_k, rv_k = (1 - m) ** k * rm, (1 - m) ** k * rv
    for b, chunk in enumerate(chunks, start=1):
        flat = chunk.transpose(0, 1).reshape(2, -1)
        rm_k = rm_k + m * (1 - m) ** (k - b) * flat.mean(1)
        rv_k = rv_k + m * (1 - m) ** (k - b) * flat.var(1, unbiased=True)
    torch.testing.assert_close(layer.running_mean, rm_k)
    torch.testing.assert_close(layer.running_var, rv_k)
    assert int(layer.num_batches_tracked) == 3


def test_channels_last_matches_contiguous() -> None:
    a = GhostBatchNorm2d(4, ghost_batch_size=3)
    b = GhostBatchNorm2d(4, ghost_batch_size=3)
    x = torch.randn(8, 4, 3, 3)
    torch.testing.assert_close(a(x), b(x.contiguous(memory_format=torch.channels_last)))
    torch.testing.assert_close(a.running_var, b.running_var)


def test_repr_shows_effective_split() -> None:
    assert "ghost_batch_size=128" in repr(GhostBatchNorm2d(4))
    text = repr(GhostBatchNorm2d(4, num_splits=4))
    assert "ghost_batch_size=128 (ignored), num_splits=4 (torch.chunk semantics)" in text


@pytest.mark.parametrize(
    "options", [{"ghost_batch_size": 0}, {"num_splits": 0}, {"num_splits": 1.5}, {"momentum": -1}]
)
def test_invalid_options_raise(options) -> None:
    with pytest.raises(ValueError, match="GhostBatchNorm2d"):
        GhostBatchNorm2d(4, **options)
