"""The NAS-Bench-201 search space and its networks (Dong & Yang, "NAS-Bench-201: Extending the
Scope of Reproducible Neural Architecture Search", ICLR 2020, arXiv 2001.00326, Sec 2.1).

A *cell* is a DAG of 4 nodes: node 0 is the cell's input, node i (1..3) is the sum of one
operation on each edge j -> i from every earlier node j; node 3 is the cell's output. Each of
the 6 edges carries one of 5 operations (`OPERATIONS`): `none` (zeros), `skip_connect`
(identity), `nor_conv_1x1`, `nor_conv_3x3` (ReLU -> conv -> norm) and `avg_pool_3x3` (stride 1,
padding 1, padding excluded from the average): 5^6 = 15,625 cells.

The *macro skeleton* (`CellNetwork`): a 3x3 conv stem to C channels and a norm; three stages of
N cells at C, 2C and 4C channels, joined by two residual reduction blocks (3x3 conv stride 2,
3x3 conv; shortcut 2x2 average pool then 1x1 conv); norm, ReLU, global average pooling and a
linear classifier. The benchmark's setting is C = 16, N = 5.

A genotype's text is the benchmark's own, e.g. the ResNet-like cell
``|nor_conv_3x3~0|+|none~0|nor_conv_3x3~1|+|skip_connect~0|none~1|skip_connect~2|``: one
``|op~j|...|`` group per node 1..3, joined by ``+``, each entry naming the operation on the
edge from node j (`parse_genotype`, `format_genotype`). The NAS-Bench-201 table indexes
its architectures by this text.

Backbone `nas201` (`FACTORIES`): a found cell trained as a classification trial, with the
variant's `norm_layer(C)` in every norm (stem, operations, reduction blocks, the last norm).
Ours: weights keep PyTorch's default initialisation, as the official search and benchmark
networks; `last_norm_layer` (placement last-in-block) replaces the second norm of the two
residual reduction blocks, the only residual blocks.

Normalization-activation layers (EvoNorm-B0/S0, FRN with TLU: `is_norm_activation`) replace a
norm and the ReLU after it. Here the ReLU comes first in each operation (ReLU -> conv -> norm),
so the ReLU that pairs with a norm is the one at the start of the *next* operation, and the rule
is the one every normbench ResNet follows: no ReLU whose input is exactly one
normalization-activation layer's output; a ReLU after a sum of several terms stays (the
post-activation ResNet's ReLU after the residual sum, kept everywhere). So a `nor_conv` op
starts without its ReLU when its source node holds one such output unchanged: the stem's norm
(node 0 of the first cell), a node whose only non-`none` edge is a `nor_conv` (`none` adds
zeros) or a `skip_connect` of such a node, a cell whose output node is one (node 0 of the next
cell); and the reduction block's second conv (its ReLU follows the first conv's norm directly);
and the head has no ReLU after its last norm. The ResNet-like cell then reads
ReLU(x) -> conv -> norm-act -> conv -> norm-act, plus x: the post-activation ResNet block with
its norms replaced. An `avg_pool_3x3` in between is not a norm's output (the ReLU stays). With
any other norm nothing changes. The DARTS supernet (normbench.tasks.nas.supernet) keeps the
ReLUs of its cells' operations (each of its nodes is a weighted sum over all operations); its
skeleton is this module's `CellNetwork`, so with `skeleton_norm: variant` and such a layer the
reduction blocks' second convs' and the head's ReLUs go as here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from normbench.models._common import (
    NO_RELU_AFTER_NORM_ACTIVATION,
    BackboneOptionError,
    NormLayer,
    activation_after,
    check_bool,
    check_positive_int,
    zero_norm_weight,
)
from normbench.variants_api import is_norm_activation

OPERATIONS = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
NODES = 4  # node 0 (input) .. node 3 (output)
# the NAS-Bench-201 paper's ResNet-like cell, in the table's full six-edge form
RESNET_CELL = "|nor_conv_3x3~0|+|none~0|nor_conv_3x3~1|+|skip_connect~0|none~1|skip_connect~2|"

Genotype = tuple[tuple[tuple[str, int], ...], ...]  # per node 1..: (operation, source node)


def parse_genotype(text: str, operations: Sequence[str] = OPERATIONS) -> Genotype:
    """A genotype from the benchmark's text (module doc). Raises ValueError naming the rule
    and the bad part: an unknown operation, a source node that is not an earlier node, a
    malformed entry."""
    if not isinstance(text, str) or not text:
        raise ValueError(f"a genotype is a text like {RESNET_CELL!r}, but got {text!r}")
    nodes = []
    for i, group in enumerate(text.split("+"), start=1):
        entries = [e for e in group.split("|") if e]
        if not group.startswith("|") or not group.endswith("|") or not entries:
            raise ValueError(f"genotype {text!r}: node {i} {group!r} must read |op~j|...|")
        node = []
        for entry in entries:
            op, sep, src = entry.partition("~")
            if not sep or not src.isdigit():
                raise ValueError(f"genotype {text!r}: entry {entry!r} must read op~j")
            if op not in operations:
                raise ValueError(
                    f"genotype {text!r}: unknown operation {op!r}; operations: "
                    f"{', '.join(operations)}"
                )
            if int(src) >= i:
                raise ValueError(
                    f"genotype {text!r}: node {i} can only take an earlier node, not {src}"
                )
            node.append((op, int(src)))
        nodes.append(tuple(node))
    return tuple(nodes)


def format_genotype(genotype: Genotype) -> str:
    """The benchmark's text of a genotype (inverse of `parse_genotype`)."""
    return "+".join("|" + "|".join(f"{op}~{j}" for op, j in node) + "|" for node in genotype)


