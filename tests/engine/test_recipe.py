"""The optimiser groups and the per-batch lr schedule, against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from normbench.engine.recipe import (
    RecipeError,
    build_optimizer,
    build_scheduler,
    current_lr,
    param_groups,
)
from normbench.spec import Recipe, SpecError, input_problems

CIFAR100 = Recipe(
    lr=0.1, momentum=0.9, weight_decay=5e-4, warmup_epochs=1, milestones=(60, 120, 160), gamma=0.2
)


def lrs_per_batch(recipe: Recipe, epochs: int, batches: int) -> list[float]:
    """The lr each training batch sees: read before the step, then step the scheduler."""
    model = nn.Linear(2, 2)
    opt = build_optimizer(model, recipe)
    sched = build_scheduler(opt, recipe, epochs=epochs, batches_per_epoch=batches)
    seen = []
    for _ in range(epochs * batches):
        seen.append(current_lr(opt))
        opt.step()
        sched.step()
    return seen


def test_cifar100_schedule_matches_hand_computed() -> None:
    b = 3  # batches per epoch
    got = lrs_per_batch(CIFAR100, 200, b)
    for t, lr in enumerate(got):
        epoch = t // b  # 0-based
        if epoch < 1:  # warm-up: lr * (t + 1) / W, W = 3 batches
            want = 0.1 * (t + 1) / b
        else:  # 1-based epochs 1-60: 0.1, 61-120: 0.02, 121-160: 0.004, 161-200: 0.0008
            want = 0.1 * 0.2 ** sum(epoch >= m for m in (60, 120, 160))
        assert lr == pytest.approx(want, rel=1e-9, abs=1e-15), (t, epoch)
    # the intended boundaries: last batch of 1-based epoch 60 still at 0.1, first of 61 at 0.02
    assert got[60 * b - 1] == pytest.approx(0.1)
    assert got[60 * b] == pytest.approx(0.02)


def test_no_warmup_multistep_cifar10() -> None:
    r = Recipe(lr=0.1, milestones=(100, 150), gamma=0.1)
    got = lrs_per_batch(r, 200, 2)
    want = [0.1 * 0.1 ** sum(t // 2 >= m for m in (100, 150)) for t in range(400)]
    assert got == pytest.approx(want, rel=1e-9)


def test_cosine_after_warmup() -> None:
    r = Recipe(lr=0.2, warmup_epochs=1, schedule="cosine")
    epochs, b = 5, 4
    got = lrs_per_batch(r, epochs, b)
    total, w = epochs * b, b
    for t, lr in enumerate(got):
        if t < w:
            want = 0.2 * (t + 1) / w
        else:
            want = 0.1 * (1 + math.cos(math.pi * (t - w) / (total - w)))
        assert lr == pytest.approx(want, rel=1e-9, abs=1e-12)


def test_fractional_warmup_and_constant() -> None:
    r = Recipe(lr=0.4, warmup_epochs=0.5, schedule="constant")
    got = lrs_per_batch(r, 2, 8)  # W = 4 batches
    want = [0.1, 0.2, 0.3, 0.4] + [0.4] * 12
    assert got == pytest.approx(want, rel=1e-9)


def test_bad_recipes_raise_user_errors() -> None:
    with pytest.raises(RecipeError, match="milestone"):
        build_scheduler(
            torch.optim.SGD(nn.Linear(1, 1).parameters(), lr=0.1),
            Recipe(warmup_epochs=5, milestones=(3,)),
            epochs=10,
            batches_per_epoch=2,
        )
    with pytest.raises(SpecError, match="recipe.lr must be a number > 0"):
        Recipe(lr=0.0)  # a recipe validates itself on construction


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)  # weight 4-D, bias 1-D
        self.bn = nn.BatchNorm2d(4)  # 1-D weight and bias
        self.bnet_kernel = nn.Parameter(torch.zeros(4, 1, 3, 3))  # BNET-like (C,1,k,k)
        self.scalar = nn.Parameter(torch.zeros(()))  # 0-D
        self.fc = nn.Linear(4, 2)
        self.frozen = nn.Parameter(torch.zeros(3), requires_grad=False)


def _names(net: nn.Module, group: dict) -> set[str]:
    names = {id(p): n for n, p in net.named_parameters()}
    return {names[id(p)] for p in group["params"]}


def test_alias_frees_norm_parameters_and_other_biases() -> None:
    net = _Net()
    on, _ = param_groups(net, Recipe(weight_decay=1e-4, no_decay_norm_and_bias=True))
    assert [g["weight_decay"] for g in on] == [1e-4, 0.0]
    # by module, not by shape: a bare 4-D parameter outside a norm layer and a 0-D one decay
    assert _names(net, on[0]) == {"conv.weight", "bnet_kernel", "scalar", "fc.weight"}
    assert _names(net, on[1]) == {"bn.weight", "bn.bias", "conv.bias", "fc.bias"}
    off, _ = param_groups(net, Recipe(weight_decay=1e-4))
    assert len(off) == 1 and len(off[0]["params"]) == 8  # every trainable parameter


def test_norm_and_bias_decay_are_separate_switches() -> None:
    from normbench.variants_api import create_norm

    net = nn.Sequential(
        nn.Conv2d(3, 4, 3),
        create_norm("ubn", 4),
        create_norm("bnet", 4),
        create_norm("sabn", 4, num_branches=2),
        nn.Conv2d(4, 4, 1, bias=True),
    )
    groups, _ = param_groups(net, Recipe(weight_decay=1e-4, norm_weight_decay=0.0))
    by_wd = {g["weight_decay"]: _names(net, g) for g in groups}
    assert by_wd[0.0] == {
        "1.center_weight", "1.scale_weight", "1.scale_bias", "1.weight", "1.bias",  # UBN
        "2.weight", "2.bias",  # BNET kernel (4, 1, 3, 3) and bias
        "3.weight", "3.bias", "3.embed.weight",  # SaBN and its branch table
    }  # fmt: skip
    assert by_wd[1e-4] == {"0.weight", "0.bias", "4.weight", "4.bias"}
    groups, _ = param_groups(net, Recipe(weight_decay=1e-4, bias_weight_decay=0.0))
    by_wd = {g["weight_decay"]: _names(net, g) for g in groups}
    assert by_wd[0.0] == {"0.bias", "4.bias"}


def test_gamma_decays_toward_one_as_hand_computed() -> None:
    """SGD with momentum, two steps: v <- mu v + g + wd (w - I); w <- w - lr v, where I is 1 for
    BN's gamma and the centred delta for BNET's kernel; beta still decays toward 0."""
    from normbench.variants_api import create_norm

    torch.manual_seed(0)
    net = nn.Sequential(create_norm("bn", 3), create_norm("bnet", 3))
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p))
    lr, mu, wd = 0.1, 0.9, 0.05
    recipe = Recipe(lr=lr, momentum=mu, weight_decay=0.0, norm_weight_decay=wd,
                    norm_decay_toward="identity")  # fmt: skip
    opt = build_optimizer(net, recipe)
    ident = {n: torch.zeros_like(p) for n, p in net.named_parameters()}
    ident["0.weight"] += 1.0
    ident["1.weight"][:, 0, 1, 1] = 1.0
    w = {n: p.detach().clone() for n, p in net.named_parameters()}
    v = {n: torch.zeros_like(p) for n, p in w.items()}
    for step in range(2):
        grads = {n: torch.full_like(p, 0.3 * (step + 1)) for n, p in w.items()}
        for n, p in net.named_parameters():
            p.grad = grads[n].clone()
        opt.step()
        for n in w:
            v[n] = mu * v[n] + grads[n] + wd * (w[n] - ident[n]) if step else (
                grads[n] + wd * (w[n] - ident[n]))  # fmt: skip
            w[n] = w[n] - lr * v[n]
    for n, p in net.named_parameters():
        torch.testing.assert_close(p.detach(), w[n], rtol=0, atol=1e-6, msg=n)
    assert all(g["weight_decay"] in (0.0, wd) for g in opt.param_groups)  # restored after step


def test_decay_alias_contradiction_is_refused() -> None:
    recipe = Recipe(no_decay_norm_and_bias=True, norm_weight_decay=1e-4)
    with pytest.raises(RecipeError, match="no_decay_norm_and_bias=true means"):
        param_groups(nn.Linear(2, 2), recipe)


def test_identity_decay_refuses_a_weight_without_identity() -> None:
    net = nn.Sequential(nn.LayerNorm([2, 3]))  # weight (2, 3), no decay_targets() hook
    match = r"norm_decay_toward='identity' needs .* 0 \(LayerNorm\): its .weight \(2, 3\)"
    with pytest.raises(RecipeError, match=match):
        param_groups(net, Recipe(norm_decay_toward="identity"))


def test_sabn_names_its_gamma_columns_for_identity_decay() -> None:
    """SaBN's hook: gamma_sa and the table's gamma columns [0, C) go to 1, beta_k to 0."""
    from normbench.variants_api import create_norm

    net = nn.Sequential(create_norm("sabn", 3, num_branches=2))
    groups, targets = param_groups(net, Recipe(norm_decay_toward="identity"))
    (identity,) = [g for g in groups if g["decay_toward"] == "identity"]
    assert _names(net, identity) == {"0.weight", "0.embed.weight"}
    table = targets[net[0].embed.weight]
    assert table.shape == (2, 6) and table[:, :3].eq(1).all() and table[:, 3:].eq(0).all()


def test_nesterov_and_momentum_reach_sgd() -> None:
    opt = build_optimizer(nn.Linear(2, 2), Recipe(nesterov=True, momentum=0.8))
    assert opt.param_groups[0]["nesterov"] is True
    assert opt.param_groups[0]["momentum"] == 0.8


def test_inverse_time_is_adains_decay_after_warmup() -> None:
    """AdaIN's `adjust_learning_rate`: lr / (1 + decay * t) at the t-th batch after warm-up."""
    r = Recipe(optimizer="adam", lr=1e-4, schedule="inverse_time", lr_decay=5e-5)
    got = lrs_per_batch(r, 3, 1000)
    assert got == pytest.approx([1e-4 / (1 + 5e-5 * t) for t in range(3000)], rel=1e-9)
    warm = lrs_per_batch(
        Recipe(lr=0.2, warmup_epochs=1, schedule="inverse_time", lr_decay=0.5), 2, 2
    )
    assert warm == pytest.approx([0.1, 0.2, 0.2, 0.2 / 1.5], rel=1e-9)


