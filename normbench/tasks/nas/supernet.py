"""DARTS' supernet on the NAS-Bench-201 space (Liu, Simonyan & Yang, "DARTS: Differentiable
Architecture Search", ICLR 2019, arXiv 1806.09055, Sec 2.1-2.2), with a registered norm layer
inside every candidate operation.

Every edge j -> i of a search cell carries all candidate operations at once and outputs their
mixture sum_o softmax(alpha_e)_o * o(x) (Eq. 2); the cells of the whole network share one
architecture matrix alpha of shape (edges, operations), initialised 1e-3 * N(0, 1) as the
official code does. The found cell takes, per edge, the operation of largest alpha (`none`
included, as the NAS-Bench-201 DARTS-V1 code does). The skeleton (stem, reduction blocks, last
norm) is `normbench.models.nas201.CellNetwork`; its norms are `skeleton_norm_layer` (BN, as in
the official supernet), the operations' norms `norm_layer`.

Branch-indexed norms (SaBN's NAS experiments; docs/variants.md#branch-index). The official
DARTS-SaBN supernet (`NAS/lib/models/cell_searchs/search_cells_sabn.py`,
`cell_operations_sabn.py`, `norm_modules.py`) gives the norm of an operation on an edge leaving
node j one branch per *sub-architecture feeding node j*: on every forward, each edge k -> j
samples one operation s_(k->j) from softmax(alpha_(k->j)) (`multinomial`, one draw per edge and
cell, for the whole batch), and every operation on an edge leaving node j uses branch

    index_j = sum_(k < j) s_(k->j) * |O|^k        of  K_j = |O|^j branches

(node 0, the cell input, has the single branch 0; with 5 operations, edges leaving nodes 1 and 2
have 5 and 25 branches). Any layer that subclasses `normbench.variants.BranchIndexed` gets this:
it is built with `num_branches=K_j` and run inside `branch_index(edge, index_j)`; a plain
norm layer is built with `norm_layer(C)` and no operation is sampled. The official layer keeps
separate BN statistics per branch, then a shared affine, then the branch's affine (flavour (b)
in docs/variants.md#sabn); which of that a run gets is the registered layer's business.

Ours: the official flag that skips the branch affine for "the first cell's node 0" is never set
by the official search cells, so it is not offered.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from normbench.models.nas201 import (
    NODES,
    OPERATIONS,
    CellNetwork,
    NormLayer,
    format_genotype,
    operation,
)
from normbench.variants import BatchNorm2d, BranchIndexed, branch_index


def edges(nodes: int = NODES) -> list[tuple[int, int]]:
    """The cell's edges (i, j), j -> i, in the order of alpha's rows (the official
    `edge2index`: sorted "i<-j" names)."""
    return [(i, j) for i in range(1, nodes) for j in range(i)]


def branch_norm(norm_layer: Callable[..., nn.Module], channels: int, branches: int) -> nn.Module:
    """`norm_layer(channels)`, rebuilt with `num_branches=branches` when it is branch-indexed."""
    layer = norm_layer(channels)
    if isinstance(layer, BranchIndexed) and layer.num_branches != branches:
        layer = norm_layer(channels, num_branches=branches)
    return layer


class MixedEdge(nn.Module):
    """Every candidate operation of one edge; `forward(x, weights)` = sum_o weights[o] * o(x)."""

    def __init__(self, operations: Sequence[str], channels: int, norm_layer: NormLayer) -> None:
        super().__init__()
        self.ops = nn.ModuleList(operation(name, channels, norm_layer) for name in operations)

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        out = self.ops[0](x) * weights[0]
        for w, op in zip(weights[1:], self.ops[1:], strict=True):
            out = out + op(x) * w
        return out


class SearchCell(nn.Module):
    """A NAS-Bench-201 cell with a `MixedEdge` on each of its edges (module doc)."""

    def __init__(
        self,
        channels: int,
        norm_layer: Callable[..., nn.Module],
        operations: Sequence[str] = OPERATIONS,
        nodes: int = NODES,
    ) -> None:
        super().__init__()
        self.nodes, n = nodes, len(operations)
        self.edges = nn.ModuleDict(
            {
                f"{i}<-{j}": MixedEdge(
                    operations, channels, functools.partial(branch_norm, norm_layer, branches=n**j)
                )
                for i, j in edges(nodes)
            }
        )
        self.branch_indexed = any(isinstance(m, BranchIndexed) for m in self.modules())

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """x (N, C, H, W); weights (edges, operations): softmax(alpha) rows in `edges()` order."""
        nodes, codes, n = [x], [0], weights.shape[1]
        rows = iter(weights)
        for i in range(1, self.nodes):
            total, code = torch.zeros_like(x), 0
            for j in range(i):
                w, edge = next(rows), self.edges[f"{i}<-{j}"]
                if self.branch_indexed:
                    with branch_index(edge, codes[j]):
                        total = total + edge(nodes[j], w)
                    code += int(torch.multinomial(w.detach(), 1)) * n**j
                else:
                    total = total + edge(nodes[j], w)
            nodes.append(total)
            codes.append(code)
        return nodes[-1]


class Supernet(CellNetwork):
    """The NAS-Bench-201 skeleton with search cells sharing one `alphas` (edges, operations).

    `forward(x)`: (N, in_channels, H, W) -> logits (N, num_classes). `arch_parameters()` and
    `weight_parameters()` are the two sets DARTS' bilevel steps update; `genotype()` is the
    found cell's text (normbench.models.nas201)."""

    def __init__(
        self,
        num_classes: int,
        norm_layer: Callable[..., nn.Module],
        *,
        skeleton_norm_layer: NormLayer = BatchNorm2d,
        channels: int = 16,
        cells_per_stage: int = 5,
        in_channels: int = 3,
        operations: Sequence[str] = OPERATIONS,
        nodes: int = NODES,
    ) -> None:
        super().__init__(
            lambda c, _: SearchCell(c, norm_layer, operations, nodes),  # ReLUs kept (nas201)
            num_classes,
            skeleton_norm_layer,
            channels=channels,
            cells_per_stage=cells_per_stage,
            in_channels=in_channels,
        )
        self.operations, self.nodes = tuple(operations), nodes
        self.architecture = Architecture(operations, nodes)
        self.fixed = False  # True: alpha enters the forward as a constant (`fixed_architecture`)

    @property
    def alphas(self) -> nn.Parameter:
        return self.architecture.alphas

    @contextlib.contextmanager
    def fixed_architecture(self) -> Iterator[None]:
        """Forwards inside take alpha as a constant: their loss gives alpha no gradient."""
        self.fixed = True
        try:
            yield
        finally:
            self.fixed = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        alphas = self.alphas.detach() if self.fixed else self.alphas
        weights = F.softmax(alphas, dim=-1)
        x = self.stem(x)
        for layer in self.cells:
            x = layer(x, weights) if isinstance(layer, SearchCell) else layer(x)
        return self.head(x)

    def arch_parameters(self) -> list[nn.Parameter]:
        return [self.alphas]

    def weight_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p is not self.alphas]

    def genotype(self) -> str:
        return genotype_of(self.alphas, self.operations, self.nodes)


