"""The NAS-Bench-201 space (normbench.models.nas201): the genotype text, the cell's DAG against a
hand computation, the macro skeleton's parameter count against a closed form, and the found cell
trained as a classification trial through normbench's one training loop."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from normbench.engine.loop import run_trial
from normbench.errors import UserError
from normbench.models import create_backbone
from normbench.models.nas201 import (
    RESNET_CELL,
    Cell,
    Zero,
    format_genotype,
    parse_genotype,
)
from normbench.tasks.nas.search import retrain_spec

ALL_3X3 = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+" + "|".join(
    ["", "nor_conv_3x3~0", "nor_conv_3x3~1", "nor_conv_3x3~2", ""]
)
ALL_NONE = "|none~0|+|none~0|none~1|+|none~0|none~1|none~2|"


def test_genotype_text_round_trip_and_errors() -> None:
    cell = parse_genotype(RESNET_CELL)
    assert cell == (
        (("nor_conv_3x3", 0),),
        (("none", 0), ("nor_conv_3x3", 1)),
        (("skip_connect", 0), ("none", 1), ("skip_connect", 2)),
    )
    assert format_genotype(cell) == RESNET_CELL
    for bad, words in [
        ("|conv_5x5~0|", "unknown operation 'conv_5x5'"),
        ("|none~1|", "node 1 can only take an earlier node, not 1"),
        ("|none-0|", "must read op~j"),
        ("none~0", "must read |op~j|"),
        ("", "a genotype is a text"),
    ]:
        with pytest.raises(ValueError, match=words.replace("|", r"\|")):
            parse_genotype(bad)


def test_cell_computes_its_dag() -> None:
    torch.manual_seed(0)
    text = "|nor_conv_1x1~0|+|avg_pool_3x3~0|skip_connect~1|+|none~0|nor_conv_3x3~1|skip_connect~2|"
    cell = Cell(parse_genotype(text), 4, nn.BatchNorm2d).eval()
    conv1, pool, skip1, none, conv3, skip2 = cell.ops
    assert isinstance(pool, nn.AvgPool2d) and isinstance(none, Zero)
    assert isinstance(skip1, nn.Identity) and isinstance(skip2, nn.Identity)
    x = torch.randn(2, 4, 6, 6)
    with torch.no_grad():
        # by hand: node1 = bn(conv1x1(relu x)); node2 = avgpool(x) + node1;
        # node3 = bn(conv3x3(relu node1)) + node2
        n1 = conv1[2](nn.functional.conv2d(x.relu(), conv1[1].weight))
        n2 = nn.functional.avg_pool2d(x, 3, 1, 1, count_include_pad=False) + n1
        n3 = conv3[2](nn.functional.conv2d(n1.relu(), conv3[1].weight, padding=1)) + n2
        torch.testing.assert_close(cell(x), n3)


def count(text: str, classes: int = 10) -> int:
    """Closed form: stem conv + BN; per cell, each conv edge 9C^2 or C^2 weights + BN;
    reduction blocks (two 3x3 convs + BNs, a 1x1 shortcut conv); last BN; classifier."""
    kernel = {"nor_conv_3x3": 9, "nor_conv_1x1": 1}
    ops = [op for node in parse_genotype(text) for op, _ in node]
    total = 3 * 16 * 9 + 2 * 16
    for c in (16, 32, 64):
        total += 5 * sum(kernel[op] * c * c + 2 * c for op in ops if op in kernel)
    for c in (16, 32):
        total += 9 * c * 2 * c + 9 * (2 * c) ** 2 + 2 * (2 * 2 * c) + c * 2 * c
    return total + 2 * 64 + 64 * classes + classes


@pytest.mark.parametrize("text", [ALL_NONE, ALL_3X3, RESNET_CELL])
def test_parameters_of_the_benchmark_networks(text: str) -> None:
    model = create_backbone("nas201", 10, nn.BatchNorm2d, genotype=text)
    assert sum(p.numel() for p in model.parameters()) == count(text)
    with torch.no_grad():
        assert model.eval()(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_a_bad_genotype_option_is_one_user_error() -> None:
    with pytest.raises(UserError, match="option 'genotype': .*unknown operation 'conv'"):
        create_backbone("nas201", 10, nn.BatchNorm2d, genotype="|conv~0|")


def test_found_cell_trains_as_a_classification_trial() -> None:
    spec = retrain_spec(
        RESNET_CELL,
        "digits",
        epochs=2,
        batch_size=64,
        channels=8,
        cells_per_stage=1,
        device="cpu",
        num_threads=1,
        probe=False,
    )
    assert spec.backbone == "nas201" and spec.recipe.nesterov and spec.recipe.schedule == "cosine"
    records = list(run_trial(spec))
    assert [r["status"] for r in records] == ["ok", "ok"]
    assert records[-1]["test_top1"] > 50  # ten digit classes: chance is 10%
