"""Triton kernels of the per-instance affine normalisation (`_fused`) on CUDA. Each kernel reads
its full-size operands once and writes at most one full-size result, so a layer built on
`fused_instance_affine` moves about as many bytes as BN's own kernels
(docs/variants.md#memory-traffic): forward `moments` (read x) and `affine` (read x, write y);
backward `grad_sums` (read g, x) and `input_grad` (read g, x, write dx; it also applies the
moments' 2/(H·W) and 1/(H·W) to their gradients, which would be two more launches). UBN's
similarity adds `sample_weighted_sum` (read x). Statistics and arithmetic are fp32 whatever the
input dtype (fp16, bf16 or fp32; float64 takes the composite path); outputs have the input's
dtype and memory format: every kernel indexes (n, c, h, w) through the tensors' own strides.

A program owns a (sample, channel block) and walks the positions in blocks (reductions), or a
(sample, channel block, position block) tile (element-wise); the indexing, loads and stores
are `_triton_tiles`'s. The moments merge per-block mean and centred sum of squares (Chan et
al.'s parallel update): one read, no E[x²] − E[x]² cancellation. Tested on the CPU under
`TRITON_INTERPRET=1` (tests/variants/test_triton.py), which is also why this module is
imported on the first launch only (`_kernels._launch`): the interpreter is chosen when
`triton.jit` runs.
"""

from __future__ import annotations

import triton
import triton.language as tl

from ._triton_tiles import channel_block, load, load_stat, positions, store, store_stat, tile


@triton.jit
def moments(x_ptr, mean_ptr, var_ptr, C, W, HW, xs, BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr):
    n, c = channel_block(BLOCK_C)
    mean = tl.zeros([BLOCK_C], dtype=tl.float32)
    m2 = tl.zeros([BLOCK_C], dtype=tl.float32)
    count = tl.zeros([BLOCK_C], dtype=tl.float32)
    for start in range(0, HW, BLOCK_HW):
        h, w, ok = positions(c, start, C, W, HW, BLOCK_HW)
        v = load(x_ptr, xs, n, c, h, w, ok)
        k = tl.sum(ok.to(tl.float32), axis=1)  # positions in this block
        block_mean = tl.sum(v, axis=1) / tl.maximum(k, 1.0)
        d = tl.where(ok, v - block_mean[:, None], 0.0)
        total = count + k
        delta = block_mean - mean
        mean = mean + delta * (k / tl.maximum(total, 1.0))
        m2 = m2 + tl.sum(d * d, axis=1) + delta * delta * (count * k / tl.maximum(total, 1.0))
        count = total
    store_stat(mean_ptr, n, c, C, mean)
    store_stat(var_ptr, n, c, C, m2 / tl.maximum(count, 1.0))


@triton.jit
def affine(
    x_ptr, y_ptr, mean_ptr, scale_ptr, at_mean_ptr, C, W, HW, xs, ys,
    BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr,
):  # fmt: skip
    n, c, h, w, ok = tile(C, W, HW, BLOCK_C, BLOCK_HW)
    m = load_stat(mean_ptr, n, c, C)
    a = load_stat(scale_ptr, n, c, C)
    b = load_stat(at_mean_ptr, n, c, C)
    store(y_ptr, ys, n, c, h, w, ok, (load(x_ptr, xs, n, c, h, w, ok) - m) * a + b)


@triton.jit
def grad_sums(
    g_ptr, x_ptr, mean_ptr, sg_ptr, sgc_ptr, C, W, HW, xs, gs,
    BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr,
):  # fmt: skip
    n, c = channel_block(BLOCK_C)
    m = load_stat(mean_ptr, n, c, C)
    s_g = tl.zeros([BLOCK_C], dtype=tl.float32)
    s_gc = tl.zeros([BLOCK_C], dtype=tl.float32)
    for start in range(0, HW, BLOCK_HW):
        h, w, ok = positions(c, start, C, W, HW, BLOCK_HW)
        x = load(x_ptr, xs, n, c, h, w, ok)
        g = load(g_ptr, gs, n, c, h, w, ok)
        s_g += tl.sum(g, axis=1)
        s_gc += tl.sum(tl.where(ok, g * (x - m), 0.0), axis=1)
    store_stat(sg_ptr, n, c, C, s_g)
    store_stat(sgc_ptr, n, c, C, s_gc)


@triton.jit
def input_grad(
    x_ptr, g_ptr, dx_ptr, mean_ptr, p_ptr, q_ptr, a_ptr, p_scale, q_scale, C, W, HW, xs, gs, ts,
    HAS_G: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr,
):  # fmt: skip
    n, c, h, w, ok = tile(C, W, HW, BLOCK_C, BLOCK_HW)
    m = load_stat(mean_ptr, n, c, C)
    p = load_stat(p_ptr, n, c, C) * p_scale
    q = load_stat(q_ptr, n, c, C) * q_scale
    dx = (load(x_ptr, xs, n, c, h, w, ok) - m) * p + q
    if HAS_G:
        dx += load(g_ptr, gs, n, c, h, w, ok) * load_stat(a_ptr, n, c, C)
    store(dx_ptr, ts, n, c, h, w, ok, dx)


@triton.jit
def weighted_sum(
    x_ptr, wt_ptr, out_ptr, N, C, W, HW, xs, BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr
):
    c = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    hw = tl.program_id(1) * BLOCK_HW + tl.arange(0, BLOCK_HW)
    ok = (c < C)[:, None] & (hw < HW)[None, :]
    off = c[:, None].to(tl.int64) * xs[1] + (hw // W)[None, :] * xs[2] + (hw % W)[None, :] * xs[3]
    acc = tl.zeros([BLOCK_C, BLOCK_HW], dtype=tl.float32)
    sample = x_ptr + off  # advanced by pointer arithmetic (64-bit): no n * s_n overflow
    for n in range(0, N):
        weight = tl.load(wt_ptr + n)
        x = tl.load(sample, mask=ok, other=0.0)
        acc += x.to(tl.float32) * weight
        sample += xs[0]
    tl.store(out_ptr + c[:, None] * HW + hw[None, :], acc, mask=ok)
