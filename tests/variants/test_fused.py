"""`_fused`: per-instance moments, the per-instance affine and its gradients of any order.

Eager CPU runs the chunked kernels (`_InstanceMoments`, `_InstanceAffine`); the chunk size is
patched down so that the tiny test tensors are cut into many chunks along samples and
channels (ragged last chunks, planes larger than a chunk). Under torch.compile or torch.func
the composite path runs; both are compared with autograd on full tensors.
"""

from __future__ import annotations

import pytest
import torch

from normbench.variants import _fused
from normbench.variants._fused import (
    block_moments,
    chunked_moments,
    fused_instance_affine,
    instance_moments,
)

DT = torch.float64
CHUNKS = [1, 5, 7, 24, 1 << 18]  # elements per chunk: below a plane, odd, whole samples, all


@pytest.fixture(params=CHUNKS)
def chunk(request, monkeypatch) -> int:
    monkeypatch.setattr(_fused, "CHUNK_ELEMENTS", request.param)
    return request.param


@pytest.mark.parametrize("channels_last", [False, True])
def test_moments_match_torch(chunk, channels_last) -> None:
    x = torch.randn(5, 3, 4, 2, dtype=DT) * 3 + 100.0
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    for mean, var in (chunked_moments(x), instance_moments(x)):
        torch.testing.assert_close(mean, x.mean(dim=(2, 3)))
        torch.testing.assert_close(var, x.var(dim=(2, 3), unbiased=False))


def _coefficients(mean, var, gamma, beta, w):
    """BN over the whole batch with a per-instance gate: every kind of (N, C) dependency."""
    mu = mean.mean(dim=0)
    batch_var = var.mean(dim=0) + (mean - mu).square().mean(dim=0)
    gate = torch.sigmoid(w * mean)
    scale = gamma * gate * torch.rsqrt(batch_var + 1e-5)
    return scale, beta + (mean - mu) * scale


def _reference(x, gamma, beta, w):
    """The same layer on full tensors, for autograd."""
    mu = x.mean(dim=(0, 2, 3), keepdim=True)
    var = x.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
    gate = torch.sigmoid(w[None, :, None, None] * x.mean(dim=(2, 3), keepdim=True))
    x_hat = (x - mu) / torch.sqrt(var + 1e-5)
    return x_hat * gamma[None, :, None, None] * gate + beta[None, :, None, None]


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("offset", [0.0, 30.0])
def test_fused_affine_output_and_gradients_match_autograd(
    chunk, channels_last, offset, fast, monkeypatch
) -> None:
    monkeypatch.setattr(_fused, "_fast_path", lambda x: fast)
    gen = torch.Generator().manual_seed(chunk)
    x = torch.randn(5, 3, 4, 2, generator=gen, dtype=DT) * 2 + offset
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    params = [torch.rand(3, generator=gen, dtype=DT) + 0.5 for _ in range(3)]
    g = torch.randn(x.shape, generator=gen, dtype=DT)
    leaves = [t.clone().requires_grad_() for t in (x, *params)]
    y = fused_instance_affine(leaves[0], _coefficients, *leaves[1:])
    assert y.is_contiguous(memory_format=torch.channels_last) == channels_last
    ref_leaves = [t.clone().requires_grad_() for t in (x, *params)]
    y_ref = _reference(*ref_leaves)
    torch.testing.assert_close(y, y_ref)
    got = torch.autograd.grad(y, leaves, g)
    expected = torch.autograd.grad(y_ref, ref_leaves, g)
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b)


def test_parameters_without_grad_and_input_without_grad() -> None:
    x = torch.randn(4, 3, 2, 2, dtype=DT)
    gamma = torch.rand(3, dtype=DT, requires_grad=True)
    beta, w = torch.zeros(3, dtype=DT), torch.ones(3, dtype=DT)
    y = fused_instance_affine(x, _coefficients, gamma, beta, w)
    (grad,) = torch.autograd.grad(y.square().sum(), gamma)
    gamma_ref = gamma.detach().clone().requires_grad_()
    (expected,) = torch.autograd.grad(_reference(x, gamma_ref, beta, w).square().sum(), gamma_ref)
    torch.testing.assert_close(grad, expected)


