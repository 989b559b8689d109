"""Triton kernels of the element-wise non-linear layers on CUDA (DyT, FRN with its TLU,
EvoNorm-S0, EvoNorm-B0), so a training step moves about BN's bytes and launches a handful of
kernels (docs/variants.md#memory-traffic, #kernel-launches).

Each layer is y = f(x; c_0 .. c_{K-1}) element by element, with K per-(n, c) coefficients
stacked in one (K, N, C) contiguous float32 tensor `coef` (the compiled coefficient region's
output, `_elementwise`), `KIND` picking f at compile time:

    DYT    (α, γ, β):        y = γ·tanh(α·x) + β                     tanh(z) = 2·sigmoid(2z) − 1
    FRN    (A, β, τ):        y = max(x·A + β, τ)                      A = γ / sqrt(ν² + ε)
    EVO_S0 (v, k, β):        y = x·sigmoid(v·x)·k + β                  k = γ / group std
    EVO_B0 (L, R, v, γ, β):  y = γ·x / max(L, v·x + R) + β             L batch std, R instance std

Three kernels serve them all:
* `pointwise_forward`: read x, write y.
* `pointwise_grad_sums`: read g and x, write the K per-(n, c) sums Σ_hw g·∂y/∂c_k (the
  gradient of `coef`); for DyT, which has no statistics, also dx (one backward pass).
* `pointwise_input_grad`: read g and x, write dx = g·∂y/∂x + (x − m)·p·p_scale + q·q_scale,
  the second term the statistics' (the per-instance moments' gradients, as `_triton`'s
  `input_grad`).

Ties: FRN's TLU sends the gradient of y = τ to y (as `torch.where(y >= τ, y, τ)`); B0's max
splits a tie's gradient in halves between its branches (as `torch.maximum`). Arithmetic in
fp32 whatever the input dtype; outputs in the input's dtype and memory format (every kernel
indexes (n, c, h, w) through the tensors' own strides). Tested on the CPU under
`TRITON_INTERPRET=1` (tests/variants/test_triton.py); built on first use (`kernels()`), as
`_triton`'s, since the interpreter is chosen when `triton.jit` runs.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import triton
import triton.language as tl

DYT, FRN, EVO_S0, EVO_B0 = 0, 1, 2, 3
COEFFICIENTS = {DYT: 3, FRN: 3, EVO_S0: 3, EVO_B0: 5}  # K per kind


def _pointwise_forward(
    x_ptr,
    y_ptr,
    coef_ptr,
    NC,
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
    KIND: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_HW: tl.constexpr,
):
    n = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    hw = tl.program_id(2) * BLOCK_HW + tl.arange(0, BLOCK_HW)
    c_ok = c < C
    ok = c_ok[:, None] & (hw < HW)[None, :]
    h, w = (hw // W)[None, :], (hw % W)[None, :]
    base = coef_ptr + n * C + c
    c0 = tl.load(base, mask=c_ok, other=0.0)[:, None]
    c1 = tl.load(base + NC, mask=c_ok, other=0.0)[:, None]
    c2 = tl.load(base + 2 * NC, mask=c_ok, other=0.0)[:, None]
    x = tl.load(x_ptr + n * s_n + c[:, None] * s_c + h * s_h + w * s_w, mask=ok, other=0.0)
    x = x.to(tl.float32)
    if KIND == 0:  # DyT
        y = c1 * (2.0 * tl.sigmoid(2.0 * c0 * x) - 1.0) + c2
    elif KIND == 1:  # FRN + TLU
        y = tl.maximum(x * c0 + c1, c2)
    elif KIND == 2:  # EvoNorm-S0
        y = x * tl.sigmoid(c0 * x) * c1 + c2
    else:  # EvoNorm-B0
        gamma = tl.load(base + 3 * NC, mask=c_ok, other=0.0)[:, None]
        beta = tl.load(base + 4 * NC, mask=c_ok, other=0.0)[:, None]
        y = gamma * x / tl.where(ok, tl.maximum(c0, c2 * x + c1), 1.0) + beta
    out = y_ptr + n * t_n + c[:, None] * t_c + h * t_h + w * t_w
    tl.store(out, y.to(y_ptr.dtype.element_ty), mask=ok)


def _pointwise_grad_sums(
    g_ptr,
    x_ptr,
    dx_ptr,
    coef_ptr,
    sums_ptr,
    NC,
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
    KIND: tl.constexpr,
    WRITE_DX: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_HW: tl.constexpr,
):
    n = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = c < C
    base = coef_ptr + n * C + c
    c0 = tl.load(base, mask=c_ok, other=0.0)[:, None]
    c1 = tl.load(base + NC, mask=c_ok, other=0.0)[:, None]
    c2 = tl.load(base + 2 * NC, mask=c_ok, other=0.0)[:, None]
    if KIND == 3:
        c3 = tl.load(base + 3 * NC, mask=c_ok, other=0.0)[:, None]
    else:
        c3 = tl.zeros([BLOCK_C, 1], dtype=tl.float32)
    s0 = tl.zeros([BLOCK_C], dtype=tl.float32)
    s1 = tl.zeros([BLOCK_C], dtype=tl.float32)
    s2 = tl.zeros([BLOCK_C], dtype=tl.float32)
    s3 = tl.zeros([BLOCK_C], dtype=tl.float32)
    s4 = tl.zeros([BLOCK_C], dtype=tl.float32)
    for start in range(0, HW, BLOCK_HW):
        hw = start + tl.arange(0, BLOCK_HW)
        ok = c_ok[:, None] & (hw < HW)[None, :]
        h, w = (hw // W)[None, :], (hw % W)[None, :]
        x = tl.load(x_ptr + n * s_n + c[:, None] * s_c + h * s_h + w * s_w, mask=ok, other=0.0)
        g = tl.load(g_ptr + n * u_n + c[:, None] * u_c + h * u_h + w * u_w, mask=ok, other=0.0)
        x, g = x.to(tl.float32), g.to(tl.float32)
        if KIND == 0:  # DyT: ∂/∂α, ∂/∂γ, ∂/∂β
            t = 2.0 * tl.sigmoid(2.0 * c0 * x) - 1.0
            slope = g * c1 * (1.0 - t * t)  # dL/d(αx)
            s0 += tl.sum(tl.where(ok, slope * x, 0.0), axis=1)
            s1 += tl.sum(tl.where(ok, g * t, 0.0), axis=1)
            s2 += tl.sum(g, axis=1)
            if WRITE_DX:
                out = dx_ptr + n * t_n + c[:, None] * t_c + h * t_h + w * t_w
                tl.store(out, (slope * c0).to(dx_ptr.dtype.element_ty), mask=ok)
        elif KIND == 1:  # FRN + TLU: ∂/∂A, ∂/∂β, ∂/∂τ
            through = ok & (x * c0 + c1 >= c2)  # the TLU passes y (ties included)
            s0 += tl.sum(tl.where(through, g * x, 0.0), axis=1)
            s1 += tl.sum(tl.where(through, g, 0.0), axis=1)
            s2 += tl.sum(tl.where(through, 0.0, g), axis=1)
        elif KIND == 2:  # EvoNorm-S0: ∂/∂v, ∂/∂k, ∂/∂β
            sig = tl.sigmoid(c0 * x)
            s0 += tl.sum(tl.where(ok, g * c1 * x * x * sig * (1.0 - sig), 0.0), axis=1)
            s1 += tl.sum(tl.where(ok, g * x * sig, 0.0), axis=1)
            s2 += tl.sum(g, axis=1)
        else:  # EvoNorm-B0: ∂/∂L, ∂/∂R, ∂/∂v, ∂/∂γ, ∂/∂β
            right = c2 * x + c1
            d = tl.where(ok, tl.maximum(c0, right), 1.0)
            b = tl.where(right > c0, 1.0, tl.where(right == c0, 0.5, 0.0))  # right's share
            u = -g * c3 * x / (d * d)  # dL/d(denominator)
            s0 += tl.sum(tl.where(ok, u * (1.0 - b), 0.0), axis=1)
            s1 += tl.sum(tl.where(ok, u * b, 0.0), axis=1)
            s2 += tl.sum(tl.where(ok, u * b * x, 0.0), axis=1)
            s3 += tl.sum(tl.where(ok, g * x / d, 0.0), axis=1)
            s4 += tl.sum(g, axis=1)
    out = sums_ptr + n * C + c
    tl.store(out, s0, mask=c_ok)
    tl.store(out + NC, s1, mask=c_ok)
    tl.store(out + 2 * NC, s2, mask=c_ok)
    if KIND == 3:
        tl.store(out + 3 * NC, s3, mask=c_ok)
        tl.store(out + 4 * NC, s4, mask=c_ok)


def _pointwise_input_grad(
    g_ptr,
    x_ptr,
    dx_ptr,
    coef_ptr,
    mean_ptr,
    p_ptr,
    q_ptr,
    p_scale,
    q_scale,
    NC,
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
    KIND: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_HW: tl.constexpr,
):
    n = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    hw = tl.program_id(2) * BLOCK_HW + tl.arange(0, BLOCK_HW)
    c_ok = c < C
    ok = c_ok[:, None] & (hw < HW)[None, :]
    h, w = (hw // W)[None, :], (hw % W)[None, :]
    base = coef_ptr + n * C + c
    c0 = tl.load(base, mask=c_ok, other=0.0)[:, None]
    c1 = tl.load(base + NC, mask=c_ok, other=0.0)[:, None]
    c2 = tl.load(base + 2 * NC, mask=c_ok, other=0.0)[:, None]
    m = tl.load(mean_ptr + n * C + c, mask=c_ok, other=0.0)[:, None]
    p = tl.load(p_ptr + n * C + c, mask=c_ok, other=0.0)[:, None] * p_scale
    q = tl.load(q_ptr + n * C + c, mask=c_ok, other=0.0)[:, None] * q_scale
    x = tl.load(x_ptr + n * s_n + c[:, None] * s_c + h * s_h + w * s_w, mask=ok, other=0.0)
    g = tl.load(g_ptr + n * u_n + c[:, None] * u_c + h * u_h + w * u_w, mask=ok, other=0.0)
    x, g = x.to(tl.float32), g.to(tl.float32)
    if KIND == 1:  # FRN + TLU
        direct = tl.where(x * c0 + c1 >= c2, g * c0, 0.0)
    elif KIND == 2:  # EvoNorm-S0: d(x·sigmoid(v·x))/dx·k
        sig = tl.sigmoid(c0 * x)
        direct = g * c1 * sig * (1.0 + c0 * x * (1.0 - sig))
    else:  # EvoNorm-B0: γ/d − γ·x/d²·∂d/∂x, ∂d/∂x = v on the right branch
        gamma = tl.load(base + 3 * NC, mask=c_ok, other=0.0)[:, None]
        right = c2 * x + c1
        d = tl.where(ok, tl.maximum(c0, right), 1.0)
        b = tl.where(right > c0, 1.0, tl.where(right == c0, 0.5, 0.0))
        direct = g * gamma / d - g * gamma * x / (d * d) * c2 * b
    dx = direct + (x - m) * p + q
    out = dx_ptr + n * t_n + c[:, None] * t_c + h * t_h + w * t_w
    tl.store(out, dx.to(dx_ptr.dtype.element_ty), mask=ok)


KERNELS = ("_pointwise_forward", "_pointwise_grad_sums", "_pointwise_input_grad")


@functools.cache
def _build(interpret: bool) -> dict[str, Any]:
    del interpret  # the cache key: `triton.jit` picks the interpreter when it runs
    return {name.lstrip("_"): triton.jit(globals()[name]) for name in KERNELS}


def kernels() -> dict[str, Any]:
    """The jitted kernels by name (interpreted when TRITON_INTERPRET=1, as in the CPU tests)."""
    return _build(os.environ.get("TRITON_INTERPRET", "0") == "1")
