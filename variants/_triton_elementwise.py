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
indexes (n, c, h, w) through the tensors' own strides). The indexing, loads and
stores are `_triton_tiles`'s. Tested on the CPU under `TRITON_INTERPRET=1`
(tests/variants/test_triton.py); imported on the first launch only, as `_triton`, since the
interpreter is chosen when `triton.jit` runs.
"""

from __future__ import annotations

import triton
import triton.language as tl

from ._triton_tiles import channel_block, load, load_stat, positions, store, store_stat, tile

DYT, FRN, EVO_S0, EVO_B0 = 0, 1, 2, 3
COEFFICIENTS = {DYT: 3, FRN: 3, EVO_S0: 3, EVO_B0: 5}  # K per kind


@triton.jit
def _coefficients(coef_ptr, NC, n, c, C):
    """The first three coefficient planes, c_0, c_1, c_2, as (BLOCK_C, 1) columns."""
    c0 = load_stat(coef_ptr, n, c, C)
    c1 = load_stat(coef_ptr + NC, n, c, C)
    c2 = load_stat(coef_ptr + 2 * NC, n, c, C)
    return c0, c1, c2


@triton.jit
def _b0_denominator(x, L, R, v, ok):
    """EvoNorm-B0's d = max(L, v·x + R) (1 outside the tile) and the share b of its gradient
    that goes to the right branch: 1, 0, or ½ on a tie (as `torch.maximum`)."""
    right = v * x + R
    d = tl.where(ok, tl.maximum(L, right), 1.0)
    b = tl.where(right > L, 1.0, tl.where(right == L, 0.5, 0.0))
    return d, b


@triton.jit
def pointwise_forward(
    x_ptr, y_ptr, coef_ptr, NC, C, W, HW, xs, ys,
    KIND: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr,
):  # fmt: skip
    n, c, h, w, ok = tile(C, W, HW, BLOCK_C, BLOCK_HW)
    c0, c1, c2 = _coefficients(coef_ptr, NC, n, c, C)
    x = load(x_ptr, xs, n, c, h, w, ok)
    if KIND == 0:  # DyT
        y = c1 * (2.0 * tl.sigmoid(2.0 * c0 * x) - 1.0) + c2
    elif KIND == 1:  # FRN + TLU
        y = tl.maximum(x * c0 + c1, c2)
    elif KIND == 2:  # EvoNorm-S0
        y = x * tl.sigmoid(c0 * x) * c1 + c2
    else:  # EvoNorm-B0
        gamma = load_stat(coef_ptr + 3 * NC, n, c, C)
        beta = load_stat(coef_ptr + 4 * NC, n, c, C)
        y = gamma * x / _b0_denominator(x, c0, c1, c2, ok)[0] + beta
    store(y_ptr, ys, n, c, h, w, ok, y)


@triton.jit
def pointwise_grad_sums(
    g_ptr, x_ptr, dx_ptr, coef_ptr, sums_ptr, NC, C, W, HW, xs, gs, ts,
    KIND: tl.constexpr, WRITE_DX: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr,
):  # fmt: skip
    n, c = channel_block(BLOCK_C)
    c0, c1, c2 = _coefficients(coef_ptr, NC, n, c, C)
    if KIND == 3:
        c3 = load_stat(coef_ptr + 3 * NC, n, c, C)
    else:
        c3 = tl.zeros([BLOCK_C, 1], dtype=tl.float32)
    s0 = tl.zeros([BLOCK_C], dtype=tl.float32)
    s1 = tl.zeros([BLOCK_C], dtype=tl.float32)
    s2 = tl.zeros([BLOCK_C], dtype=tl.float32)
    s3 = tl.zeros([BLOCK_C], dtype=tl.float32)
    s4 = tl.zeros([BLOCK_C], dtype=tl.float32)
    for start in range(0, HW, BLOCK_HW):
        h, w, ok = positions(c, start, C, W, HW, BLOCK_HW)
        x = load(x_ptr, xs, n, c, h, w, ok)
        g = load(g_ptr, gs, n, c, h, w, ok)
        if KIND == 0:  # DyT: ∂/∂α, ∂/∂γ, ∂/∂β
            t = 2.0 * tl.sigmoid(2.0 * c0 * x) - 1.0
            slope = g * c1 * (1.0 - t * t)  # dL/d(αx)
            s0 += tl.sum(tl.where(ok, slope * x, 0.0), axis=1)
            s1 += tl.sum(tl.where(ok, g * t, 0.0), axis=1)
            s2 += tl.sum(g, axis=1)
            if WRITE_DX:
                store(dx_ptr, ts, n, c, h, w, ok, slope * c0)
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
            d, b = _b0_denominator(x, c0, c1, c2, ok)
            u = -g * c3 * x / (d * d)  # dL/d(denominator)
            s0 += tl.sum(tl.where(ok, u * (1.0 - b), 0.0), axis=1)
            s1 += tl.sum(tl.where(ok, u * b, 0.0), axis=1)
            s2 += tl.sum(tl.where(ok, u * b * x, 0.0), axis=1)
            s3 += tl.sum(tl.where(ok, g * x / d, 0.0), axis=1)
            s4 += tl.sum(g, axis=1)
    store_stat(sums_ptr, n, c, C, s0)
    store_stat(sums_ptr + NC, n, c, C, s1)
    store_stat(sums_ptr + 2 * NC, n, c, C, s2)
    if KIND == 3:
        store_stat(sums_ptr + 3 * NC, n, c, C, s3)
        store_stat(sums_ptr + 4 * NC, n, c, C, s4)


@triton.jit
def pointwise_input_grad(
    g_ptr, x_ptr, dx_ptr, coef_ptr, mean_ptr, p_ptr, q_ptr, p_scale, q_scale,
    NC, C, W, HW, xs, gs, ts, KIND: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr,
):  # fmt: skip
    n, c, h, w, ok = tile(C, W, HW, BLOCK_C, BLOCK_HW)
    c0, c1, c2 = _coefficients(coef_ptr, NC, n, c, C)
    m = load_stat(mean_ptr, n, c, C)
    p = load_stat(p_ptr, n, c, C) * p_scale
    q = load_stat(q_ptr, n, c, C) * q_scale
    x = load(x_ptr, xs, n, c, h, w, ok)
    g = load(g_ptr, gs, n, c, h, w, ok)
    if KIND == 1:  # FRN + TLU
        direct = tl.where(x * c0 + c1 >= c2, g * c0, 0.0)
    elif KIND == 2:  # EvoNorm-S0: d(x·sigmoid(v·x))/dx·k
        sig = tl.sigmoid(c0 * x)
        direct = g * c1 * sig * (1.0 + c0 * x * (1.0 - sig))
    else:  # EvoNorm-B0: γ/d − γ·x/d²·∂d/∂x, ∂d/∂x = v on the right branch
        gamma = load_stat(coef_ptr + 3 * NC, n, c, C)
        d, b = _b0_denominator(x, c0, c1, c2, ok)
        direct = g * gamma / d - g * gamma * x / (d * d) * c2 * b
    store(dx_ptr, ts, n, c, h, w, ok, direct + (x - m) * p + q)
