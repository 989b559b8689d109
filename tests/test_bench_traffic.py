"""`normbench bench traffic`: the dispatcher's byte and host-sync counts against sizes computed
by hand, the simulated backward against autograd, every built-in layer within the bound of
docs/variants.md#memory-traffic, and the report through the CLI with a plugin."""

from __future__ import annotations

import re
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


# the heavier code paths: four ghost batches; IN's running statistics (its compiled region)
OPTIONS = {
    "ghost_bn": {"ghost_batch_size": 2},
    "in": {"track_running_stats": True, "momentum": None},
}
OVER_KERNELS = {
    "ubn": "its similarity's and statistics' reductions over three axes: 15 compiled kernels",
}


@pytest.mark.parametrize("name", ["bn", "in", "gn", "iebn", "rbn", "bnet", "sabn", "bgn",
                                  "ghost_bn", "ubn", "fourthings", "ccbn", "auxbn",
                                  "saauxbn", "layernorm2d", "rmsnorm2d", "gn1", "dyt", "frn",
                                  "evonorm_s0", "evonorm_b0", "brn"])  # fmt: skip
def test_every_builtin_is_within_the_bound_and_keeps_channels_last(name: str) -> None:
    """Bytes, host syncs, channels_last, and kernels per step (the compiled coefficient
    regions' as Inductor's Triton backend fuses them) at most 4x BN's plus convolutions."""
    options = OPTIONS.get(name, {})
    result = measure_layer(name, options, shape=SHAPE)
    assert result.host_syncs == 0 and result.host_copies == 0, name
    assert result.norm_bytes <= result.bound_bytes, result
    assert result.norm_written <= result.bound_written, result
    assert result.channels_last_kept, f"{name} dropped channels_last"
    assert result.bound_kernels == 4 * 5 + result.conv_kernels  # BN: 5 kernels
    from normbench.variants import _region

    with _region.coefficient_mode("eager"):  # the regions hide no read of x (UBN's similarity)
        eager = measure_layer(name, options, shape=SHAPE)
    assert (eager.activation_read, eager.activation_written) == (
        result.activation_read,
        result.activation_written,
    ), name
    if name in OVER_KERNELS:  # known, and reported by bench traffic as over the bound
        assert result.bound_kernels < result.kernels <= 2 * result.bound_kernels, result
    else:
        assert result.kernels <= result.bound_kernels and result.within_bound, result


def test_eager_coefficients_are_over_the_kernel_bound() -> None:
    """The kernel count has teeth: IEBN's coefficient math run eagerly on CUDA (as before the
    compiled regions) is dozens of tiny kernels, over the bound; compiled, a handful."""
    from normbench.variants import _region

    compiled = measure_layer("iebn", shape=SHAPE)
    with _region.coefficient_mode("eager"):
        eager = measure_layer("iebn", shape=SHAPE)
    assert eager.compiled_kernels == 0 and eager.kernels > 2 * eager.bound_kernels, eager
    assert 0 < compiled.compiled_kernels < compiled.kernels <= compiled.bound_kernels, compiled


def test_inductor_kernels_count_the_triton_schedule() -> None:
    """A reduction and its backward, by hand: Inductor's Triton backend makes one kernel each
    (forward reads a, writes the (16,) sums; backward reads their gradient, writes a's)."""
    from normbench.simulate import InductorKernels

    backend = InductorKernels()
    fn = torch.compile(lambda t: (t * 2).sum(dim=0), backend=backend, fullgraph=True)
    a = torch.randn(8, 16, requires_grad=True)
    fn(a).backward(torch.ones(16))
    torch.testing.assert_close(a.grad, torch.full((8, 16), 2.0))
    assert (backend.count.kernels, backend.count.bytes) == (2, 2 * (8 * 16 + 16) * 4)


@pytest.mark.parametrize("groups", [48, 24, 144])  # whole rows, straddling, split rows
def test_bgn_spatial_groups_of_any_shape_are_within_the_bound(groups: int) -> None:
    """At 16x6x6, G = 24 groups of 24 positions straddle two channels (36 positions each),
    G = 144 groups of 4 split rows of 6: both on a view of x, like whole-row groups. Bytes
    and host syncs, with the coefficients eager (their kernels: bench traffic's report)."""
    from normbench.variants import _region

    options = {"num_groups": groups, "allow_spatial_groups": True}
    with _region.coefficient_mode("eager"):  # no compile: seconds, not tens of seconds
        result = measure_layer("bgn", options, shape=SHAPE)
    assert result.within_traffic_bound and result.channels_last_kept, result