class ReLUConvNorm(nn.Sequential):
    """ReLU -> conv (no bias) -> norm: the benchmark's `nor_conv_kxk` and the reduction
    blocks' convs. `relu=False` puts an `nn.Identity` in the ReLU's place, for an input that is
    a normalization-activation layer's output (module doc)."""

    def __init__(
        self, c_in: int, c_out: int, kernel: int, stride: int, norm: nn.Module, *, relu: bool = True
    ) -> None:
        conv = nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=False)
        super().__init__(nn.ReLU(inplace=False) if relu else nn.Identity(), conv, norm)


class Zero(nn.Module):
    """`none`: zeros of the input's shape (the edge is absent)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x)


def operation(
    name: str, channels: int, norm_layer: NormLayer, *, activated_input: bool = False
) -> nn.Module:
    """One candidate operation on a cell edge (stride 1, `channels` in and out);
    `activated_input`: its input is a normalization-activation layer's output, so a `nor_conv`
    starts without its ReLU (module doc)."""
    if name == "none":
        return Zero()
    if name == "skip_connect":
        return nn.Identity()
    if name == "avg_pool_3x3":
        return nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)
    if name in ("nor_conv_1x1", "nor_conv_3x3"):
        k = 1 if name == "nor_conv_1x1" else 3
        return ReLUConvNorm(
            channels, channels, k, 1, norm_layer(channels), relu=not activated_input
        )
    raise ValueError(f"unknown operation {name!r}; operations: {', '.join(OPERATIONS)}")


class ReductionBlock(nn.Module):
    """The residual block between stages: (N, C_in, H, W) -> (N, C_out, H/2, W/2);
    `activated_input`: x is a normalization-activation layer's output (no ReLU on it)."""

    def __init__(
        self,
        c_in: int,
        c_out: int,
        norm_layer: NormLayer,
        last_norm_layer: NormLayer | None,
        *,
        activated_input: bool = False,
    ) -> None:
        super().__init__()
        norm_a = norm_layer(c_out)
        self.conv_a = ReLUConvNorm(c_in, c_out, 3, 2, norm_a, relu=not activated_input)
        self.conv_b = ReLUConvNorm(
            c_out, c_out, 3, 1, (last_norm_layer or norm_layer)(c_out),
            relu=not is_norm_activation(norm_a),
        )  # fmt: skip
        self.shortcut = nn.Sequential(
            nn.AvgPool2d(2, stride=2), nn.Conv2d(c_in, c_out, 1, bias=False)
        )
        self.out_channels = c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shortcut(x) + self.conv_b(self.conv_a(x))


