"""The adversarial training step and the SA/RA evaluation (normbench.tasks.adversarial): which
branch each pass takes (counted in the layers' per-branch counters), the loss against the passes
run by hand, AdvProp's joint batch equal to two passes for per-branch statistics, SA against a
plain accuracy, and a model trained on scikit-learn's digits that becomes robust."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from normbench.data.digits import digits
from normbench.models import create_backbone
from normbench.tasks.adversarial.attack import PGDAttack, PixelModel, pgd
from normbench.tasks.adversarial.evaluate import HEADLINE, metric_names, robust_accuracy
from normbench.tasks.adversarial.training import adversarial_step, check_branches
from normbench.variants import AuxBatchNorm2d, branch_index
from normbench.variants_api import norm_layer


def build(variant: str, width: int = 4, seed: int = 0, **options: object) -> PixelModel:
    torch.manual_seed(seed)
    net = create_backbone(
        "preact_resnet18", 10, norm_layer(variant, **options), in_channels=1, width=width
    )
    return PixelModel(net, (0.3,), (0.2,))


def batch(n: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)


def test_the_attack_and_the_adversarial_pass_take_branch_1() -> None:
    model = build("auxbn")
    x, y = batch()
    adversarial_step(model, x, y, PGDAttack(steps=3))
    layers = [m for m in model.modules() if isinstance(m, AuxBatchNorm2d)]
    assert len(layers) == 16  # two per block of the pre-activation ResNet-18
    for layer in layers:  # clean: one pass; adversarial: 3 attack steps + the loss's pass
        assert layer.num_batches_tracked.tolist() == [1, 3 + 1]
    bn_model = build("bn")
    adversarial_step(bn_model, x, y, PGDAttack(steps=3))
    bn = next(m for m in bn_model.modules() if isinstance(m, nn.BatchNorm2d))
    assert int(bn.num_batches_tracked) == 3 + 2  # a BN model sees every pass


@pytest.mark.parametrize("variant", ["bn", "saauxbn"])
def test_the_loss_averages_the_clean_and_adversarial_passes(variant: str) -> None:
    model = build(variant)
    by_hand = copy.deepcopy(model)
    x, y = batch()
    out = adversarial_step(
        model, x, y, PGDAttack(steps=2), generator=torch.Generator().manual_seed(1)
    )
    with branch_index(by_hand, 1):  # the order matters to a BN's running statistics
        x_adv = pgd(by_hand, x, y, PGDAttack(steps=2), generator=torch.Generator().manual_seed(1))
    with branch_index(by_hand, 0):
        clean = by_hand(x)
    with branch_index(by_hand, 1):
        adv = by_hand(x_adv)
    torch.testing.assert_close(out.clean_logits, clean.detach())
    torch.testing.assert_close(out.adv_logits, adv.detach())
    torch.testing.assert_close(out.loss, (F.cross_entropy(clean, y) + F.cross_entropy(adv, y)) / 2)
    for (name, a), b in zip(model.named_buffers(), by_hand.buffers(), strict=True):
        torch.testing.assert_close(a, b, msg=name)


@pytest.mark.parametrize("variant", ["auxbn", "saauxbn", "bn"])
def test_a_joint_batch_equals_two_passes_when_statistics_are_per_branch(variant: str) -> None:
    two, joint = build(variant), build(variant)
    x, y = batch()
    outs = []
    for model, flag in ((two, False), (joint, True)):
        g = torch.Generator().manual_seed(2)
        out = adversarial_step(model, x, y, PGDAttack(steps=2), generator=g, joint_batch=flag)
        out.loss.backward()
        outs.append(out)
    if variant == "bn":  # one BN over both halves: other statistics, another loss
        assert not torch.allclose(outs[0].loss, outs[1].loss)
        return
    torch.testing.assert_close(outs[1].loss, outs[0].loss)
    for (name, a), b in zip(joint.named_parameters(), two.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-5, rtol=1e-4, msg=name)
    for (name, a), b in zip(joint.named_buffers(), two.buffers(), strict=True):
        torch.testing.assert_close(a, b, msg=name)


def test_layers_with_one_branch_are_refused() -> None:
    with pytest.raises(ValueError, match="sabn.*num_branches=1.*num_branches: 2|num_branches=1"):
        check_branches(build("sabn"))
    check_branches(build("sabn", num_branches=2))
    check_branches(build("bn"))


def test_sa_is_the_plain_accuracy_of_each_branch() -> None:
    model = build("auxbn")
    model.train()(batch(32, seed=3)[0])  # statistics for branch 0 ...
    with branch_index(model, 1):
        model(batch(32, seed=4)[0])  # ... and other ones for branch 1
    data = [batch(10, seed=5), batch(7, seed=6)]
    identity = PGDAttack(steps=0, random_start=False)  # RA under a null attack is SA
    got = robust_accuracy(model, data, (identity, PGDAttack(steps=3)))
    assert model.training  # restored
    assert list(got) == metric_names((identity, PGDAttack(steps=3)))
    model.eval()
    for prefix, k in (("clean", 0), ("adv", 1)):
        with branch_index(model, k), torch.no_grad():
            hits = sum(int((model(x).argmax(1) == y).sum()) for x, y in data)
        assert got[f"{prefix}_sa"] == pytest.approx(100 * hits / 17)
        assert got[f"{prefix}_pgd0_ra"] == got[f"{prefix}_sa"]
    with torch.no_grad(), branch_index(model, 0):
        clean = model(data[0][0])
    with torch.no_grad(), branch_index(model, 1):
        assert not torch.allclose(model(data[0][0]), clean)  # two sets of statistics
    assert robust_accuracy(model, data, (PGDAttack(steps=3),)) == robust_accuracy(
        model, data, (PGDAttack(steps=3),)
    )  # the random starts are seeded


def test_a_model_without_branches_reports_one_result_under_both_prefixes() -> None:
    got = robust_accuracy(build("bn"), [batch(12)])
    assert list(got) == metric_names() and HEADLINE in got
    for key in ("sa", "pgd10_ra", "pgd20_ra"):
        assert got[f"clean_{key}"] == got[f"adv_{key}"]
    assert robust_accuracy(build("bn"), []) == dict.fromkeys(metric_names())  # no images


@pytest.mark.slow
def test_adversarial_training_on_digits_makes_the_model_robust() -> None:
    """SaAuxBN, trained one epoch with PGD-3 (ε = 0.1: the digits' 17 grey levels make
    8/255 a fraction of one level), against the same network trained one epoch on clean
    images: the robust accuracy (PGD-10) of the adversarial branch must beat the clean
    model's by 10 points and chance by far. Measured on this machine (one thread): SaAuxBN
    adv branch SA 92 / RA 60, clean-trained BN SA 76 / RA 21; 15 s in all under load."""
    data = digits(image_size=8, val_fraction=0.0)
    x, y = data.train.images.float() / 255, data.train.labels
    test = [(data.test.images.float() / 255, data.test.labels)]
    attack = PGDAttack(eps=0.1, step_size=0.025, steps=3)
    evaluation = (PGDAttack(eps=0.1, step_size=0.025, steps=10),)
    results = {}
    for variant, adversarial in (("saauxbn", True), ("bn", False)):
        model = build(variant, width=8)
        model.mean.fill_(data.mean[0])
        model.std.fill_(data.std[0])
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
        g = torch.Generator().manual_seed(0)
        order = torch.randperm(len(y), generator=g)
        for i in range(0, len(y) - 63, 64):
            xb, yb = x[order[i : i + 64]], y[order[i : i + 64]]
            if adversarial:
                loss = adversarial_step(model, xb, yb, attack, generator=g).loss
            else:
                loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
        results[variant] = robust_accuracy(model, test, evaluation)
    robust = results["saauxbn"]
    assert robust["adv_sa"] > 70 and robust["adv_pgd10_ra"] <= robust["adv_sa"]
    assert robust["adv_pgd10_ra"] > 35
    assert robust["adv_pgd10_ra"] > results["bn"]["adv_pgd10_ra"] + 10
