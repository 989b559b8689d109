"""PGD (normbench.tasks.adversarial.attack): the perturbation stays in the ε-ball and in [0, 1],
it raises the loss, and it equals torchattacks' PGD bit for bit from the same seeded random
start, in eval mode (torchattacks' default) and in training mode (the SaBN recipe's attack,
batch statistics moving); `PixelModel` undoes the data pipeline's normalisation."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
import torchattacks
from torch import nn

from normbench.data.tensor_loader import Normalizer
from normbench.models import create_backbone
from normbench.tasks.adversarial.attack import PGDAttack, PixelModel, pgd

MEAN, STD = (0.3, 0.5, 0.6), (0.2, 0.25, 0.3)


def model_and_batch(seed: int = 0) -> tuple[PixelModel, torch.Tensor, torch.Tensor]:
    """A small pre-activation ResNet-18 with BN on 8x8 pixels, and a batch with saturated
    pixels (0 and 1), where the [0, 1] clip binds."""
    torch.manual_seed(seed)
    net = create_backbone("preact_resnet18", 10, nn.BatchNorm2d, width=4)
    model = PixelModel(net, MEAN, STD)
    model(torch.rand(16, 3, 8, 8))  # move BN's running statistics off their initial values
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(6, 3, 8, 8, generator=g)
    x[:, 0, :2] = 0.0
    x[:, 1, :2] = 1.0
    return model.eval(), x, torch.randint(0, 10, (6,), generator=g)


@pytest.mark.parametrize("random_start", [True, False])
def test_the_perturbation_stays_in_the_ball_and_raises_the_loss(random_start: bool) -> None:
    model, x, y = model_and_batch()
    attack = PGDAttack(eps=8 / 255, step_size=2 / 255, steps=7, random_start=random_start)
    adv = pgd(model, x, y, attack, generator=torch.Generator().manual_seed(1))
    assert adv.shape == x.shape and not adv.requires_grad
    assert (adv - x).abs().max() <= attack.eps + 1e-6
    assert adv.min() >= 0 and adv.max() <= 1
    assert (adv - x).abs().max() > attack.eps / 2  # it moved
    with torch.no_grad():
        clean, attacked = F.cross_entropy(model(x), y), F.cross_entropy(model(adv), y)
        noise = torch.clamp(x + torch.empty_like(x).uniform_(-attack.eps, attack.eps), 0, 1)
        random = F.cross_entropy(model(noise), y)
    assert attacked > clean and attacked > random


@pytest.mark.parametrize("random_start", [True, False])
def test_equals_torchattacks_in_eval_mode(random_start: bool) -> None:
    model, x, y = model_and_batch()
    attack = PGDAttack(eps=8 / 255, step_size=2 / 255, steps=5, random_start=random_start)
    library = torchattacks.PGD(
        model, eps=8 / 255, alpha=2 / 255, steps=5, random_start=random_start
    )
    torch.manual_seed(3)
    theirs = library(x, y)
    torch.manual_seed(3)
    ours = pgd(model, x, y, attack)  # the global generator, as torchattacks draws
    assert torch.equal(ours, theirs)
    # a private generator seeded alike gives the same start
    mine = pgd(model, x, y, attack, generator=torch.Generator().manual_seed(3))
    assert torch.equal(mine, theirs)
    assert not model.training


def test_equals_torchattacks_in_training_mode() -> None:
    """The recipe's attack runs with batch statistics: the same examples and the same running
    statistics afterwards as torchattacks told to keep the model (and its BNs) training."""
    model, x, y = model_and_batch()
    ours_model, their_model = copy.deepcopy(model).train(), copy.deepcopy(model).train()
    library = torchattacks.PGD(their_model, eps=8 / 255, alpha=2 / 255, steps=7)
    library.set_model_training_mode(model_training=True, batchnorm_training=True)
    torch.manual_seed(5)
    theirs = library(x, y)
    ours = pgd(ours_model, x, y, PGDAttack(steps=7), generator=torch.Generator().manual_seed(5))
    assert torch.equal(ours, theirs)
    for (name, a), b in zip(ours_model.named_buffers(), their_model.buffers(), strict=True):
        assert torch.equal(a, b), name
    bn = next(m for m in ours_model.modules() if isinstance(m, nn.BatchNorm2d))
    assert int(bn.num_batches_tracked) == 1 + 7  # the warm-up batch, then one per step


def test_pgd_leaves_parameter_gradients_alone_and_runs_under_no_grad() -> None:
    model, x, y = model_and_batch()
    adv = pgd(model, x, y, PGDAttack(steps=2), generator=torch.Generator().manual_seed(0))
    assert all(p.grad is None for p in model.parameters())
    with torch.no_grad():  # e.g. the loop's evaluation
        again = pgd(model, x, y, PGDAttack(steps=2), generator=torch.Generator().manual_seed(0))
    assert torch.equal(again, adv)


def test_pixel_model_undoes_the_normalisation() -> None:
    model, x, _ = model_and_batch()
    uint8 = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    normalised = Normalizer(MEAN, STD, torch.device("cpu"))(uint8)
    torch.testing.assert_close(model.to_pixels(normalised), uint8.float() / 255)
    with torch.no_grad():
        torch.testing.assert_close(model(uint8.float() / 255), model.model(normalised))
    assert "mean" not in model.state_dict()  # a data-set fact, not a weight


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"eps": 8}, r"\[0, 1\]"),
        ({"step_size": -0.1}, r"\[0, 1\]"),
        ({"eps": float("nan")}, r"\[0, 1\]"),
        ({"steps": -1}, "steps"),
        ({"steps": 2.0}, "steps"),
        ({"eps": True}, "number"),
    ],
)
def test_bad_attack_settings_are_refused(options: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        PGDAttack(**options)
    assert PGDAttack(steps=20).name == "pgd20"
