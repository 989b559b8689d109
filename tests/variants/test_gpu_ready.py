"""GPU readiness beyond the default options: the conformance kit's compile, double-backward,
torch.func, fx and autocast checks on the non-default paths of the batch-statistics layers
(several ghost batches, channel groups, UBN's frozen branch), and the opt-out mechanism for
a plugin, through `normbench.testing` exactly as a plugin author uses it."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from normbench.testing import VariantConformance

CHECKS = {
    "compile": "test_compile_fullgraph_matches_eager",
    "double_backward": "test_double_backward_gradgradcheck",
    "torch_func": "test_torch_func_grad_and_vmap",
    "fx_trace": "test_fx_symbolic_trace",
    "autocast": "test_autocast_bf16_statistics_in_fp32",
}

# Options that take the layers off their default path (the defaults are in test_conformance).
CONFIGS = [
    ("ghost_bn", {"ghost_batch_size": 2}),  # two ghost batches at N = 4 (and 1 at N = 2)
    ("ghost_bn", {"num_splits": 3, "momentum": None}),  # short last chunk, cumulative average
    ("bgn", {"num_groups": 2}),  # G < C: the per-instance affine path
    ("fourthings", {"examples_per_group": 3, "channels_per_group": 2}),
    ("ubn", {"decide": "step", "tau": math.inf}),  # step 1 condensed, then frozen
    ("ubn", {"decide": "step", "tau": math.inf, "below_tau": "batch_no_update"}),
    ("ubn", {"decide": "step", "tau": -math.inf, "affine_rect": False, "momentum": None}),
    ("rbn", {"affine": False}),
]


def _suite(variant: str, options: dict[str, object]) -> VariantConformance:
    attrs = {"variant": variant, "options": options, "gradgradcheck_shape": (4, 4, 2, 2)}
    return type("TestConfig", (VariantConformance,), attrs)()


@pytest.mark.parametrize("check", ["compile", "double_backward", "autocast"])
@pytest.mark.parametrize(("variant", "options"), CONFIGS, ids=lambda v: str(v))
def test_non_default_paths(variant: str, options: dict[str, object], check: str) -> None:
    suite = _suite(variant, options)
    torch.manual_seed(0)
    getattr(suite, CHECKS[check])()


class _HostSyncBN(nn.BatchNorm2d):
    """A plugin whose forward reads a tensor on the host (a graph break under fullgraph)."""

    paper = "none (test double)"
    batch_dependent = True

    def __init__(self, num_features: int, *, eps=1e-5, momentum=0.1, device=None, dtype=None):
        super().__init__(num_features, eps=eps, momentum=momentum, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.num_features:
            raise ValueError(f"expected (N, {self.num_features}, H, W), got {tuple(x.shape)}")
        if float(x.abs().max().item()) > 1e6:  # a host read: a graph break, no vmap
            raise ValueError("input too large")
        return super().forward(x)


class TestPluginOptsOutOfCompile(VariantConformance):
    """The whole kit on a plugin, which opts out of one check with a reason."""

    variant = _HostSyncBN
    reason = "reads the input on the host to validate it"
    opt_out = {"compile": reason, "fx_trace": reason, "torch_func": reason, "accelerator": reason}


def test_compile_check_catches_a_host_sync() -> None:
    suite = type("TestSync", (VariantConformance,), {"variant": _HostSyncBN})()
    with pytest.raises(Exception, match="(?i)graph break|item|unsupported"):
        suite.test_compile_fullgraph_matches_eager()


def test_accelerator_check_catches_a_host_sync() -> None:
    suite = type("TestSync", (VariantConformance,), {"variant": _HostSyncBN})()
    with pytest.raises(AssertionError, match="host syncs/copies"):
        suite.test_accelerator_path_has_no_host_sync_and_keeps_channels_last()


def test_opt_out_reports_the_reason_and_rejects_unknown_checks() -> None:
    suite = TestPluginOptsOutOfCompile()
    with pytest.raises(pytest.skip.Exception, match="reads the input on the host"):
        suite.test_compile_fullgraph_matches_eager()
    bad = type("TestBad", (VariantConformance,), {"variant": "bn", "opt_out": {"jit": "no"}})()
    with pytest.raises(TypeError, match="opt_out must map check names"):
        bad.test_fx_symbolic_trace()
    empty = type(
        "TestEmpty", (VariantConformance,), {"variant": "bn", "opt_out": {"fx_trace": ""}}
    )()
    with pytest.raises(TypeError, match="non-empty reason"):
        empty.test_fx_symbolic_trace()


class _ContiguousBN(_HostSyncBN):
    """A plugin that makes its input contiguous (drops channels_last), without host syncs."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.BatchNorm2d.forward(self, x.contiguous())


def test_channels_last_checks_catch_a_layer_that_drops_it() -> None:
    suite = type("TestContiguous", (VariantConformance,), {"variant": _ContiguousBN})()
    with pytest.raises(AssertionError, match="not channels_last"):
        suite.test_channels_last_is_kept()
    with pytest.raises(AssertionError, match="does not keep"):
        suite.test_accelerator_path_has_no_host_sync_and_keeps_channels_last()
