"""`normbench bench traffic`: the dispatcher's byte and host-sync counts against sizes computed
by hand, the simulated backward against autograd, every built-in layer within the bound of
docs/variants.md#memory-traffic, and the report through the CLI with a plugin."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from normbench import registry, traffic
from normbench.bench.traffic import measure_layer
from normbench.simulate import backward_here, on_device
from normbench.traffic import TrafficCounter
from normbench.variants import _fused

SHAPE = (8, 16, 6, 6)  # small: every layer measures in well under a second


def test_counter_counts_each_operator_once_and_views_as_free() -> None:
    x = torch.randn(4, 8, 3, 3)
    a = x.numel() * 4
    counter = TrafficCounter("cpu", x.numel())
    with counter:
        y = x * 2  # read x, write y
        y.add_(x)  # read y and x, write y
        v = y.view(4, -1).t()  # views: nothing moves
        s = v.sum(dim=1)  # read y, write (72,) floats
        torch.mul(x, 3.0, out=torch.empty_like(x))  # read x, write out (not read)
    tally = counter.tally
    assert (tally.act_read, tally.act_written) == (5 * a, 3 * a)
    assert (tally.read, tally.written) == (5 * a, 3 * a + s.numel() * 4)
    assert tally.kernels == 4 and tally.syncs == tally.copies == 0


def test_host_syncs_and_host_copies_are_counted_on_a_simulated_gpu() -> None:
    with on_device(torch.device("cuda")) as simulated:
        if not simulated:
            pytest.skip("a real GPU: the simulated path is not taken")
        x = torch.randn(4, 3, device="cuda")
        counter = TrafficCounter("cuda")
        with counter:
            float(x.sum())  # a scalar read
            bool(x.max() > 0)  # another
            torch.tensor([1, 2], device="cuda")  # host data copied to the device
            x.cpu()  # a copy to the host
            x.fill_(torch.tensor(0.5))  # a 0-d host value argument: no copy
    assert (counter.tally.syncs, counter.tally.copies) == (3, 1)


def test_simulated_backward_equals_autograd() -> None:
    """The node-by-node backward (used on FakeTensors of a missing GPU) gives autograd's
    gradients on real tensors: a branch whose gradients add, custom Functions (IEBN's fused
    path), a broadcast parameter, a leaf in another layout than its gradient."""
    from normbench.variants import IEBN2d

    torch.manual_seed(0)
    layer = IEBN2d(6).double()
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.3 * torch.randn_like(p))
    x = torch.randn(5, 6, 4, 4, dtype=torch.float64).to(memory_format=torch.channels_last)
    scale = torch.rand(6, 1, 1, dtype=torch.float64)
    grads = []
    for run in (lambda y, g: y.backward(g), backward_here):
        layer.zero_grad(set_to_none=True)
        leaf, s = x.clone().requires_grad_(), scale.clone().requires_grad_()
        y = layer(leaf) * s + leaf.relu()  # leaf feeds two branches
        run(y, torch.linspace(-1, 1, y.numel(), dtype=y.dtype).reshape(y.shape).contiguous())
        grads.append([leaf.grad, s.grad, *(p.grad for p in layer.parameters())])
        assert leaf.grad.stride() == leaf.stride()
    for got, want in zip(grads[1], grads[0], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_bn_moves_its_input_output_and_gradients_once() -> None:
    """BN, by hand: forward reads x, writes y; backward reads g and x, writes dx."""
    result = measure_layer("bn", shape=SHAPE, dtype=torch.bfloat16)
    a = torch.Size(SHAPE).numel() * 2
    assert (result.activation_read, result.activation_written) == (3 * a, 2 * a)
    assert (result.bound_bytes, result.bound_written) == (10 * a, 4 * a)
    assert result.host_syncs == result.host_copies == 0 and result.within_bound


@pytest.mark.parametrize("name", ["bn", "in", "gn", "iebn", "rbn", "bnet", "sabn", "bgn",
                                  "ghost_bn", "ubn", "fourthings", "layernorm2d", "rmsnorm2d",
                                  "gn1", "brn", "dyt", "frn", "evonorm_s0"])  # fmt: skip
def test_every_builtin_is_within_the_bound_and_keeps_channels_last(name: str) -> None:
    options = {"ghost_batch_size": 2} if name == "ghost_bn" else {}  # four ghost batches
    result = measure_layer(name, options, shape=SHAPE)
    assert result.host_syncs == 0 and result.host_copies == 0, name
    assert result.norm_bytes <= result.bound_bytes and result.within_bound, result
    assert result.channels_last_kept, f"{name} dropped channels_last"


@pytest.mark.parametrize("name", ["evonorm_b0"])
def test_evonorm_b0_is_over_the_bound_without_host_syncs(name: str) -> None:
    """EvoNorm-B0 runs its element-wise non-linear work on composite ops: over the bound until
    it has fused kernels of its own, as DyT, FRN and EvoNorm-S0 do
    (docs/variants.md#memory-traffic), but without a host sync and keeping channels_last.
    When it meets the bound, move it above."""
    result = measure_layer(name, shape=SHAPE)
    assert result.host_syncs == 0 and result.host_copies == 0, name
    assert result.channels_last_kept, f"{name} dropped channels_last"
    assert not result.within_bound, f"{name} now meets the bound: list it with the others"


def test_the_composite_path_is_over_the_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    """The count has teeth: IEBN on composite ops (the path every non-CPU device took before
    the Triton operators) moves several times BN's bytes."""
    monkeypatch.setattr(_fused, "_backend", lambda x: None)
    result = measure_layer("iebn", shape=SHAPE)
    assert not result.within_bound and result.norm_bytes > 2 * result.bound_bytes


HOST_SYNC_PLUGIN = """
import torch
from torch import nn

from normbench import register_variant


@register_variant("syncing_bn")
class SyncingBN(nn.BatchNorm2d):
    paper = "A test plugin that reads its input on the host (nowhere 2026)"
    batch_dependent = True

    def __init__(self, num_features, *, eps=1e-5, momentum=0.1, device=None, dtype=None):
        super().__init__(num_features, eps=eps, momentum=momentum, device=device, dtype=dtype)

    def forward(self, x):
        if float(x.detach().abs().max()) > 1e6:  # a host sync every step
            raise ValueError("input too large")
        return super().forward(x)
"""


@pytest.fixture()
def fresh() -> Iterator[None]:
    registry._reset_all()
    yield
    registry._reset_all()


def test_report_through_the_cli_lists_every_layer_and_a_plugin_over_the_bound(
    tmp_path: Path, fresh: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from normbench.bench import traffic as traffic_report
    from normbench.cli import main

    monkeypatch.setattr(traffic_report, "QUICK_SHAPE", SHAPE)
    plugin = tmp_path / "plugin.py"
    plugin.write_text(textwrap.dedent(HOST_SYNC_PLUGIN))
    out = tmp_path / "traffic.md"
    with pytest.raises(SystemExit) as info:
        main(["bench", "traffic", "--quick", "--plugin", str(plugin), "--output", str(out)])
    assert info.value.code == 0
    text = out.read_text()
    rows = {
        cells[0]: cells
        for line in text.splitlines()
        if line.startswith("| ") and (cells := [c.strip() for c in line.strip("|").split("|")])
    }
    for name in ("bn", "in", "gn", "iebn", "rbn", "bnet", "sabn", "bgn", "ubn", "fourthings",
                 "ghost_bn ghost_batch_size=2"):  # fmt: skip
        assert rows[name][-1] == "pass", rows[name]
    assert rows["syncing_bn"][8] == "1" and rows["syncing_bn"][-1] == "**over**"
    assert "- **syncing_bn**" in text.split("| layer |")[0]
    assert "| triton |" in text and "| measured on |" in text
    assert traffic._REFERENCES  # BN measured once per input and reused