def test_adam_takes_the_groups_and_one_adam_step_is_hand_computed() -> None:
    """torch's Adam (betas 0.9, 0.999, eps 1e-8): the first step moves each weight by about
    lr · sign(g), and weight decay is L2 added to the gradient."""
    net = nn.Linear(3, 1, bias=False)
    with torch.no_grad():
        net.weight.copy_(torch.tensor([[1.0, -2.0, 0.5]]))
    opt = build_optimizer(net, Recipe(optimizer="adam", lr=0.01, weight_decay=0.1))
    assert isinstance(opt, torch.optim.Adam) and len(opt.param_groups) == 1
    x = torch.tensor([[1.0, 1.0, 0.0]])
    net(x).sum().backward()
    g = x[0] + 0.1 * torch.tensor([1.0, -2.0, 0.5])  # gradient plus L2 decay
    want = torch.tensor([1.0, -2.0, 0.5]) - 0.01 * g / (g.abs() + 1e-8)
    opt.step()
    torch.testing.assert_close(net.weight[0].detach(), want, rtol=0, atol=1e-7)
    adam_nesterov = Recipe(optimizer="adam", nesterov=True)
    adam_identity = Recipe(optimizer="adam", norm_decay_toward="identity")
    for bad, why in ((adam_nesterov, "nesterov"), (adam_identity, "identity")):
        with pytest.raises(RecipeError, match=why):
            build_optimizer(net, bad)
    problems = input_problems({"schedule": "cosine", "lr_decay": 0.1})  # what a user writes
    assert problems == ["lr_decay 0.1 only applies to schedule inverse_time, not 'cosine'"]