def test_block_moments_match_direct_block_statistics() -> None:
    """Blocks of 3, 3, 1 samples times groups of 2 channels, against the blocks themselves."""
    x = torch.randn(7, 4, 3, 2, dtype=DT) * 2 + 5
    mean, var = x.mean(dim=(2, 3)), x.var(dim=(2, 3), unbiased=False)
    mu, block_var, expand = block_moments(mean, var, 3, 2)
    assert mu.shape == block_var.shape == (3, 2)
    for k, rows in enumerate([slice(0, 3), slice(3, 6), slice(6, 7)]):
        for grp in range(2):
            block = x[rows, 2 * grp : 2 * grp + 2]
            torch.testing.assert_close(mu[k, grp], block.mean())
            torch.testing.assert_close(block_var[k, grp], block.var(unbiased=False))
    assert torch.equal(expand(mu)[6, 3], mu[2, 1]) and expand(mu).shape == (7, 4)


@pytest.mark.parametrize("fast", [True, False])
def test_second_order_gradients_match_finite_differences(fast, monkeypatch) -> None:
    """gradgradcheck through the affine and the coefficient graph (gradient penalties)."""
    monkeypatch.setattr(_fused, "_fast_path", lambda x: fast)
    monkeypatch.setattr(_fused, "CHUNK_ELEMENTS", 5)
    gen = torch.Generator().manual_seed(5)
    x = (torch.randn(3, 2, 3, 2, generator=gen, dtype=DT) + 1).requires_grad_()
    params = [(torch.rand(2, generator=gen, dtype=DT) + 0.5).requires_grad_() for _ in range(3)]

    def fn(*inputs: torch.Tensor) -> torch.Tensor:
        return fused_instance_affine(inputs[0], _coefficients, *inputs[1:])

    assert torch.autograd.gradgradcheck(fn, (x, *params), eps=1e-6, atol=1e-5, rtol=1e-3)


def test_bf16_autocast_keeps_statistics_in_fp32() -> None:
    """Under bf16 autocast the block matmul and the coefficients stay fp32: the output is the
    fp32 computation on the same (bf16) input, rounded once to bf16."""
    x = (torch.randn(8, 4, 3, 3) * 2 + 3).bfloat16()
    gamma, beta = torch.rand(4) + 0.5, torch.randn(4)

    def blocks(mean, var, weight, bias):
        from normbench.variants._fused import block_affine

        mu, block_var, expand = block_moments(mean, var, 3, 2)
        assert mu.dtype == torch.float32
        return block_affine(mean, mu, block_var, expand, weight, bias, 1e-5)

    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = fused_instance_affine(x, blocks, gamma, beta)
    expected = fused_instance_affine(x.float(), blocks, gamma, beta)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y, expected.bfloat16(), atol=0, rtol=0)


def test_fast_path_only_in_eager_cpu_without_transforms() -> None:
    x = torch.empty(2, 3, 4, 4)
    assert _fused._fast_path(x)
    assert not _fused._fast_path(torch.empty(2, 3, 4, 4, device="meta"))
    assert torch.func.vmap(lambda t: torch.tensor(_fused._fast_path(t)))(x).logical_not().all()


def test_one_chunk_off_cpu() -> None:
    """Off the CPU (meta stands in for CUDA here) the whole tensor is one chunk: a GPU pays
    kernel launches per chunk, not page faults per temporary."""
    x = torch.empty(128, 64, 32, 32, device="meta")
    assert len(list(_fused._chunks(x))) == 1
    assert len(list(_fused._chunks(torch.empty(128, 64, 32, 32)))) > 1
