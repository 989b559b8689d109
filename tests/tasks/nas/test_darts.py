"""DARTS' bilevel search as the task `darts` runs it (normbench.tasks.nas.task: the
architecture step, then the weight loss the loop minimises with its SGD): on a tiny space where
a hand-made supernet can only fit its target through one operation, the search picks that
operation, with BN and with SaBN as the operations' norm."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from normbench.models.nas201 import OPERATIONS
from normbench.tasks.nas.supernet import SearchCell, edges, genotype_of
from normbench.tasks.nas.task import Darts
from normbench.variants_api import norm_layer

SIDE = 8
# the official DARTS-V1 baseline's norm: BN without affine, batch statistics always
PLAIN_BN = ("bn", {"affine": False, "track_running_stats": False})


class HandMade(nn.Module):
    """One search cell on the raw input, then ReLU, global average pooling and a linear layer."""

    def __init__(self, norm: object, nodes: int = 2, channels: int = 4) -> None:
        super().__init__()
        self.nodes = nodes
        self.cell = SearchCell(channels, norm, OPERATIONS, nodes)  # type: ignore[arg-type]
        self.fc = nn.Linear(channels, 2)
        self.alphas = nn.Parameter(1e-3 * torch.randn(len(edges(nodes)), len(OPERATIONS)))
        self.fixed = False

    @contextlib.contextmanager
    def fixed_architecture(self) -> Iterator[None]:
        self.fixed = True
        yield
        self.fixed = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        alphas = self.alphas.detach() if self.fixed else self.alphas
        h = self.cell(x, F.softmax(alphas, dim=-1))
        return self.fc(h.relu().mean(dim=(2, 3)))

    def arch_parameters(self) -> list[nn.Parameter]:
        return [self.alphas]

    def weight_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p is not self.alphas]

    def genotype(self) -> str:
        return genotype_of(self.alphas, OPERATIONS, self.nodes)


def textures(n: int, g: torch.Generator, channels: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Class 0: a +-1 checkerboard; class 1: a constant +-1 image (random sign, noise 0.2).

    After ReLU and average pooling a class-1 image gives 0 or 1, a class-0 image 1/2, whatever
    pointwise map comes first: a linear classifier cannot put the middle apart from both ends.
    `none` gives 0, `skip_connect` and `avg_pool_3x3` keep those values (pooling shrinks the
    checkerboard to +-1/9 inside), `nor_conv_1x1` maps each pixel alone (ReLU, 1x1 conv, norm).
    Only `nor_conv_3x3` sees the neighbours: with kernel taps summing to a > 0 on one parity and
    -a on the other, a checkerboard gives +-a pixels (ReLU-mean a/2) and a constant image
    0 (mean 0): the one operation that fits the target."""
    y = torch.randint(0, 2, (n,), generator=g)
    sign = torch.randint(0, 2, (n, 1, 1, 1), generator=g) * 2.0 - 1.0
    ij = torch.arange(SIDE)
    board = ((ij[:, None] + ij[None, :]) % 2) * 2.0 - 1.0  # (S, S)
    pattern = torch.where(y[:, None, None, None] == 0, board, torch.ones(SIDE, SIDE))
    x = (sign * pattern).expand(n, channels, SIDE, SIDE)
    return x + 0.2 * torch.randn(n, channels, SIDE, SIDE, generator=g), y


class Textures:
    """The architecture stream: fresh texture batches (the task's `next()`)."""

    def __init__(self, g: torch.Generator) -> None:
        self.g, self.steps = g, 0

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        self.steps += 1
        return textures(32, self.g)


def search(variant: str, options: dict, seed: int, steps: int = 200) -> tuple[Darts, list[float]]:
    """`steps` training steps of the task on the hand-made supernet, the weights stepped as the
    loop steps them with DARTS' recipe (SGD lr 0.025, Nesterov momentum 0.9, weight decay 5e-4,
    gradient norm clipped at 5); the weight batches' top-1 per step."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    model = HandMade(norm_layer(variant, **options))
    task = Darts(arch_lr=6e-3)
    task.attach(model, Textures(g))
    sgd = torch.optim.SGD(
        model.weight_parameters(), lr=0.025, momentum=0.9, nesterov=True, weight_decay=5e-4
    )
    top1 = []
    for _ in range(steps):
        step = task.training_step(model, textures(32, g))
        sgd.zero_grad(set_to_none=True)
        step.loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        sgd.step()
        top1.append(float(step.sums["top1"]) / 32)
    return task, top1


@pytest.mark.parametrize("variant, options", [PLAIN_BN, ("sabn", {})], ids=["bn", "sabn"])
def test_search_picks_the_one_operation_that_fits(variant: str, options: dict) -> None:
    """Most of three searches pick nor_conv_3x3 (DARTS can stall: with plain BN, seed 0 settles
    on avg_pool_3x3 and fits three quarters of the images); each that does fits the target."""
    found = 0
    for seed in range(3):
        task, top1 = search(variant, options, seed=seed)
        assert task.arch.steps == 200  # one architecture batch per step
        if task.model.genotype() != "|nor_conv_3x3~0|":
            continue
        found += 1
        probs = F.softmax(task.model.alphas.detach(), dim=-1)[0]
        assert probs[OPERATIONS.index("nor_conv_3x3")] > 0.3  # from 0.2 at the start
        assert sum(top1[-50:]) / 50 > 90  # the supernet fits the target (chance: 50)
    assert found >= 2
