"""The variant contract (`normbench.testing.VariantConformance`) for all eleven built-ins,
looked up by registry name, exactly as a plugin author would run it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from normbench.testing import VariantConformance
from normbench.variants import GroupNorm2d


class TestBN(VariantConformance):
    variant = "bn"


class TestBNWithoutRunningStats(VariantConformance):
    variant = "bn"
    options = {"track_running_stats": False}
    batch_independent_eval = False  # eval normalises with the batch's statistics


class TestIN(VariantConformance):
    variant = "in"
    # IN raises on 1×1 maps (spec §4), which resnet18's last stage reaches at 32×32
    resnet_input_shape = (2, 3, 64, 64)


class TestGN(VariantConformance):
    variant = "gn"


class TestIEBN(VariantConformance):
    variant = "iebn"


class TestRBN(VariantConformance):
    variant = "rbn"


class TestBNET(VariantConformance):
    variant = "bnet"


class TestBNETZeroInit(VariantConformance):
    variant = "bnet"
    options = {"kernel_size": 5, "init": "zero"}


class TestSaBN(VariantConformance):
    variant = "sabn"


class TestSaBNThreeBranches(VariantConformance):
    variant = "sabn"
    options = {"num_branches": 3}


class TestBGN(VariantConformance):
    variant = "bgn"


class TestGhostBN(VariantConformance):
    variant = "ghost_bn"


class TestUBN(VariantConformance):
    variant = "ubn"


class TestFourThings(VariantConformance):
    variant = "fourthings"


class TestClassReference(VariantConformance):
    """A class (not a registry name) with options, as a plugin's own test would pass it."""

    variant = GroupNorm2d
    options = {"num_groups": 4}


# -- the conformance class catches broken variants ------------------------------------------
class _BrokenBN(nn.BatchNorm2d):
    """nn.BatchNorm2d with the contract signature; subclasses break one rule each."""

    paper = "none (test double)"
    batch_dependent = True

    def __init__(self, num_features: int, *, eps=1e-5, momentum=0.1, device=None, dtype=None):
        super().__init__(num_features, eps=eps, momentum=momentum, device=device, dtype=dtype)


class _MutatesInput(_BrokenBN):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.add_(1.0))


class _UpdatesInEval(_BrokenBN):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            self.running_mean.add_(1.0)
        return super().forward(x)


class _LeaksInputPastWeight(_BrokenBN):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) + 0.1 * x  # zero_init_residual cannot silence it


class _ViewsChannelsLast(_BrokenBN):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        return super().forward(x).view(n, 2, -1).view(n, c, h, w)  # a GN-style group view


class _AcceptsAnyRank(_BrokenBN):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(x, None, None, self.weight, self.bias, True, 0.0, self.eps)


@pytest.mark.parametrize(
    ("broken", "check"),
    [
        (_MutatesInput, "test_input_not_mutated"),
        (_UpdatesInEval, "test_eval_is_deterministic_and_changes_no_state"),
        (_UpdatesInEval, "test_buffers_update_only_in_training"),
        (_LeaksInputPastWeight, "test_zeroed_weight_makes_output_constant"),
        (_ViewsChannelsLast, "test_channels_last_matches_contiguous"),
        (_AcceptsAnyRank, "test_non_4d_input_raises"),
    ],
)
def test_conformance_fails_a_broken_variant(broken: type, check: str) -> None:
    suite = type("TestBroken", (VariantConformance,), {"variant": broken})()
    with pytest.raises((AssertionError, RuntimeError, pytest.fail.Exception)):
        getattr(suite, check)()