class Cell(nn.Module):
    """A found cell: node i = sum over its entries (op, j) of op(node j); returns the last.

    `activated_input`: node 0 is a normalization-activation layer's output; `output_activated`
    says whether the last node is one (module doc)."""

    def __init__(
        self,
        genotype: Genotype,
        channels: int,
        norm_layer: NormLayer,
        *,
        activated_input: bool = False,
    ) -> None:
        super().__init__()
        self.genotype = genotype
        ops: list[nn.Module] = []
        activated = [activated_input]  # per node: holds one norm-activation output unchanged
        for node in genotype:
            terms = []
            for op, j in node:
                ops.append(operation(op, channels, norm_layer, activated_input=activated[j]))
                if op != "none":
                    terms.append((op, activated[j], ops[-1]))
            activated.append(len(terms) == 1 and _passes_norm_activation(*terms[0]))
        self.ops = nn.ModuleList(ops)
        self.output_activated = activated[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nodes, k = [x], 0
        for node in self.genotype:
            total = torch.zeros_like(x)
            for _, j in node:
                total = total + self.ops[k](nodes[j])
                k += 1
            nodes.append(total)
        return nodes[-1]


def _passes_norm_activation(op: str, activated_source: bool, module: nn.Module) -> bool:
    """Whether operation `op` (`module`) outputs one normalization-activation layer's output
    unchanged: a `nor_conv` ending in one, or a `skip_connect` of a node holding one."""
    if op == "skip_connect":
        return activated_source
    return isinstance(module, ReLUConvNorm) and is_norm_activation(module[-1])


class CellNetwork(nn.Module):
    """The macro skeleton (module doc) around cells made by `make_cell(channels,
    activated_input)`: `activated_input` is whether the cell's input is a
    normalization-activation layer's output; a cell's `output_activated` (default False) says
    the same of its output."""

    def __init__(
        self,
        make_cell: Callable[[int, bool], nn.Module],
        num_classes: int,
        norm_layer: NormLayer,
        *,
        channels: int = 16,
        cells_per_stage: int = 5,
        in_channels: int = 3,
        last_norm_layer: NormLayer | None = None,
    ) -> None:
        super().__init__()
        c = channels
        stem_norm = norm_layer(c)
        self.stem = nn.Sequential(nn.Conv2d(in_channels, c, 3, padding=1, bias=False), stem_norm)
        activated = is_norm_activation(stem_norm)
        layers: list[nn.Module] = []
        for stage in range(3):
            if stage > 0:
                block = ReductionBlock(
                    c, 2 * c, norm_layer, last_norm_layer, activated_input=activated
                )
                layers.append(block)
                c, activated = 2 * c, False  # its output is a sum
            for _ in range(cells_per_stage):
                layers.append(make_cell(c, activated))
                activated = bool(getattr(layers[-1], "output_activated", False))
        self.cells = nn.ModuleList(layers)
        last_norm = norm_layer(c)
        self.lastact = nn.Sequential(last_norm, activation_after(last_norm))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c, num_classes)

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """The last norm, ReLU, pooling and classifier: (N, 4C, h, w) -> (N, classes)."""
        return self.classifier(torch.flatten(self.pool(self.lastact(x)), 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for layer in self.cells:
            x = layer(x)
        return self.head(x)


def nas201(
    num_classes: int,
    norm_layer: NormLayer,
    *,
    in_channels: int = 3,
    last_norm_layer: NormLayer | None = None,
    genotype: str = RESNET_CELL,
    channels: int = 16,
    cells_per_stage: int = 5,
    zero_init_residual: bool = False,
) -> nn.Module:
    """A NAS-Bench-201 network with the cell `genotype` (the benchmark's text, e.g. one a
    DARTS search found), `channels` C of the first stage and `cells_per_stage` N;
    `zero_init_residual` zeroes the reduction blocks' last norm weight (Goyal et al. 2017)."""
    try:
        cell = parse_genotype(genotype)
    except ValueError as exc:
        raise BackboneOptionError(f"backbone 'nas201': option 'genotype': {exc}") from exc
    model = CellNetwork(
        lambda c, activated: Cell(cell, c, norm_layer, activated_input=activated),
        num_classes,
        norm_layer,
        channels=check_positive_int("nas201", "channels", channels),
        cells_per_stage=check_positive_int("nas201", "cells_per_stage", cells_per_stage),
        in_channels=in_channels,
        last_norm_layer=last_norm_layer,
    )
    if check_bool("nas201", "zero_init_residual", zero_init_residual):
        for m in model.modules():
            if isinstance(m, ReductionBlock):
                zero_norm_weight(m.conv_b[2])
    return model


FACTORIES = {"nas201": NO_RELU_AFTER_NORM_ACTIVATION(nas201)}  # revision 2: models/_common.py
