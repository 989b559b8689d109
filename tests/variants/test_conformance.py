"""The variant contract (`normbench.testing.VariantConformance`) for every registered variant,
built-in or installed plugin, looked up by registry name exactly as a plugin author would run it.

No hand-written class per variant: one `VariantConformance` subclass is generated for each
name in the registry (a new built-in is covered the moment it is registered), plus a few extra
option sets. `SETTINGS` adapts a check's inputs where a layer needs it; it never skips a check.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from normbench.registry import BUILTIN
from normbench.testing import VariantConformance
from normbench.testing_style import StyleConformance
from normbench.variants import GroupNorm2d, plain_norm
from normbench.variants_api import VARIANTS

# Inputs a layer needs for the contract checks, by registry name.
SETTINGS: dict[str, dict[str, Any]] = {
    # IN raises on 1×1 maps (docs/variants.md#in), which resnet18's last stage reaches at 32×32
    "in": {"resnet_input_shape": (2, 3, 64, 64)},
}
# Option sets worth checking besides the defaults: (name, options, settings).
EXTRA_CONFIGS: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    # eval normalises with the batch's statistics
    ("bn", {"track_running_stats": False}, {"batch_independent_eval": False}),
    ("bnet", {"kernel_size": 5, "init": "zero"}, {}),
    ("sabn", {"num_branches": 3}, {}),
    # ghost batches of 2: the first sample's statistics come from it and the second only
    ("ghost_bn", {"ghost_batch_size": 2}, {}),
    # r and d at their bounds from the first step (the kit's N(2, 1.5²) input: r = σ_B ≈ 1.5,
    # d = μ_B ≈ 2), so the clipped corrections, not plain BN, meet every check. Finite
    # differences see r and d move with x where the paper's stop-gradient hides it, so the
    # gradient checks need them clipped on every channel: the 2x2x2 double-backward batch
    # leaves one unclipped, the 3x3x3 one does not.
    (
        "brn",
        {"relax_from": 0, "rmax_at": 0, "dmax_at": 0, "rmax": 1.2, "dmax": 0.5},
        {"gradgradcheck_shape": (3, 4, 3, 3)},
    ),
    ("frn", {"learnable_eps": True}, {}),
    ("evonorm_s0", {"num_groups": 4}, {}),
]


# The built-ins' global_stats claims run together, with more option settings, in one pair of
# gloo processes (tests/engine/test_global_stats.py): not once more per class here.
BUILTIN_CLAIMS = {"global_stats": "checked with every built-in in tests/engine/test_global_stats"}


def _conformance_class(name: str, options: dict[str, Any], settings: dict[str, Any]) -> type:
    suffix = "".join(f"_{k}_{v}" for k, v in options.items())
    attrs = {"variant": name, "options": options, **SETTINGS.get(name, {}), **settings}
    entry = VARIANTS.get(name)
    if entry.source == BUILTIN:
        attrs["opt_out"] = {**BUILTIN_CLAIMS, **attrs.get("opt_out", {})}
    # a style-conditioned layer (forward(x, style), AdaIN) runs the same checks on a bound style
    kit = VariantConformance if plain_norm(entry.obj) else StyleConformance
    return type(f"TestConformance_{name}{suffix}", (kit,), attrs)


# Built-ins and installed plugins (entry points); not variants a test file registered earlier.
REGISTERED = [e.name for e in VARIANTS.entries() if not e.source.startswith(("file:", "module:"))]
GENERATED = [_conformance_class(name, {}, {}) for name in REGISTERED]
GENERATED += [_conformance_class(*config) for config in EXTRA_CONFIGS]
globals().update({cls.__name__: cls for cls in GENERATED})  # collected by pytest as classes


def test_every_registered_variant_has_a_conformance_class() -> None:
    covered = {cls.variant for cls in GENERATED}
    assert set(REGISTERED) <= covered
    assert {"bn", "in", "gn", "iebn", "rbn", "bnet", "sabn", "bgn", "ghost_bn", "ubn"} <= covered
    assert {"adain", "saadain"} <= covered
    styled = {cls.variant for cls in GENERATED if issubclass(cls, StyleConformance)}
    assert styled == {name for name in REGISTERED if not plain_norm(VARIANTS.get(name).obj)}


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


class _KernelWithoutDecayTargets(_BrokenBN):
    """A depthwise-kernel affine (as BNET's) that does not name its identity."""

    def __init__(self, num_features: int, **kwargs: Any) -> None:
        super().__init__(num_features, **kwargs)
        self.weight = nn.Parameter(torch.ones(num_features, 1, 3, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.batch_norm(x, self.running_mean, self.running_var, None, self.bias,
                         self.training, 0.1, self.eps)  # fmt: skip
        return y * self.weight[:, 0, 1, 1].view(1, -1, 1, 1)


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
        (_KernelWithoutDecayTargets, "test_decay_targets_name_the_identity_affine"),
    ],
)
def test_conformance_fails_a_broken_variant(broken: type, check: str) -> None:
    suite = type("TestBroken", (VariantConformance,), {"variant": broken})()
    with pytest.raises((AssertionError, RuntimeError, ValueError, pytest.fail.Exception)):
        getattr(suite, check)()
