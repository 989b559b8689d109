"""The CUDA path's Triton kernels, run on the CPU by Triton's interpreter (TRITON_INTERPRET=1).

The interpreter must be chosen before Triton is first imported (its own library functions are
jitted at import), so `test_kernels_under_the_interpreter` runs this file's other tests in a
fresh process with TRITON_INTERPRET=1; in that process they run, elsewhere they skip.

Each `normbench::` operator against the same quantity in plain torch, in both memory formats
and in fp32 and bf16 (statistics fp32); then whole layers with the fused path switched to the
kernels (`_fused._backend` says "cuda" for these CPU tensors) against the CPU path: outputs,
input and parameter gradients, buffers. Skipped where Triton is not installed.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys

import pytest
import torch

from normbench.variants import _fused, _kernels
from normbench.variants_api import create_norm

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
interpreted = pytest.mark.skipif(
    not INTERPRETED, reason="runs in test_kernels_under_the_interpreter's process"
)


@pytest.mark.skipif(INTERPRETED, reason="this is that process")
def test_kernels_under_the_interpreter() -> None:
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    command = [sys.executable, "-m", "pytest", "-q", "-n", "0", "-p", "no:cacheprovider", __file__]
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout and " skipped" in proc.stdout  # this test itself skipped


def _nc(t: torch.Tensor) -> torch.Tensor:
    return t[:, :, None, None]


@interpreted
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("shape", [(3, 5, 7, 6), (2, 70, 3, 3), (4, 3, 1, 1)])
def test_operators_match_torch(shape, channels_last, dtype) -> None:
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(shape, generator=gen) * 3 + 20).to(dtype)
    g = torch.randn(shape, generator=gen).to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    xf, gf = x.float(), g.float()
    mean, var = _kernels.instance_moments(x)
    ref_var, ref_mean = torch.var_mean(xf, dim=(2, 3), correction=0)
    torch.testing.assert_close(mean, ref_mean, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(var, ref_var, rtol=1e-5, atol=1e-5)
    scale, at_mean, p, q = (torch.randn(shape[:2], generator=gen) for _ in range(4))
    y = _kernels.instance_affine(x, mean, scale, at_mean)
    expected = ((xf - _nc(mean)) * _nc(scale) + _nc(at_mean)).to(dtype)
    assert y.dtype == dtype and y.stride() == x.stride()
    torch.testing.assert_close(y, expected)  # bf16: at most one rounding step apart
    s_g, s_gc = _kernels.instance_grad_sums(g, x, mean)
    torch.testing.assert_close(s_g, gf.sum(dim=(2, 3)), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(s_gc, (gf * (xf - _nc(mean))).sum(dim=(2, 3)), rtol=1e-5, atol=1e-3)
    dx = _kernels.instance_input_grad(x, mean, p, q, g, scale)
    expected = ((xf - _nc(mean)) * _nc(p) + _nc(q) + gf * _nc(scale)).to(dtype)
    assert dx.stride() == x.stride()
    torch.testing.assert_close(dx, expected)
    without_g = _kernels.instance_input_grad(x, mean, p, q, None, None)
    torch.testing.assert_close(without_g, ((xf - _nc(mean)) * _nc(p) + _nc(q)).to(dtype))
    weights = torch.rand(shape[0], generator=gen)
    total = _kernels.sample_weighted_sum(x, weights)
    torch.testing.assert_close(total, (xf * weights[:, None, None, None]).sum(dim=0))


@interpreted
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("shape", [(3, 5, 7, 6), (2, 70, 3, 3), (4, 3, 1, 1)])
def test_dyt_operators_match_torch(shape, channels_last, dtype) -> None:
    from normbench.variants import _elementwise_kernels

    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(shape, generator=gen) * 2).to(dtype)
    g = torch.randn(shape, generator=gen).to(dtype)
    if channels_last:
        x, g = (t.contiguous(memory_format=torch.channels_last) for t in (x, g))
    alpha = torch.tensor([0.7])
    weight, bias = torch.randn(shape[1], generator=gen), torch.randn(shape[1], generator=gen)
    xf, gf = x.float(), g.float()
    t = torch.tanh(0.7 * xf)
    y = _elementwise_kernels.dyt_forward(x, alpha, weight, bias)
    assert y.dtype == dtype and y.stride() == x.stride()
    torch.testing.assert_close(y, (t * weight[:, None, None] + bias[:, None, None]).to(dtype))
    dx, s_t, s_g, s_a = _elementwise_kernels.dyt_backward(g, x, alpha, weight)
    slope = gf * weight[:, None, None] * (1 - t * t)
    assert dx.stride() == x.stride()
    torch.testing.assert_close(dx, (slope * 0.7).to(dtype))
    torch.testing.assert_close(s_t, (gf * t).sum(dim=(2, 3)), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(s_g, gf.sum(dim=(2, 3)), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(s_a, (slope * xf).sum(dim=(2, 3)), rtol=1e-5, atol=1e-4)


@interpreted
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("shape", [(3, 5, 7, 6), (2, 70, 3, 3), (4, 3, 1, 1)])
def test_frn_operators_match_torch(shape, channels_last, dtype) -> None:
    from normbench.variants import _elementwise_kernels

    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(shape, generator=gen) * 2).to(dtype)
    g = torch.randn(shape, generator=gen).to(dtype)
    if channels_last:
        x, g = (t.contiguous(memory_format=torch.channels_last) for t in (x, g))
    a, p = torch.rand(shape[:2], generator=gen) + 0.5, torch.randn(shape[:2], generator=gen)
    bias, tau = torch.randn(shape[1], generator=gen), 0.3 * torch.randn(shape[1], generator=gen)
    xf, gf = x.float(), g.float()
    y = xf * _nc(a) + bias[:, None, None]
    through = y >= tau[:, None, None]
    z = _elementwise_kernels.frn_forward(x, a, bias, tau)
    assert z.dtype == dtype and z.stride() == x.stride()
    torch.testing.assert_close(z, torch.maximum(y, tau[:, None, None]).to(dtype))
    s_gx, s_g, s_tau = _elementwise_kernels.frn_grad_sums(g, x, a, bias, tau)
    torch.testing.assert_close(s_gx, (gf * xf * through).sum(dim=(2, 3)), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(s_g, (gf * through).sum(dim=(2, 3)), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(s_tau, (gf * ~through).sum(dim=(2, 3)), rtol=1e-5, atol=1e-4)
    dx = _elementwise_kernels.frn_input_grad(g, x, a, bias, tau, p)
    assert dx.stride() == x.stride()
    torch.testing.assert_close(dx, (xf * _nc(p) + gf * _nc(a) * through).to(dtype))


@interpreted
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("shape", [(3, 5, 7, 6), (2, 70, 3, 3), (4, 3, 1, 1)])
def test_evo_s0_operators_match_torch(shape, channels_last, dtype) -> None:
    from normbench.variants import _elementwise_kernels

    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(shape, generator=gen) * 2).to(dtype)
    g = torch.randn(shape, generator=gen).to(dtype)
    if channels_last:
        x, g = (t.contiguous(memory_format=torch.channels_last) for t in (x, g))
    v, bias = torch.randn(shape[1], generator=gen), torch.randn(shape[1], generator=gen)
    k = torch.rand(shape[:2], generator=gen) + 0.5
    mean, p, q = (torch.randn(shape[:2], generator=gen) for _ in range(3))
    xf, gf = x.float(), g.float()
    s = torch.sigmoid(v[:, None, None] * xf)
    y = _elementwise_kernels.evo_s0_forward(x, v, k, bias)
    assert y.dtype == dtype and y.stride() == x.stride()
    torch.testing.assert_close(y, (xf * s * _nc(k) + bias[:, None, None]).to(dtype))
    s1, s2, s3 = _elementwise_kernels.evo_s0_grad_sums(g, x, v, k)
    torch.testing.assert_close(s1, (gf * xf * s).sum(dim=(2, 3)), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(s2, gf.sum(dim=(2, 3)), rtol=1e-5, atol=1e-4)
    expected = (gf * _nc(k) * xf * xf * s * (1 - s)).sum(dim=(2, 3))
    torch.testing.assert_close(s3, expected, rtol=1e-5, atol=1e-4)
    dx = _elementwise_kernels.evo_s0_input_grad(g, x, v, k, mean, p, q)
    direct = gf * _nc(k) * s * (1 + v[:, None, None] * xf * (1 - s))
    assert dx.stride() == x.stride()
    torch.testing.assert_close(dx, (direct + (xf - _nc(mean)) * _nc(p) + _nc(q)).to(dtype))


LAYERS = [
    ("iebn", {}),
    ("rbn", {"affine": False}),
    ("gn", {"num_groups": 2}),
    ("ghost_bn", {"ghost_batch_size": 2, "momentum": None}),
    ("fourthings", {"examples_per_group": 3, "channels_per_group": 2}),
    ("ubn", {"decide": "step"}),
    ("ubn", {"sim_source": "centered"}),
    ("bgn", {"num_groups": 40, "allow_spatial_groups": True}),  # row bands on a view of x
    ("bgn", {"num_groups": 20, "allow_spatial_groups": True}),  # groups straddle channels
    ("dyt", {}),  # its own kernels (_elementwise_kernels), switched by the same _backend
    ("frn", {}),
    ("frn", {"learnable_eps": True, "apply_act": False}),
    ("evonorm_s0", {"num_groups": 2}),
]


@interpreted
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize(("name", "options"), LAYERS, ids=str)
def test_layers_on_the_kernels_equal_the_cpu_path(name, options, channels_last, monkeypatch):
    torch.manual_seed(0)
    cpu = create_norm(name, 8, **options)
    with torch.no_grad():
        for p in cpu.parameters():
            p.add_(0.2 * torch.randn_like(p))
    kernels = copy.deepcopy(cpu)
    gen = torch.Generator().manual_seed(1)
    for _ in range(2):
        x = torch.randn(6, 8, 5, 4, generator=gen) * 1.5 + 2.0
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        w = torch.randn(x.shape, generator=gen)
        results = []
        for layer, backend in ((cpu, "cpu"), (kernels, "cuda")):
            monkeypatch.setattr(_fused, "_backend", lambda t, b=backend: b)
            leaf = x.clone().requires_grad_()
            y = layer(leaf)
            (y * w).sum().backward()
            results.append((y, leaf.grad, layer))
        (y_cpu, dx_cpu, _), (y_k, dx_k, _) = results
        assert y_k.stride() == y_cpu.stride() and dx_k.stride() == dx_cpu.stride()
        torch.testing.assert_close(y_k, y_cpu, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(dx_k, dx_cpu, rtol=1e-4, atol=1e-5)
        for (pname, a), b in zip(cpu.named_parameters(), kernels.parameters(), strict=True):
            torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-4, msg=pname)
        for (bname, a), b in zip(cpu.named_buffers(), kernels.buffers(), strict=True):
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=bname)
        cpu.zero_grad()
        kernels.zero_grad()
