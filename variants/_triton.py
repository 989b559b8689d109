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
(sample, channel block, position block) tile (element-wise). The moments merge per-block mean
and centred sum of squares (Chan et al.'s parallel update): one read, no E[x²] − E[x]²
cancellation. Tested on the CPU under `TRITON_INTERPRET=1` (tests/variants/test_triton.py),
which is also why kernels are built on first use (`kernels()`): the interpreter is chosen when
`triton.jit` runs.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import triton
import triton.language as tl


def _moments(
    x_ptr,
    mean_ptr,
    var_ptr,
    C,
    W,
    HW,
    s_n,
    s_c,
    s_h,
    s_w,
    BLOCK_C: tl.constexpr,
    BLOCK_HW: tl.constexpr,
):
    n = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = c < C
    mean = tl.zeros([BLOCK_C], dtype=tl.float32)
    m2 = tl.zeros([BLOCK_C], dtype=tl.float32)
    count = tl.zeros([BLOCK_C], dtype=tl.float32)
    for start in range(0, HW, BLOCK_HW):
        hw = start + tl.arange(0, BLOCK_HW)
        ok = c_ok[:, None] & (hw < HW)[None, :]
        off = n * s_n + c[:, None] * s_c + (hw // W)[None, :] * s_h + (hw % W)[None, :] * s_w
        v = tl.load(x_ptr + off, mask=ok, other=0.0).to(tl.float32)
        k = tl.sum(ok.to(tl.float32), axis=1)  # positions in this block
        block_mean = tl.sum(v, axis=1) / tl.maximum(k, 1.0)
        d = tl.where(ok, v - block_mean[:, None], 0.0)
        total = count + k
        delta = block_mean - mean
        mean = mean + delta * (k / tl.maximum(total, 1.0))
        m2 = m2 + tl.sum(d * d, axis=1) + delta * delta * (count * k / tl.maximum(total, 1.0))
        count = total
    tl.store(mean_ptr + n * C + c, mean, mask=c_ok)
    tl.store(var_ptr + n * C + c, m2 / tl.maximum(count, 1.0), mask=c_ok)


def _affine(
    x_ptr,
    y_ptr,
    mean_ptr,
    scale_ptr,
    at_mean_ptr,
    C,
    W,
    HW,
    s_n,
    s_c,
    s_h,
    s_w,
    t_n,
    t_c,
    t_h,
    t_w,
    BLOCK_C: tl.constexpr,
    BLOCK_HW: tl.constexpr,
):
    n = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    hw = tl.program_id(2) * BLOCK_HW + tl.arange(0, BLOCK_HW)
    ok = (c < C)[:, None] & (hw < HW)[None, :]
    h, w = (hw // W)[None, :], (hw % W)[None, :]
    stat = n * C + c
    m = tl.load(mean_ptr + stat, mask=c < C, other=0.0)[:, None]
    a = tl.load(scale_ptr + stat, mask=c < C, other=0.0)[:, None]
    b = tl.load(at_mean_ptr + stat, mask=c < C, other=0.0)[:, None]
    x = tl.load(x_ptr + n * s_n + c[:, None] * s_c + h * s_h + w * s_w, mask=ok, other=0.0)
    y = (x.to(tl.float32) - m) * a + b
    out = y_ptr + n * t_n + c[:, None] * t_c + h * t_h + w * t_w
    tl.store(out, y.to(y_ptr.dtype.element_ty), mask=ok)


def _grad_sums(
    g_ptr,
    x_ptr,
    mean_ptr,
    sg_ptr,
    sgc_ptr,
    C,
    W,
    HW,
    s_n,
    s_c,
    s_h,
    s_w,
    u_n,
    u_c,
    u_h,
    u_w,
    BLOCK_C: tl.constexpr,
    BLOCK_HW: tl.constexpr,
):
    n = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = c < C
    m = tl.load(mean_ptr + n * C + c, mask=c_ok, other=0.0)[:, None]
    s_g = tl.zeros([BLOCK_C], dtype=tl.float32)
    s_gc = tl.zeros([BLOCK_C], dtype=tl.float32)
    for start in range(0, HW, BLOCK_HW):
        hw = start + tl.arange(0, BLOCK_HW)
        ok = c_ok[:, None] & (hw < HW)[None, :]
        h, w = (hw // W)[None, :], (hw % W)[None, :]
        x = tl.load(x_ptr + n * s_n + c[:, None] * s_c + h * s_h + w * s_w, mask=ok, other=0.0)
        g = tl.load(g_ptr + n * u_n + c[:, None] * u_c + h * u_h + w * u_w, mask=ok, other=0.0)
        g = g.to(tl.float32)
        s_g += tl.sum(g, axis=1)
        s_gc += tl.sum(tl.where(ok, g * (x.to(tl.float32) - m), 0.0), axis=1)
    tl.store(sg_ptr + n * C + c, s_g, mask=c_ok)
    tl.store(sgc_ptr + n * C + c, s_gc, mask=c_ok)


def _input_grad(
    x_ptr,
    g_ptr,
    dx_ptr,
    mean_ptr,
    p_ptr,
    q_ptr,
    a_ptr,
    p_scale,
    q_scale,
    C,
    W,
    HW,
    s_n,
    s_c,
    s_h,
    s_w,
    u_n,
    u_c,
    u_h,
    u_w,
    t_n,
    t_c,
    t_h,
    t_w,
    HAS_G: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_HW: tl.constexpr,
):
    n = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    hw = tl.program_id(2) * BLOCK_HW + tl.arange(0, BLOCK_HW)
    ok = (c < C)[:, None] & (hw < HW)[None, :]
    h, w = (hw // W)[None, :], (hw % W)[None, :]
    stat = n * C + c
    m = tl.load(mean_ptr + stat, mask=c < C, other=0.0)[:, None]
    p = tl.load(p_ptr + stat, mask=c < C, other=0.0)[:, None] * p_scale
    q = tl.load(q_ptr + stat, mask=c < C, other=0.0)[:, None] * q_scale
    x = tl.load(x_ptr + n * s_n + c[:, None] * s_c + h * s_h + w * s_w, mask=ok, other=0.0)
    dx = (x.to(tl.float32) - m) * p + q
    if HAS_G:
        a = tl.load(a_ptr + stat, mask=c < C, other=0.0)[:, None]
        g = tl.load(g_ptr + n * u_n + c[:, None] * u_c + h * u_h + w * u_w, mask=ok, other=0.0)
        dx += g.to(tl.float32) * a
    out = dx_ptr + n * t_n + c[:, None] * t_c + h * t_h + w * t_w
    tl.store(out, dx.to(dx_ptr.dtype.element_ty), mask=ok)


def _weighted_sum(
    x_ptr,
    wt_ptr,
    out_ptr,
    N,
    C,
    W,
    HW,
    s_n,
    s_c,
    s_h,
    s_w,
    BLOCK_C: tl.constexpr,
    BLOCK_HW: tl.constexpr,
):
    c = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    hw = tl.program_id(1) * BLOCK_HW + tl.arange(0, BLOCK_HW)
    ok = (c < C)[:, None] & (hw < HW)[None, :]
    off = c[:, None].to(tl.int64) * s_c + (hw // W)[None, :] * s_h + (hw % W)[None, :] * s_w
    acc = tl.zeros([BLOCK_C, BLOCK_HW], dtype=tl.float32)
    sample = x_ptr + off  # advanced by pointer arithmetic (64-bit): no n * s_n overflow
    for n in range(0, N):
        weight = tl.load(wt_ptr + n)
        x = tl.load(sample, mask=ok, other=0.0)
        acc += x.to(tl.float32) * weight
        sample += s_n
    tl.store(out_ptr + c[:, None] * HW + hw[None, :], acc, mask=ok)


KERNELS = ("_moments", "_affine", "_grad_sums", "_input_grad", "_weighted_sum")


@functools.cache
def _build(interpret: bool) -> dict[str, Any]:
    del interpret  # the cache key: `triton.jit` picks the interpreter when it runs
    return {name.lstrip("_"): triton.jit(globals()[name]) for name in KERNELS}


def kernels() -> dict[str, Any]:
    """The jitted kernels by name (interpreted when TRITON_INTERPRET=1, as in the CPU tests)."""
    return _build(os.environ.get("TRITON_INTERPRET", "0") == "1")
