"""The CUDA path's Triton kernels, run on the CPU by Triton's interpreter (TRITON_INTERPRET=1).

The interpreter must be chosen before Triton is first imported (its own library functions are
jitted at import), so `test_kernels_under_the_interpreter` runs this file's other tests in a
fresh process with TRITON_INTERPRET=1; in that process they run, elsewhere they skip.

Each `normbench::` operator against the same quantity in plain torch, in both memory formats
and in fp32 and bf16 (statistics fp32; the element-wise layers' against float64 autograd);
then whole layers with the fused path switched to the kernels (`_fused._backend` says "cuda"
for these CPU tensors) against the CPU path: outputs, input and parameter gradients, buffers
(DyT, FRN and EvoNorm also with their coefficients compiled, over two steps and eval, and
differentiated twice). Skipped where Triton is not installed.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys

import pytest
import torch

from normbench.variants import _elementwise, _fused, _kernels
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


def _coefficients(kind: int, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    """Random (K, N, C) coefficients of layer `kind`: B0's L and R positive, as std's are."""
    k = 5 if kind == _elementwise.EVO_B0 else 3
    coef = torch.randn((k, *shape[:2]), generator=gen)
    if kind == _elementwise.EVO_B0:
        coef[:2] = torch.rand((2, *shape[:2]), generator=gen) + 0.5
    return coef


@interpreted
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("shape", [(3, 5, 7, 6), (2, 70, 3, 3), (4, 3, 1, 1)])
@pytest.mark.parametrize("kind", ["dyt", "frn", "evo_s0", "evo_b0"])
def test_elementwise_operators_match_autograd(kind, shape, channels_last, dtype) -> None:
    """The element-wise kernels (`_triton_elementwise`) against f in float64 torch ops and
    its autograd derivatives: y, the (K, N, C) coefficient gradients, dx with the moments'
    term (the kernels' derivatives are written by hand)."""
    from normbench.variants import _elementwise_kernels as ops

    kind_id = getattr(_elementwise, kind.upper())
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(shape, generator=gen) * 2).to(dtype)
    g = torch.randn(shape, generator=gen).to(dtype)
    if channels_last:
        x, g = (t.contiguous(memory_format=torch.channels_last) for t in (x, g))
    coef = _coefficients(kind_id, shape, gen)
    xd, cd = x.double().requires_grad_(), coef.double().requires_grad_()
    yd = _elementwise.composite(kind_id, xd, cd)
    dxd, dcd = torch.autograd.grad(yd, (xd, cd), g.double())
    y = ops.pointwise_forward(x, coef, kind_id)
    assert y.dtype == dtype and y.stride() == x.stride()
    torch.testing.assert_close(y, yd.to(dtype))
    if kind_id == _elementwise.DYT:
        dx, sums = ops.dyt_backward(g, x, coef)
        expected = dxd
    else:
        sums = ops.pointwise_grad_sums(g, x, coef, kind_id)
        mean, p, q = (torch.randn(shape[:2], generator=gen) for _ in range(3))
        dx = ops.pointwise_input_grad(g, x, coef, kind_id, mean, p, q, 0.5, 0.25)
        expected = dxd + (xd - _nc(mean)) * _nc(p) * 0.5 + _nc(q) * 0.25
    torch.testing.assert_close(sums, dcd.float(), rtol=1e-5, atol=1e-4)
    assert dx.dtype == dtype and dx.stride() == x.stride()
    tol = {"rtol": 1e-4, "atol": 1e-5} if dtype == torch.float32 else {}  # bf16: one rounding
    torch.testing.assert_close(dx, expected.to(dtype), **tol)


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
    ("dyt", {}),  # the element-wise kernels (_elementwise), switched by the same _backend
    ("frn", {}),  # more options: test_elementwise_layers_on_the_accelerator_path_...
    ("evonorm_s0", {"num_groups": 2}),
    ("evonorm_b0", {"momentum": None}),
]


def _perturbed(name: str, options: dict) -> torch.nn.Module:
    """A layer of 8 channels whose parameters are off their initial values."""
    torch.manual_seed(0)
    layer = create_norm(name, 8, **options)
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return layer


@interpreted
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize(("name", "options"), LAYERS, ids=str)
def test_layers_on_the_kernels_equal_the_cpu_path(name, options, channels_last, monkeypatch):
    cpu = _perturbed(name, options)
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


ELEMENTWISE = [
    ("dyt", {}),
    ("frn", {"learnable_eps": True}),
    ("frn", {"apply_act": False}),
    ("evonorm_s0", {"num_groups": 2}),
    ("evonorm_b0", {}),
]


def _steps(layer: torch.nn.Module, backend: str, monkeypatch) -> list[torch.Tensor]:
    """Two training steps and an eval step on `backend`: outputs, input and parameter
    gradients, buffers."""
    monkeypatch.setattr(_fused, "_backend", lambda t: backend)
    gen = torch.Generator().manual_seed(1)
    found = []
    for _ in range(2):
        x = torch.randn(6, 8, 5, 4, generator=gen) * 1.5 + 2.0
        x = x.contiguous(memory_format=torch.channels_last)
        leaf = x.clone().requires_grad_()
        y = layer(leaf)
        (y * torch.randn(y.shape, generator=gen)).sum().backward()
        found += [y, leaf.grad]
    with torch.no_grad():
        found.append(layer.eval()(x))
    return found + [p.grad for p in layer.parameters()] + list(layer.buffers())


@interpreted
@pytest.mark.parametrize(("name", "options"), ELEMENTWISE, ids=str)
def test_elementwise_layers_on_the_accelerator_path_equal_their_composite_path(
    name, options, monkeypatch
) -> None:
    """The whole accelerator path of DyT, FRN, EvoNorm-S0 and -B0 (Triton kernels under the
    interpreter, the coefficients as a compiled region through aot_eager) against the
    layer's own composite forward, fp32: two training steps and eval (the statistics
    kernels' fp32 sums, not float64 ones: 1e-4 relative)."""
    from torch._dynamo.testing import CompileCounterWithBackend

    from normbench.variants import _region

    composite = _perturbed(name, options)
    accelerated = copy.deepcopy(composite)
    counter = CompileCounterWithBackend("aot_eager")
    with _region.coefficient_mode("eager"):
        expected = _steps(composite, "cpu", monkeypatch)
    with _region.coefficient_mode("compiled"), _region.compiled_with(counter):
        got = _steps(accelerated, "cuda", monkeypatch)
    assert counter.frame_count >= (0 if name == "dyt" else 1)  # DyT has no statistics
    for a, b in zip(got, expected, strict=True):
        assert a.stride() == b.stride()
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@interpreted
@pytest.mark.parametrize("name", ["dyt", "frn", "evonorm_s0", "evonorm_b0"])
def test_elementwise_kernels_path_differentiates_twice(name, monkeypatch) -> None:
    """A gradient penalty through the kernels' path (coefficients eager): the Functions'
    backward switches to the composite f, so the second-order gradients equal the
    composite path's."""
    from normbench.variants import _region

    torch.manual_seed(0)
    layer = create_norm(name, 4)
    x = torch.randn(3, 4, 3, 3) + 0.5
    grads = []
    for backend in ("cpu", "cuda"):
        monkeypatch.setattr(_fused, "_backend", lambda t, b=backend: b)
        layer.zero_grad()
        leaf = x.clone().requires_grad_()
        with _region.coefficient_mode("eager"):
            (dx,) = torch.autograd.grad(layer(leaf).square().sum(), leaf, create_graph=True)
            dx.square().sum().backward()
        grads.append([leaf.grad, *(p.grad for p in layer.parameters())])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
