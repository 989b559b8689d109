"""A built-in layer traced alone (`torch.fx.symbolic_trace(layer)`) gives a GraphModule that
computes what the layer computes, in training and eval, with the layer's own parameters and
buffers, and keeps its input checks; inside a model the layer stays one fx leaf node."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from normbench.variants import BUILTIN_VARIANTS

OPTIONS = {"gn": {"num_groups": 2}, "bgn": {"num_groups": 2}}
# a style-conditioned layer (forward(x, style)) traces with the style as its second input
STYLE = torch.linspace(-1.0, 3.0, 8 * 4 * 3 * 3).reshape(8, 4, 3, 3)


@pytest.mark.parametrize("name", sorted(BUILTIN_VARIANTS))
def test_a_lone_layer_traces_and_runs_as_itself(name: str) -> None:
    torch.manual_seed(0)
    layer = BUILTIN_VARIANTS[name](4, **OPTIONS.get(name, {}))
    extra = (STYLE,) if getattr(layer, "conditioning", None) == "style" else ()
    reference = copy.deepcopy(layer)
    traced = torch.fx.symbolic_trace(layer)
    calls = [n for n in traced.graph.nodes if n.op not in ("placeholder", "output")]
    assert [(n.op, n.target) for n in calls] == [("call_module", "traced_leaf")]
    for step in range(3):
        training = step < 2
        traced.train(training)
        reference.train(training)
        x = 1.0 + 2.0 * torch.randn(8, 4, 5, 5, generator=torch.Generator().manual_seed(step))
        torch.testing.assert_close(traced(x, *extra), reference(x, *extra), rtol=0, atol=0)
    # the GraphModule's state is the layer's: an optimiser over it trains the layer
    assert {k for k, _ in traced.named_parameters()} == {
        f"traced_leaf.{k}" for k, _ in layer.named_parameters()
    }
    with pytest.raises(ValueError):
        traced(torch.randn(8, 4, 5), *extra)  # 3-D: the layer's own input check


def test_inside_a_model_the_layer_stays_one_leaf_node() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 1), BUILTIN_VARIANTS["ghost_bn"](4), nn.ReLU())
    ops = [(n.op, getattr(n.target, "__name__", n.target)) for n in
           torch.fx.symbolic_trace(model).graph.nodes]  # fmt: skip
    assert ops == [
        ("placeholder", "input"),
        ("call_module", "0"),
        ("get_attr", "1"),  # the layer, an argument of its one node
        ("call_function", "leaf_forward"),
        ("call_module", "2"),
        ("output", "output"),
    ]