class Architecture(nn.Module):
    """alpha (edges, operations), initialised 1e-3 * N(0, 1); `diagnostics()` gives
    softmax(alpha) as {"i<-j op": probability} for the epoch records."""

    def __init__(self, operations: Sequence[str] = OPERATIONS, nodes: int = NODES) -> None:
        super().__init__()
        self.operations, self.nodes = tuple(operations), nodes
        self.alphas = nn.Parameter(1e-3 * torch.randn(len(edges(nodes)), len(operations)))

    def diagnostics(self) -> dict[str, float]:
        probs = F.softmax(self.alphas.detach().float().cpu(), dim=-1).tolist()
        return {
            f"{i}<-{j} {op}": p
            for (i, j), row in zip(edges(self.nodes), probs, strict=True)
            for op, p in zip(self.operations, row, strict=True)
        }


def genotype_of(alphas: torch.Tensor, operations: Sequence[str], nodes: int = NODES) -> str:
    """The cell of largest alpha on every edge, as the benchmark's text."""
    best = alphas.detach().argmax(dim=-1).tolist()
    picks = dict(zip(edges(nodes), best, strict=True))
    cell = tuple(tuple((operations[picks[i, j]], j) for j in range(i)) for i in range(1, nodes))
    return format_genotype(cell)
