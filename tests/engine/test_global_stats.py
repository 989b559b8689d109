"""Global statistics scope under real DDP: 2 gloo ranks == the same layer on the one batch.

Every built-in batch-dependent layer (and the option settings that take its other code
paths) runs through `normbench.testing_ranks` (the conformance kit's check of a
`global_stats = True` claim): two training steps and an eval forward as a 2-rank DDP module
(float64, gloo, `global_statistics` installed as a DDP trial with `stats_scope: global` does),
against the same layer in one process on the concatenated 2 x 6 batch. Compared: outputs,
input gradients, parameter gradients, every buffer after each step, the eval output. Two
plugin files join them: one whose claim holds and one that claims global statistics but
normalises each rank's slice alone, which the check must catch.

One pair of gloo processes runs every case (process start-up dominates).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from normbench.testing_ranks import PER_RANK, Case, layer_of, mismatches, run_ranks
from normbench.variants import BUILTIN_VARIANTS

# Cases: (variant, options). Several take a layer's other code paths: ghost batches that
# straddle the two ranks (4 | 12, 4 ∤ 6), one ghost batch over both ranks, BGN's channel
# groups / G = C / spatial groups, FourThings with example groups and whole-batch statistics,
# UBN with its per-step similarity decision and with the epoch decision.
CASES: dict[str, Case] = {
    name: Case(name) for name, cls in BUILTIN_VARIANTS.items() if cls.batch_dependent
}
CASES.update(
    {
        "ghost_bn": Case("ghost_bn", {"ghost_batch_size": 4}),
        "ghost_bn(one ghost batch)": Case("ghost_bn", {"ghost_batch_size": 12}),
        "ghost_bn(num_splits)": Case("ghost_bn", {"num_splits": 3}),
        "bgn": Case("bgn", {"num_groups": 2}),
        "bgn(G=C)": Case("bgn", {"num_groups": 8}),
        "bgn(spatial)": Case("bgn", {"num_groups": 16, "allow_spatial_groups": True}),
        "fourthings": Case("fourthings", {"examples_per_group": 4, "channels_per_group": 2}),
        "fourthings(whole batch)": Case("fourthings", {"channels_per_group": 2}),
        "ubn": Case("ubn", {"decide": "step", "tau": 0.05, "sim_init": "zero"}),
        "ubn(epoch, centered gap)": Case("ubn", {"sim_source": "centered", "sim_features": "gap"}),
        "bn(momentum None)": Case("bn", {"momentum": None}),
        "bnet(momentum None)": Case("bnet", {"momentum": None}),
        "sabn(momentum None)": Case("sabn", {"momentum": None}),
        "iebn(momentum None)": Case("iebn", {"momentum": None}),
        "ghost_bn(momentum None)": Case("ghost_bn", {"ghost_batch_size": 4, "momentum": None}),
        "ubn(momentum None)": Case("ubn", {"momentum": None}),
        # r and d from the first step, clipped on some channels and not on others
        "brn(relaxed)": Case("brn", {"relax_from": 0, "rmax_at": 1, "dmax_at": 1, "rmax": 1.5}),
        "brn(momentum None)": Case("brn", {"momentum": None, "relax_from": 0, "rmax_at": 0}),
        "evonorm_b0(momentum None)": Case("evonorm_b0", {"momentum": None}),
    }
)
# Plugin files: a layer built on normbench's BN keeps its claim; torch's BN does not.
HONEST = """
from normbench import register_variant
from normbench.variants import BatchNorm2d

@register_variant("honest_global_bn")
class HonestBN(BatchNorm2d):
    pass
"""
LIAR = """
from torch import nn
from normbench import register_variant

@register_variant("liar_global_bn")
class LiarBN(nn.BatchNorm2d):
    paper = "a plugin that claims what it does not do (test double)"
    batch_dependent = True
    global_stats = True

    def __init__(self, num_features, *, eps=1e-5, momentum=0.1, device=None, dtype=None):
        super().__init__(num_features, eps=eps, momentum=momentum, device=device, dtype=dtype)
"""


@pytest.fixture(scope="module")
def cases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Case]:
    folder = tmp_path_factory.mktemp("claims")
    (folder / "honest.py").write_text(HONEST)
    (folder / "liar.py").write_text(LIAR)
    return {
        **CASES,
        "plugin honest": Case("honest_global_bn", plugin=str(folder / "honest.py")),
        "plugin liar": Case("liar_global_bn", plugin=str(folder / "liar.py")),
    }


@pytest.fixture(scope="module")
def ranks(cases: dict[str, Case]) -> list[dict[str, Any]]:
    return run_ranks(cases)


@pytest.mark.parametrize("case", [*CASES, "plugin honest"])
def test_global_scope_equals_the_layer_on_the_whole_batch(
    cases: dict[str, Case], ranks: list, case: str
) -> None:
    assert mismatches(cases[case], ranks, case) == []


def test_a_false_global_stats_claim_is_caught(cases: dict[str, Case], ranks: list) -> None:
    found = mismatches(cases["plugin liar"], ranks, "plugin liar")
    assert any("step 0: y:" in f for f in found), found
    assert any("buffer running_mean" in f for f in found), found


def test_the_device_scope_differs(ranks: list) -> None:
    """The comparison has teeth: without the context the ranks' BN outputs are different."""
    from normbench.testing_ranks import _data

    x, _ = _data(0)
    local = layer_of(CASES["bn"])(x[:PER_RANK])
    assert not torch.allclose(local, ranks[0]["bn"][0]["y"], rtol=1e-6)


def test_a_plugin_class_is_rebuilt_from_its_file(cases: dict[str, Case]) -> None:
    from normbench.testing_ranks import case_for
    from normbench.variants_api import VARIANTS

    layer_of(cases["plugin honest"])  # loads the file here too
    cls = VARIANTS.get("honest_global_bn").obj
    case = case_for(cls, {})
    assert case.variant == "honest_global_bn" and case.plugin == cases["plugin honest"].plugin
    assert Path(str(case.plugin)).name == "honest.py"
