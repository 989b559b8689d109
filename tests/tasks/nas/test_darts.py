"""DARTS' bilevel search (normbench.tasks.nas.darts): on a tiny space where a hand-made supernet
can only fit its target through one operation, the search picks that operation, with BN and with
SaBN as the operations' norm; one step equals the two updates computed by hand; a search resumed
from its state_dict continues as the uninterrupted one."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from normbench.models.nas201 import OPERATIONS
from normbench.tasks.nas.darts import DartsRecipe, DartsSearch, Sums
from normbench.tasks.nas.supernet import SearchCell, edges, genotype_of
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.cell(x, F.softmax(self.alphas, dim=-1))
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


def search(variant: str, options: dict, seed: int, steps: int = 200) -> dict:
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    model = HandMade(norm_layer(variant, **options))
    darts = DartsSearch(model, DartsRecipe(epochs=1, stop_epoch=1, batch_size=32, arch_lr=6e-3))
    return darts.run_epoch([(textures(32, g), textures(32, g)) for _ in range(steps)])


@pytest.mark.parametrize("variant, options", [PLAIN_BN, ("sabn", {})], ids=["bn", "sabn"])
def test_search_picks_the_one_operation_that_fits(variant: str, options: dict) -> None:
    record = search(variant, options, seed=0)
    assert record["genotype"] == "|nor_conv_3x3~0|"
    probs = record["alphas"][0]
    assert probs[OPERATIONS.index("nor_conv_3x3")] > max(probs) - 1e-9
    assert probs[OPERATIONS.index("nor_conv_3x3")] > 0.3  # from 0.2 at the start
    assert record["arch_top1"] > 60  # the supernet learned the target (chance: 50)


def test_one_step_is_the_weight_update_then_the_alpha_update() -> None:
    torch.manual_seed(0)
    model = HandMade(norm_layer(*PLAIN_BN[:1], **PLAIN_BN[1]))
    ref = copy.deepcopy(model)
    recipe = DartsRecipe(grad_clip=0.05)  # small enough to clip
    darts = DartsSearch(model, recipe)
    g = torch.Generator().manual_seed(1)
    wb, ab = textures(16, g), textures(16, g)
    darts.step(wb, ab, (Sums(), Sums()))

    # by hand: CE on the weight batch; the norm of every gradient (alpha's too) clipped; SGD
    # with Nesterov on the weights (first step: buffer b = g + wd p, update g + wd p + m b)
    ref.zero_grad()
    F.cross_entropy(ref(wb[0]), wb[1]).backward()
    params = list(ref.parameters())
    norm = torch.sqrt(sum((p.grad**2).sum() for p in params))
    scale = min(1.0, recipe.grad_clip / (float(norm) + 1e-6))
    with torch.no_grad():
        for p in ref.weight_parameters():
            d = p.grad * scale + recipe.weight_decay * p
            p -= recipe.lr * (d + recipe.momentum * d)
    # then CE on the architecture batch at the new weights; Adam's first step on alpha (L2 in
    # the gradient; the bias corrections make it lr * g / (|g| + eps))
    ref.zero_grad()
    F.cross_entropy(ref(ab[0]), ab[1]).backward()
    with torch.no_grad():
        ga = ref.alphas.grad + recipe.arch_weight_decay * ref.alphas
        ref.alphas -= recipe.arch_lr * ga / (ga.abs() + 1e-8)
    for (name, p), q in zip(model.named_parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p, q, msg=name)


def test_resumed_search_continues_as_the_uninterrupted_one(tmp_path) -> None:
    def fresh(seed: int) -> DartsSearch:
        torch.manual_seed(seed)
        recipe = DartsRecipe(epochs=3, stop_epoch=3)
        return DartsSearch(HandMade(norm_layer("sabn"), nodes=3), recipe)

    def epoch_data(e: int) -> list:
        g = torch.Generator().manual_seed(100 + e)
        return [(textures(8, g), textures(8, g)) for _ in range(3)]

    straight = fresh(0)
    for e in range(2):
        last = straight.run_epoch(epoch_data(e))
    resumed = fresh(0)
    resumed.run_epoch(epoch_data(0))
    torch.save({"search": resumed.state_dict(), "rng": torch.get_rng_state()}, tmp_path / "c.pt")
    saved = torch.load(tmp_path / "c.pt", weights_only=True)  # tensors and plain values only
    again = fresh(7)  # other initial weights: everything must come from the checkpoint
    again.load_state_dict(saved["search"])
    torch.set_rng_state(saved["rng"])  # as the training loop restores it
    assert again.run_epoch(epoch_data(1)) == last
    assert again.epoch == 2 and again.schedule.last_epoch == 2
    with pytest.raises(ValueError, match="recipe"):
        DartsSearch(HandMade(norm_layer("sabn"), nodes=3), DartsRecipe(lr=0.1)).load_state_dict(
            saved["search"]
        )


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before")
def test_the_cosine_is_per_epoch_and_cut_at_stop_epoch() -> None:  # epochs without steps
    darts = DartsSearch(HandMade(nn.BatchNorm2d), DartsRecipe(epochs=50, stop_epoch=2))
    lrs = [darts.run_epoch([])["lr"] for _ in range(2)]
    assert darts.done
    # official: eta_min + (lr - eta_min) (1 + cos(pi e / 50)) / 2 at epoch e
    assert lrs == pytest.approx([0.025, 0.001 + 0.024 * (1 + math.cos(math.pi / 50)) / 2])


def test_recipe_states_every_broken_rule() -> None:
    with pytest.raises(ValueError) as info:
        DartsRecipe(epochs=10, stop_epoch=11, lr=0.0, arch_betas=(0.5, 1.0))
    message = str(info.value)
    assert "1 <= stop_epoch <= epochs must hold, but got (stop_epoch=11, epochs=10)" in message
    assert "lr must be > 0, but got 0.0" in message and "arch_betas" in message
