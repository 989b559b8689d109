"""Triton kernels of the element-wise non-linear layers on CUDA, so a step moves about BN's
bytes (docs/variants.md#memory-traffic):

* DyT (`dyt.py`): forward `dyt_forward` (read x, write y); backward `dyt_backward` (read g and
  x, write dx and three per-(n, c) sums).
* FRN with TLU (`frn.py`, its ν² from `_triton._moments`): forward `frn_forward` (read x,
  write z = max(x·A + β, τ)); backward `frn_grad_sums` (read g and x: three per-(n, c) sums)
  and `frn_input_grad` (read g and x, write dx). A tie y = τ sends the gradient to y, as
  `torch.clamp` does on the CPU path.
* EvoNorm-S0 (`evonorm.py`, its group statistics from `_triton._moments`): forward
  `evo_s0_forward` (read x, write y = x·sigmoid(v·x)·k + β, k = γ/group std per (n, c));
  backward `evo_s0_grad_sums` (read g and x: three per-(n, c) sums) and `evo_s0_input_grad`
  (read g and x, write dx, the group statistics' term included).

Arithmetic in fp32 whatever the input dtype;
outputs in the input's dtype and memory format (every kernel indexes (n, c, h, w) through the
tensors' own strides), as the per-instance affine's kernels (`_triton.py`). tanh is written
as 2·sigmoid(2z) − 1 (Triton's portable sigmoid). Tested on the CPU under
`TRITON_INTERPRET=1` (tests/variants/test_triton.py).
"""

from __future__ import annotations

import functools
import os
from typing import Any

import triton
import triton.language as tl


