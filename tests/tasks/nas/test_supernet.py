"""The supernet (normbench.tasks.nas.supernet): mixed edges, the found cell, and the index every
branch-indexed norm gets, against the official rule computed by hand (the sub-architecture
sampled on the edges into the operation's source node, in base |O|)."""

from __future__ import annotations

import torch
from torch import nn

from normbench.models.nas201 import OPERATIONS, ReLUConvNorm, parse_genotype
from normbench.tasks.nas.supernet import MixedEdge, SearchCell, Supernet, edges, genotype_of
from normbench.variants import BranchIndexed, SandwichBatchNorm2d
from normbench.variants_api import norm_layer


class RecordingNorm(BranchIndexed, nn.BatchNorm2d):
    """A branch-indexed plugin layer that records the index of each call."""

    def __init__(self, num_features: int, *, num_branches: int = 1) -> None:
        super().__init__(num_features)
        self.num_branches = num_branches
        self.seen: list[object] = []

    def forward(self, x: torch.Tensor, index: object = None) -> torch.Tensor:
        self.seen.append(self.resolve_index(x, index))  # type: ignore[arg-type]
        return super().forward(x)


def test_edges_are_in_the_official_order() -> None:
    assert [f"{i}<-{j}" for i, j in edges()] == sorted(f"{i}<-{j}" for i, j in edges())


def test_a_one_hot_mixture_is_the_chosen_operation() -> None:
    torch.manual_seed(0)
    edge = MixedEdge(OPERATIONS, 4, nn.BatchNorm2d)
    x = torch.randn(2, 4, 5, 5)
    for k, op in enumerate(edge.ops):
        torch.testing.assert_close(edge(x, torch.eye(5)[k]), op(x))
    w = torch.tensor([0.1, 0.2, 0.3, 0.25, 0.15])
    mixture = sum(wk * op(x) for wk, op in zip(w, edge.ops, strict=True))
    torch.testing.assert_close(edge(x, w), mixture)


def test_genotype_is_the_largest_alpha_of_each_edge() -> None:
    alphas = torch.zeros(6, 5)
    for row, op in enumerate([3, 0, 3, 1, 0, 1]):  # rows: 1<-0, 2<-0, 2<-1, 3<-0, 3<-1, 3<-2
        alphas[row, op] = 1.0
    text = genotype_of(alphas, OPERATIONS)
    assert parse_genotype(text) == parse_genotype(
        "|nor_conv_3x3~0|+|none~0|nor_conv_3x3~1|+|skip_connect~0|none~1|skip_connect~2|"
    )


def test_branch_indexed_norms_get_the_source_nodes_sampled_sub_architecture() -> None:
    cell = SearchCell(3, RecordingNorm)
    # K = 5^j branches for an operation on an edge leaving node j
    for (i, j), key in zip(edges(), cell.edges, strict=True):
        norms = [m for m in cell.edges[key].modules() if isinstance(m, RecordingNorm)]
        assert len(norms) == 2 and {m.num_branches for m in norms} == {5**j}, (i, j)
    # alpha so peaked that the sampled operations are certain: 1<-0 takes nor_conv_3x3 (3),
    # 2<-0 avg_pool (4), 2<-1 skip (1); what the edges into node 3 sample indexes nothing.
    picks = {(1, 0): 3, (2, 0): 4, (2, 1): 1, (3, 0): 2, (3, 1): 2, (3, 2): 0}
    logits = torch.full((6, 5), -1e4)
    for row, edge in enumerate(edges()):
        logits[row, picks[edge]] = 0.0
    cell(torch.randn(4, 3, 5, 5), torch.softmax(logits, -1))
    expected = {0: 0, 1: 3, 2: 4 + 5 * 1}  # node j's index: sum_k s(k->j) 5^k
    for (_, j), key in zip(edges(), cell.edges, strict=True):
        for m in cell.edges[key].modules():
            if isinstance(m, RecordingNorm):
                assert m.seen == [expected[j]], (key, m.seen)
                assert m.context_index is None  # the context is left on exit


def test_a_plain_norm_samples_nothing() -> None:
    cell = SearchCell(3, nn.BatchNorm2d)
    assert not cell.branch_indexed
    torch.manual_seed(5)
    cell(torch.randn(4, 3, 5, 5), torch.softmax(torch.randn(6, 5), -1))
    after = torch.rand(1)
    torch.manual_seed(5)
    torch.randn(4, 3, 5, 5), torch.randn(6, 5)
    assert torch.equal(torch.rand(1), after)  # the global RNG was not drawn from


def test_supernet_norms_and_parameter_sets() -> None:
    torch.manual_seed(0)
    net = Supernet(10, norm_layer("sabn"), channels=4, cells_per_stage=1, in_channels=1)
    inside = [m for m in net.cells.modules() if isinstance(m, SandwichBatchNorm2d)]
    # 3 search cells x 6 edges x 2 convs; reduction blocks and skeleton keep BN
    assert len(inside) == 36
    assert sorted({m.num_branches for m in inside}) == [1, 5, 25]
    blocks = [m for m in net.cells.modules() if isinstance(m, ReLUConvNorm)]
    assert sum(not isinstance(b[2], SandwichBatchNorm2d) for b in blocks) == 4
    assert net.arch_parameters() == [net.alphas] and net.alphas.shape == (6, 5)
    assert all(p is not net.alphas for p in net.weight_parameters())
    n_all = sum(p.numel() for p in net.parameters())
    assert sum(p.numel() for p in net.weight_parameters()) == n_all - 30
    assert net(torch.randn(2, 1, 8, 8)).shape == (2, 10)
    parse_genotype(net.genotype())
