"""`_region`: the coefficient math as one compiled region (the accelerator path), forced on the
CPU: the same numbers as the CPU's eager path, one graph across widths, batch sizes and layer
instances, closures left eager, and a model compiled as a whole keeps the math in its own graph.

Most cases compile with `aot_eager` (Dynamo's capture with `fullgraph=True`, dynamic shapes and
AOTAutograd's forward and backward: everything but Inductor's code generation, which takes
tens of seconds per graph on a busy CPU); IEBN also runs through Inductor. The other layers'
regions are compiled (with Inductor's scheduler) by tests/test_bench_traffic.py.
"""

from __future__ import annotations

import copy
from functools import partial

import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend

from normbench.variants import _fused, _region
from normbench.variants_api import create_norm

DT = torch.float64
LAYERS = [
    ("iebn", {}),
    ("gn", {"num_groups": 2}),  # the CPU's F.group_norm otherwise
    ("ghost_bn", {"ghost_batch_size": 2, "momentum": None}),
    ("bgn", {"num_groups": 20, "allow_spatial_groups": True}),  # groups straddle channels
    ("ubn", {"decide": "step", "momentum": None}),
    ("ubn", {"decide": "step", "tau": 2.0}),  # never condensed: the running pair normalises
    # r and d clipped and relaxed within the two steps (the warm-up counter in the region)
    ("brn", {"rmax": 1.1, "dmax": 0.2, "relax_from": 0, "rmax_at": 2, "dmax_at": 1}),
    ("brn", {"momentum": None, "relax_from": 1, "rmax_at": 1, "dmax_at": 3}),
    ("saauxbn", {"num_branches": 3}),  # its folded affine (`_region.call`)
    # the element-wise layers' regions (`_region.call`) between the moments and composite f
    ("frn", {"learnable_eps": True}),
    ("frn", {"apply_act": False}),  # the per-instance affine's region (a bound method)
    ("evonorm_s0", {"num_groups": 2}),
    ("evonorm_b0", {"momentum": None}),
]


def _perturbed(name: str, options: dict) -> torch.nn.Module:
    torch.manual_seed(0)
    layer = create_norm(name, 8, **options).to(DT)
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return layer


def _steps(
    layer: torch.nn.Module,
    mode: str,
    backend: object,
    memory_format: torch.memory_format = torch.channels_last,
) -> list[torch.Tensor]:
    """Two training steps and an eval step: outputs, input and parameter gradients, buffers."""
    gen = torch.Generator().manual_seed(1)
    found = []
    with _region.coefficient_mode(mode), _region.compiled_with(backend):
        for _ in range(2):
            x = torch.randn(6, 8, 5, 4, generator=gen, dtype=DT) * 1.5 + 2.0
            x = x.contiguous(memory_format=memory_format)
            leaf = x.clone().requires_grad_()
            y = layer(leaf)
            (y * torch.randn(y.shape, generator=gen, dtype=DT)).sum().backward()
            found += [y, leaf.grad]
        layer.eval()
        with torch.no_grad():
            found.append(layer(x))
        layer.train()
    return found + [p.grad for p in layer.parameters()] + list(layer.buffers())


@pytest.mark.parametrize(("name", "options"), LAYERS, ids=str)
def test_forced_compiled_path_equals_the_cpu_path(name: str, options: dict) -> None:
    """float64, to 1e-10 relative: outputs, gradients and buffers over two steps and eval."""
    cpu = _perturbed(name, options)
    compiled = copy.deepcopy(cpu)
    counter = CompileCounterWithBackend("aot_eager")
    expected = _steps(cpu, "eager", "inductor")
    got = _steps(compiled, "compiled", counter)
    assert counter.frame_count >= 1  # the region ran
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("momentum", [0.1, None])
def test_in_with_running_statistics_equals_torchs_kernel(momentum: float | None) -> None:
    """IN training with running statistics takes the compiled region on an accelerator even
    for a contiguous input, where the CPU runs `F.instance_norm` (a repeat and a batch norm)."""
    cpu = _perturbed("in", {"track_running_stats": True, "momentum": momentum})
    compiled = copy.deepcopy(cpu)
    counter = CompileCounterWithBackend("aot_eager")
    expected = _steps(cpu, "eager", "inductor", torch.contiguous_format)
    got = _steps(compiled, "compiled", counter, torch.contiguous_format)
    assert counter.frame_count >= 1  # the region ran
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
        assert a.stride() == b.stride()


def test_inductor_region_equals_the_cpu_path() -> None:
    """IEBN through Inductor (C++ kernels on this CPU): fused loops reorder float64 sums only."""
    cpu = _perturbed("iebn", {})
    compiled = copy.deepcopy(cpu)
    for a, b in zip(_steps(compiled, "compiled", "inductor"), _steps(cpu, "eager", "inductor"),
                    strict=True):  # fmt: skip
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_one_graph_across_widths_batch_sizes_and_instances() -> None:
    """`dynamic=True` and per-function code objects: IEBN at three widths and two batch sizes,
    a new layer each time, compiles once for training and once for eval (no_grad), and a
    second layer class does not share (or spend) its cache."""
    counter = CompileCounterWithBackend("aot_eager")
    with _region.coefficient_mode("compiled"), _region.compiled_with(counter):
        for width in (8, 16, 24):
            for batch in (4, 6):
                layer = create_norm("iebn", width)
                layer(torch.randn(batch, width, 3, 3)).sum().backward()
                with torch.no_grad():
                    layer.eval()(torch.randn(batch, width, 3, 3))
        assert counter.frame_count == 2
        create_norm("rbn", 8)(torch.randn(4, 8, 3, 3)).sum().backward()
        assert counter.frame_count == 3


def test_closures_and_eager_mode_run_eagerly() -> None:
    """A coefficient closure made per call would compile every call: it runs eagerly (so does
    everything in mode "eager"); bound methods and partials of them are compiled."""
    scale = torch.ones(3)

    def closure(mean: torch.Tensor, var: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return scale.expand_as(mean), mean

    layer = create_norm("iebn", 3)
    assert not _region.compilable(closure)
    assert _region.compilable(layer._coefficients)
    assert _region.compilable(partial(layer._coefficients, torch.ones(1)))
    counter = CompileCounterWithBackend("aot_eager")
    x = torch.randn(4, 3, 2, 2)
    with _region.coefficient_mode("compiled"), _region.compiled_with(counter):
        y = _fused.fused_instance_affine(x, closure)
    with _region.coefficient_mode("eager"), _region.compiled_with(counter):
        layer(x)
    assert counter.frame_count == 0
    torch.testing.assert_close(y, x)  # A = 1, Y = mean: x itself


def test_a_model_compiled_as_a_whole_holds_the_math_in_its_graph() -> None:
    """`compile: true`: the layers take the composite path inside the model's graph (one
    frame, no region of their own), with the forced path's numbers."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), create_norm("iebn", 8), create_norm("rbn", 8)
    ).to(DT)
    eager = copy.deepcopy(model)
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(model, backend=counter, fullgraph=True)
    x = torch.randn(4, 3, 5, 5, dtype=DT)
    with _region.coefficient_mode("compiled"):
        torch.testing.assert_close(compiled(x), eager(x), rtol=1e-10, atol=1e-12)
    assert counter.frame_count == 1


def test_an_unknown_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="must be one of auto, compiled, eager"):
        with _region.coefficient_mode("fast"):
            pass