def _dyt_forward(
    x_ptr,
    y_ptr,
    alpha_ptr,
    weight_ptr,
    bias_ptr,
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
    a = tl.load(alpha_ptr).to(tl.float32)
    gamma = tl.load(weight_ptr + c, mask=c < C, other=0.0).to(tl.float32)[:, None]
    beta = tl.load(bias_ptr + c, mask=c < C, other=0.0).to(tl.float32)[:, None]
    x = tl.load(x_ptr + n * s_n + c[:, None] * s_c + h * s_h + w * s_w, mask=ok, other=0.0)
    t = 2.0 * tl.sigmoid(2.0 * a * x.to(tl.float32)) - 1.0
    out = y_ptr + n * t_n + c[:, None] * t_c + h * t_h + w * t_w
    tl.store(out, (gamma * t + beta).to(y_ptr.dtype.element_ty), mask=ok)


def _dyt_backward(
    g_ptr,
    x_ptr,
    dx_ptr,
    st_ptr,
    sg_ptr,
    sa_ptr,
    alpha_ptr,
    weight_ptr,
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
    BLOCK_C: tl.constexpr,
    BLOCK_HW: tl.constexpr,
):
    n = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = c < C
    a = tl.load(alpha_ptr).to(tl.float32)
    gamma = tl.load(weight_ptr + c, mask=c_ok, other=0.0).to(tl.float32)[:, None]
    s_t = tl.zeros([BLOCK_C], dtype=tl.float32)
    s_g = tl.zeros([BLOCK_C], dtype=tl.float32)
    s_a = tl.zeros([BLOCK_C], dtype=tl.float32)
    for start in range(0, HW, BLOCK_HW):
        hw = start + tl.arange(0, BLOCK_HW)
        ok = c_ok[:, None] & (hw < HW)[None, :]
        h, w = (hw // W)[None, :], (hw % W)[None, :]
        x = tl.load(x_ptr + n * s_n + c[:, None] * s_c + h * s_h + w * s_w, mask=ok, other=0.0)
        g = tl.load(g_ptr + n * u_n + c[:, None] * u_c + h * u_h + w * u_w, mask=ok, other=0.0)
        x, g = x.to(tl.float32), g.to(tl.float32)
        t = 2.0 * tl.sigmoid(2.0 * a * x) - 1.0
        slope = g * gamma * (1.0 - t * t)  # dL/d(αx)
        out = dx_ptr + n * t_n + c[:, None] * t_c + h * t_h + w * t_w
        tl.store(out, (slope * a).to(dx_ptr.dtype.element_ty), mask=ok)
        s_t += tl.sum(tl.where(ok, g * t, 0.0), axis=1)
        s_g += tl.sum(g, axis=1)
        s_a += tl.sum(tl.where(ok, slope * x, 0.0), axis=1)
    tl.store(st_ptr + n * C + c, s_t, mask=c_ok)
    tl.store(sg_ptr + n * C + c, s_g, mask=c_ok)
    tl.store(sa_ptr + n * C + c, s_a, mask=c_ok)


def _frn_forward(
    x_ptr,
    z_ptr,
    a_ptr,
    bias_ptr,
    tau_ptr,
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
    a = tl.load(a_ptr + n * C + c, mask=c < C, other=0.0)[:, None]
    beta = tl.load(bias_ptr + c, mask=c < C, other=0.0)[:, None]
    tau = tl.load(tau_ptr + c, mask=c < C, other=0.0)[:, None]
    x = tl.load(x_ptr + n * s_n + c[:, None] * s_c + h * s_h + w * s_w, mask=ok, other=0.0)
    z = tl.maximum(x.to(tl.float32) * a + beta, tau)
    out = z_ptr + n * t_n + c[:, None] * t_c + h * t_h + w * t_w
    tl.store(out, z.to(z_ptr.dtype.element_ty), mask=ok)


def _frn_grad_sums(
    g_ptr,
    x_ptr,
    a_ptr,
    bias_ptr,
    tau_ptr,
    sgx_ptr,
    sg_ptr,
    stau_ptr,
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
    a = tl.load(a_ptr + n * C + c, mask=c_ok, other=0.0)[:, None]
    beta = tl.load(bias_ptr + c, mask=c_ok, other=0.0)[:, None]
    tau = tl.load(tau_ptr + c, mask=c_ok, other=0.0)[:, None]
    s_gx = tl.zeros([BLOCK_C], dtype=tl.float32)
    s_g = tl.zeros([BLOCK_C], dtype=tl.float32)
    s_tau = tl.zeros([BLOCK_C], dtype=tl.float32)
    for start in range(0, HW, BLOCK_HW):
        hw = start + tl.arange(0, BLOCK_HW)
        ok = c_ok[:, None] & (hw < HW)[None, :]
        h, w = (hw // W)[None, :], (hw % W)[None, :]
        x = tl.load(x_ptr + n * s_n + c[:, None] * s_c + h * s_h + w * s_w, mask=ok, other=0.0)
        g = tl.load(g_ptr + n * u_n + c[:, None] * u_c + h * u_h + w * u_w, mask=ok, other=0.0)
        x, g = x.to(tl.float32), g.to(tl.float32)
        through = ok & (x * a + beta >= tau)  # the TLU passes y (ties included)
        s_gx += tl.sum(tl.where(through, g * x, 0.0), axis=1)
        s_g += tl.sum(tl.where(through, g, 0.0), axis=1)
        s_tau += tl.sum(tl.where(ok & (x * a + beta < tau), g, 0.0), axis=1)
    tl.store(sgx_ptr + n * C + c, s_gx, mask=c_ok)
    tl.store(sg_ptr + n * C + c, s_g, mask=c_ok)
    tl.store(stau_ptr + n * C + c, s_tau, mask=c_ok)


def _frn_input_grad(
    g_ptr,
    x_ptr,
    dx_ptr,
    a_ptr,
    bias_ptr,
    tau_ptr,
    p_ptr,
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
    BLOCK_C: tl.constexpr,
    BLOCK_HW: tl.constexpr,
):
    n = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    hw = tl.program_id(2) * BLOCK_HW + tl.arange(0, BLOCK_HW)
    ok = (c < C)[:, None] & (hw < HW)[None, :]
    h, w = (hw // W)[None, :], (hw % W)[None, :]
    stat = n * C + c
    a = tl.load(a_ptr + stat, mask=c < C, other=0.0)[:, None]
    p = tl.load(p_ptr + stat, mask=c < C, other=0.0)[:, None]
    beta = tl.load(bias_ptr + c, mask=c < C, other=0.0)[:, None]
    tau = tl.load(tau_ptr + c, mask=c < C, other=0.0)[:, None]
    x = tl.load(x_ptr + n * s_n + c[:, None] * s_c + h * s_h + w * s_w, mask=ok, other=0.0)
    g = tl.load(g_ptr + n * u_n + c[:, None] * u_c + h * u_h + w * u_w, mask=ok, other=0.0)
    x, g = x.to(tl.float32), g.to(tl.float32)
    dx = x * p + tl.where(x * a + beta >= tau, g * a, 0.0)  # via ν², then through the TLU
    out = dx_ptr + n * t_n + c[:, None] * t_c + h * t_h + w * t_w
    tl.store(out, dx.to(dx_ptr.dtype.element_ty), mask=ok)


def _evo_s0_forward(
    x_ptr,
    y_ptr,
    v_ptr,
    k_ptr,
    bias_ptr,
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
    v = tl.load(v_ptr + c, mask=c < C, other=0.0)[:, None]
    k = tl.load(k_ptr + n * C + c, mask=c < C, other=0.0)[:, None]
    beta = tl.load(bias_ptr + c, mask=c < C, other=0.0)[:, None]
    x = tl.load(x_ptr + n * s_n + c[:, None] * s_c + h * s_h + w * s_w, mask=ok, other=0.0)
    x = x.to(tl.float32)
    y = x * tl.sigmoid(v * x) * k + beta
    out = y_ptr + n * t_n + c[:, None] * t_c + h * t_h + w * t_w
    tl.store(out, y.to(y_ptr.dtype.element_ty), mask=ok)


def _evo_s0_grad_sums(
    g_ptr,
    x_ptr,
    v_ptr,
    k_ptr,
    s1_ptr,
    s2_ptr,
    s3_ptr,
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
    v = tl.load(v_ptr + c, mask=c_ok, other=0.0)[:, None]
    k = tl.load(k_ptr + n * C + c, mask=c_ok, other=0.0)[:, None]
    s1 = tl.zeros([BLOCK_C], dtype=tl.float32)
    s2 = tl.zeros([BLOCK_C], dtype=tl.float32)
    s3 = tl.zeros([BLOCK_C], dtype=tl.float32)
    for start in range(0, HW, BLOCK_HW):
        hw = start + tl.arange(0, BLOCK_HW)
        ok = c_ok[:, None] & (hw < HW)[None, :]
        h, w = (hw // W)[None, :], (hw % W)[None, :]
        x = tl.load(x_ptr + n * s_n + c[:, None] * s_c + h * s_h + w * s_w, mask=ok, other=0.0)
        g = tl.load(g_ptr + n * u_n + c[:, None] * u_c + h * u_h + w * u_w, mask=ok, other=0.0)
        x, g = x.to(tl.float32), g.to(tl.float32)
        sig = tl.sigmoid(v * x)
        s1 += tl.sum(tl.where(ok, g * x * sig, 0.0), axis=1)  # dL/dk
        s2 += tl.sum(g, axis=1)  # dL/dβ
        s3 += tl.sum(tl.where(ok, g * k * x * x * sig * (1.0 - sig), 0.0), axis=1)  # dL/dv
    tl.store(s1_ptr + n * C + c, s1, mask=c_ok)
    tl.store(s2_ptr + n * C + c, s2, mask=c_ok)
    tl.store(s3_ptr + n * C + c, s3, mask=c_ok)


def _evo_s0_input_grad(
    g_ptr,
    x_ptr,
    dx_ptr,
    v_ptr,
    k_ptr,
    mean_ptr,
    p_ptr,
    q_ptr,
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
    BLOCK_C: tl.constexpr,
    BLOCK_HW: tl.constexpr,
):
    n = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    hw = tl.program_id(2) * BLOCK_HW + tl.arange(0, BLOCK_HW)
    ok = (c < C)[:, None] & (hw < HW)[None, :]
    h, w = (hw // W)[None, :], (hw % W)[None, :]
    stat = n * C + c
    v = tl.load(v_ptr + c, mask=c < C, other=0.0)[:, None]
    k = tl.load(k_ptr + stat, mask=c < C, other=0.0)[:, None]
    m = tl.load(mean_ptr + stat, mask=c < C, other=0.0)[:, None]
    p = tl.load(p_ptr + stat, mask=c < C, other=0.0)[:, None]
    q = tl.load(q_ptr + stat, mask=c < C, other=0.0)[:, None]
    x = tl.load(x_ptr + n * s_n + c[:, None] * s_c + h * s_h + w * s_w, mask=ok, other=0.0)
    g = tl.load(g_ptr + n * u_n + c[:, None] * u_c + h * u_h + w * u_w, mask=ok, other=0.0)
    x, g = x.to(tl.float32), g.to(tl.float32)
    sig = tl.sigmoid(v * x)
    # d(x·sigmoid(v·x))/dx, then the group statistics' term through the moments
    dx = g * k * sig * (1.0 + v * x * (1.0 - sig)) + (x - m) * p + q
    out = dx_ptr + n * t_n + c[:, None] * t_c + h * t_h + w * t_w
    tl.store(out, dx.to(dx_ptr.dtype.element_ty), mask=ok)


KERNELS = (
    "_dyt_forward",
    "_dyt_backward",
    "_frn_forward",
    "_frn_grad_sums",
    "_frn_input_grad",
    "_evo_s0_forward",
    "_evo_s0_grad_sums",
    "_evo_s0_input_grad",
)


@functools.cache
def _build(interpret: bool) -> dict[str, Any]:
    del interpret  # the cache key: `triton.jit` picks the interpreter when it runs
    return {name.lstrip("_"): triton.jit(globals()[name]) for name in KERNELS}


def kernels() -> dict[str, Any]:
    """The jitted kernels by name (interpreted when TRITON_INTERPRET=1, as in the CPU tests)."""
    return _build(os.environ.get("TRITON_INTERPRET", "0") == "1")
