"""Float64 running statistics to 1e-10 relative over enough steps that the update factor is not
a float32 number (1/3, 1/5, 1/6 with momentum None; 0.1 with momentum 0.1), against the
statistics computed here directly from the batches: a cumulative average is the plain mean of
the batches' statistics, an exponential one the float64 recurrence. The eval output of each
layer then equals the same layer given the reference buffers. `momentum=None` also compiles
without a graph break (the factor never leaves the device)."""

from __future__ import annotations

import copy

import pytest
import torch

from normbench.variants_api import create_norm

DT = torch.float64
N, C, H, W = 6, 4, 3, 5
STEPS = 6
RTOL, ATOL = 1e-10, 1e-13


def per_channel(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and unbiased variance over (N, H, W), (C,) each."""
    return x.mean(dim=(0, 2, 3)), x.var(dim=(0, 2, 3), correction=1)


def groups(x: torch.Tensor, g: int) -> tuple[torch.Tensor, torch.Tensor]:
    flat = x.reshape(x.shape[0], g, -1)
    return flat.mean(dim=(0, 2)), flat.var(dim=(0, 2), correction=1)


def instances(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return x.mean(dim=(2, 3)).mean(dim=0), x.var(dim=(2, 3), correction=1).mean(dim=0)


def centred(layer: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """RBN's and UBN's x_c = x + w_m·GAP(x)."""
    return x + layer.center_weight.detach()[None, :, None, None] * x.mean(dim=(2, 3), keepdim=True)


def ghost(x: torch.Tensor, size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [per_channel(part) for part in x.split(size)]


def raw_moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """FourThings' buffers: E[x] and E[x²] over (N, H, W)."""
    return x.mean(dim=(0, 2, 3)), x.square().mean(dim=(0, 2, 3))


# (variant, options, buffer names, statistics of one batch -> list of (mean, second) updates)
CASES = [
    ("bn", {}, lambda layer, x: [per_channel(x)]),
    ("iebn", {}, lambda layer, x: [per_channel(x)]),
    ("rbn", {}, lambda layer, x: [per_channel(centred(layer, x))]),
    ("bnet", {}, lambda layer, x: [per_channel(x)]),
    ("sabn", {}, lambda layer, x: [per_channel(x)]),
    ("bgn", {"num_groups": 2}, lambda layer, x: [groups(x, 2)]),
    ("bgn", {"num_groups": C}, lambda layer, x: [per_channel(x)]),
    ("bgn", {"num_groups": 3 * C, "allow_spatial_groups": True}, lambda lr, x: [groups(x, 3 * C)]),
    ("in", {"track_running_stats": True}, lambda layer, x: [instances(x)]),
    ("ghost_bn", {"ghost_batch_size": 2}, lambda layer, x: ghost(x, 2)),
    ("ghost_bn", {"ghost_batch_size": N}, lambda layer, x: ghost(x, N)),
    ("fourthings", {"channels_per_group": 2}, lambda layer, x: [raw_moments(x)]),
    ("ubn", {}, lambda layer, x: [per_channel(centred(layer, x))]),
]


def _layer(name: str, options: dict, momentum: float | None) -> torch.nn.Module:
    torch.manual_seed(0)
    layer = create_norm(name, C, momentum=momentum, **options).to(DT)
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return layer


def _batches() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    return [torch.randn(N, C, H, W, generator=g, dtype=DT) * 2 + 3 for _ in range(STEPS)]


@pytest.mark.parametrize("momentum", [None, 0.1])
@pytest.mark.parametrize(("name", "options", "stats"), CASES, ids=[f"{n}{o}" for n, o, _ in CASES])
def test_float64_running_statistics_to_1e_10(name, options, stats, momentum) -> None:
    layer = _layer(name, options, momentum).train()
    second = "running_sq_mean" if name == "fourthings" else "running_var"
    ref_mean = torch.zeros_like(layer.running_mean)
    ref_second = torch.ones_like(getattr(layer, second))
    count = 0
    for x in _batches():
        layer(x)
        for mean, var in stats(layer, x):
            count += 1
            factor = 1.0 / count if momentum is None else momentum
            ref_mean = (1 - factor) * ref_mean + factor * mean
            ref_second = (1 - factor) * ref_second + factor * var
    torch.testing.assert_close(layer.running_mean, ref_mean, rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(getattr(layer, second), ref_second, rtol=RTOL, atol=ATOL)
    # eval output: the same layer with the reference buffers
    expected = copy.deepcopy(layer)
    with torch.no_grad():
        expected.running_mean.copy_(ref_mean)
        getattr(expected, second).copy_(ref_second)
    x = _batches()[0]
    torch.testing.assert_close(layer.eval()(x), expected.eval()(x), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("name", ["bn", "iebn", "bgn", "ghost_bn", "fourthings", "ubn", "in"])
def test_momentum_none_compiles_without_a_graph_break(name: str) -> None:
    from torch._dynamo.testing import CompileCounterWithBackend

    options = {"track_running_stats": True} if name == "in" else {}
    torch._dynamo.reset()
    eager = _layer(name, options, None).train()
    module = copy.deepcopy(eager)
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(module, backend=counter, fullgraph=True)
    frames = []
    for x in _batches()[:4]:  # fullgraph: no graph break; the counter: no recompilation
        torch.testing.assert_close(compiled(x), eager(x), rtol=1e-12, atol=1e-12)
        frames.append(counter.frame_count)
    for (key, a), b in zip(eager.named_buffers(), module.buffers(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-12, msg=key)
    assert frames[1:] == frames[:1] * 3, f"recompiled: frames after each step {frames}"