def test_frn_without_its_tlu_is_within_the_bound() -> None:
    """FRN without its TLU (the per-instance affine, its coefficients a compiled region) with a
    learned eps: bytes, written bytes, kernels, no host sync."""
    result = measure_layer("frn", {"apply_act": False, "learnable_eps": True}, shape=SHAPE)
    assert result.within_bound and result.channels_last_kept, result
    assert result.compiled_kernels > 0, result  # the region ran compiled


@pytest.mark.parametrize("name", ["iebn", "dyt", "evonorm_b0"])
def test_the_composite_path_is_over_the_bound(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The count has teeth: IEBN, DyT and EvoNorm-B0 on composite ops (the path every non-CPU
    device took before the Triton operators) move several times BN's bytes."""
    monkeypatch.setattr(_fused, "_backend", lambda x: None)
    result = measure_layer(name, shape=SHAPE)
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


LAUNCHING_PLUGIN = """
import torch.nn.functional as F
from torch import nn

from normbench import register_variant


@register_variant("launching_bn")
class LaunchingBN(nn.BatchNorm2d):
    paper = "A test plugin that launches many per-channel kernels (nowhere 2026)"
    batch_dependent = True

    def __init__(self, num_features, *, eps=1e-5, momentum=0.1, device=None, dtype=None):
        super().__init__(num_features, eps=eps, momentum=momentum, device=device, dtype=dtype)

    def forward(self, x):
        w = self.weight
        for _ in range(30):  # tiny per-channel kernels: over the kernel bound, not the bytes
            w = w * 1.0
        return F.batch_norm(x, self.running_mean, self.running_var, w, self.bias,
                            self.training, self.momentum, self.eps)
"""


@pytest.fixture()
def fresh() -> Iterator[None]:
    registry._reset_all()
    yield
    registry._reset_all()


def _rows(text: str) -> dict[str, list[str]]:
    return {
        cells[0]: cells
        for line in text.splitlines()
        if line.startswith("| ") and (cells := [c.strip() for c in line.strip("|").split("|")])
    }


def test_report_through_the_cli_lists_layers_and_a_plugin_over_the_bound(
    tmp_path: Path, fresh: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from normbench.bench import traffic as traffic_report
    from normbench.cli import main

    monkeypatch.setattr(traffic_report, "QUICK_SHAPE", SHAPE)
    plugin = tmp_path / "plugin.py"
    plugin.write_text(textwrap.dedent(HOST_SYNC_PLUGIN))
    out = tmp_path / "traffic.md"
    layers = "bn,iebn,syncing_bn"
    args = ["bench", "traffic", "--quick", "--plugin", str(plugin), "--output", str(out)]
    with pytest.raises(SystemExit) as info:
        main([*args, "--layers", layers])
    assert info.value.code == 1  # a host sync is over the traffic bound: the check fails
    text = out.read_text()
    rows = _rows(text)
    assert set(rows) >= {"bn", "iebn", "iebn momentum=None", "syncing_bn"}
    assert "gn" not in rows
    for name in ("bn", "iebn", "iebn momentum=None"):
        assert rows[name][-1] == "pass", rows[name]
    assert int(rows["iebn"][8]) > 0 and rows["bn"][8] == "0"  # compiled kernels
    assert rows["syncing_bn"][10] == "1" and rows["syncing_bn"][-1] == "**over**"
    assert "- **syncing_bn**: host syncs: 1" in text.split("| layer |")[0]
    assert "| triton |" in text and "| measured on |" in text
    assert traffic._REFERENCES  # BN measured once per input and reused
    launches = tmp_path / "launches.py"
    launches.write_text(textwrap.dedent(LAUNCHING_PLUGIN))
    kernels_only = tmp_path / "launching.md"  # over its kernel bound only: named, not failed
    with pytest.raises(SystemExit) as info:
        main(["bench", "traffic", "--quick", "--plugin", str(launches), "--output",
              str(kernels_only), "--layers", "launching_bn"])  # fmt: skip
    row = _rows(kernels_only.read_text())["launching_bn"]
    assert info.value.code == 0 and row[-1] == "**over**" and int(row[7]) > int(row[9]), row
    with pytest.raises(SystemExit) as info:
        main([*args[:-1], str(tmp_path / "not.md"), "--layers", "bn,nosuch"])
    assert info.value.code == 2 and not (tmp_path / "not.md").exists()


def _screen_rows(text: str, columns: tuple[str, ...]) -> dict[str, list[str]]:
    """The plain table `print_table` prints off a terminal: columns two spaces apart or more."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("layer  "))
    assert re.split(r"\s{2,}", lines[start]) == list(columns)
    rows = {}
    for line in lines[start + 1 :]:
        cells = re.split(r"\s{2,}", line.strip())
        if len(cells) != len(columns):
            break  # the caption
        rows[cells[0]] = cells
    return rows


def test_the_screen_shows_the_reports_table(
    tmp_path: Path, fresh: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`bench traffic` prints the report's table (typer's CliRunner, not a terminal: plain
    columns): every cell equal to the recorded report's, BN's counts to `measure_layer`'s,
    a plugin over the bound named under the table and exit status 1; above the table the
    report's heading (quick mode, input shape, dtype); MiB to 3 significant digits, so a
    small input's bytes agree with the ratios to BN beside them."""
    from typer.testing import CliRunner

    from normbench.bench import traffic as traffic_report
    from normbench.cli import build_app

    monkeypatch.setattr(traffic_report, "QUICK_SHAPE", SHAPE)
    plugin = tmp_path / "plugin.py"
    plugin.write_text(textwrap.dedent(HOST_SYNC_PLUGIN))
    out = tmp_path / "traffic.md"
    args = ["bench", "traffic", "--quick", "--layers", "bn,syncing_bn"]
    result = CliRunner().invoke(build_app(), [*args, "--plugin", str(plugin), "--output", str(out)])
    assert result.exit_code == 1, result.output
    assert "over the traffic bound: syncing_bn" in result.stderr
    shape = "x".join(map(str, SHAPE))
    assert (
        "Quick mode (a small input): a smoke run, not a result. One training step (forward + "
        f"backward) of each layer alone, input {shape} bfloat16 under bfloat16 "
        "autocast, on FakeTensors of cuda; counted at the dispatcher (normbench.traffic)."
    ) in result.stdout.splitlines()
    screen = _screen_rows(result.stdout, traffic_report.COLUMNS)
    recorded = {
        k: [c.strip("*") for c in v]
        for k, v in _rows(out.read_text()).items()
        if len(v) == len(traffic_report.COLUMNS)  # not the machine's table
    }
    assert recorded.pop("layer") == list(traffic_report.COLUMNS)
    assert screen == recorded and set(screen) == {"bn", "syncing_bn", "bn momentum=None"}
    bn = measure_layer("bn", shape=SHAPE)
    counts = [bn.kernels, bn.compiled_kernels, bn.bound_kernels, bn.host_syncs, bn.host_copies]
    # BN reads x (forward), x and y's gradient (backward), writes y and dx: bf16 activations
    act = 2 * SHAPE[0] * SHAPE[1] * SHAPE[2] * SHAPE[3]
    assert (bn.activation_read, bn.activation_written) == (3 * act, 2 * act)
    assert screen["bn"][1:] == [
        f"{3 * act / 2**20:#.3g}", f"{2 * act / 2**20:#.3g}", "0", "1.00", "1.00",
        f"{(bn.read_bytes + bn.written_bytes) / 2**20:#.3g}", *map(str, counts), "yes", "pass",
    ]  # fmt: skip
    assert screen["syncing_bn"][-3:] == ["0", "yes", "over"] and screen["syncing_bn"][10] == "1"
    assert "over the bound: syncing_bn: host syncs: 1" in result.stdout.splitlines()


def test_compiled_report_counts_inductor_kernels_and_bytes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--compile`: BN compiled whole by Inductor on this CPU; its kernels access at least
    the five activation tensors a training step must move (x and y forward, g, x and dx
    backward), in bf16. The screen shows the report's table."""
    from normbench.bench import traffic_compiled
    from normbench.cli import main

    out = tmp_path / "compiled.md"
    with pytest.raises(SystemExit) as info:
        main(["bench", "traffic", "--compile", "--quick", "--layers", "bn", "--output", str(out)])
    assert info.value.code == 0
    row = _rows(out.read_text())["bn"]
    kernels, mib, ratio = int(row[1]), float(row[2]), row[3]
    activation = torch.Size(traffic_compiled_shape()).numel() * 2 / 2**20
    assert kernels >= 2 and 5 * activation <= mib < 40 * activation and ratio == "1.00", row
    assert _screen_rows(capsys.readouterr().out, traffic_compiled.COLUMNS) == {"bn": row}
    assert traffic_compiled.DEFAULT_LAYERS[0] == "bn"


def traffic_compiled_shape() -> tuple[int, ...]:
    from normbench.bench.traffic import QUICK_SHAPE

    return QUICK_SHAPE
