"""AuxBN and SaAuxBN (docs/variants.md#auxbn) against batch norm written from its formulas
(`bn_reference.RefBN`, one per branch), float64: each branch's statistics are those of a BN that
saw only that branch's samples, whether the branch comes as an int (two forward passes, the
official code) or per sample (one batch of mixed branches); SaAuxBN's shared affine takes
gradient from both branches; a branch absent from a batch keeps its state."""

from __future__ import annotations

import copy

import pytest
import torch
from bn_reference import RefBN, c4, inputs
from torch import nn

from normbench.variants import AuxBatchNorm2d, SaAuxBatchNorm2d, branch_index

DT = torch.float64
C, N = 4, 5
SHAPE = (N, C, 3, 3)
Layer = AuxBatchNorm2d | SaAuxBatchNorm2d


def make(cls: type, k: int = 2, momentum: float | None = 0.1, seed: int = 0) -> Layer:
    """A layer with K branches and random affine parameters."""
    layer = cls(C, num_branches=k, momentum=momentum, dtype=DT)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=DT) * 0.5 + 1.0)
    return layer


def affine(layer: Layer, k: int, xhat: torch.Tensor) -> torch.Tensor:
    """Branch k's affine written out: γ_k x̂ + β_k, or γ_k (γ_sa x̂ + β_sa) + β_k."""
    if isinstance(layer, AuxBatchNorm2d):
        return c4(layer.weight[k]) * xhat + c4(layer.bias[k])
    gamma, beta = layer.embed.weight[k, :C], layer.embed.weight[k, C:]
    return c4(gamma) * (c4(layer.weight) * xhat + c4(layer.bias)) + c4(beta)


def assert_branch(layer: Layer, k: int, ref: RefBN) -> None:
    torch.testing.assert_close(layer.running_mean[k], ref.running_mean)
    torch.testing.assert_close(layer.running_var[k], ref.running_var)
    assert int(layer.num_batches_tracked[k]) == ref.count


@pytest.mark.parametrize("cls", [AuxBatchNorm2d, SaAuxBatchNorm2d])
@pytest.mark.parametrize("momentum", [0.1, None])
def test_an_int_branch_is_a_bn_of_its_own(cls: type, momentum: float | None) -> None:
    layer = make(cls, momentum=momentum)
    refs = [RefBN(C, momentum=momentum), RefBN(C, momentum=momentum)]
    for step, x in enumerate(inputs(SHAPE, steps=5)):
        k = [0, 1, 1, 0, 1][step]
        torch.testing.assert_close(layer(x, k), affine(layer, k, refs[k](x, True)))
        for b in (0, 1):  # the other branch's statistics did not move
            assert_branch(layer, b, refs[b])
    x = inputs(SHAPE, steps=1, seed=1)[0]
    layer.eval()
    for k in (0, 1):
        torch.testing.assert_close(layer(x, k), affine(layer, k, refs[k](x, False)))


@pytest.mark.parametrize("cls", [AuxBatchNorm2d, SaAuxBatchNorm2d])
@pytest.mark.parametrize("momentum", [0.1, None])
def test_a_mixed_batch_equals_one_pass_per_branch(cls: type, momentum: float | None) -> None:
    """One call on interleaved clean and adversarial samples (AdvProp's batch) = two calls,
    one per branch on its samples alone: outputs, buffers, input and parameter gradients."""
    mixed, split = make(cls, momentum=momentum), make(cls, momentum=momentum)
    index = torch.tensor([1, 0, 0, 1, 1, 0, 1])  # 3 clean, 4 adversarial
    for seed in range(3):
        x = inputs((7, C, 3, 3), steps=1, seed=seed)[0]
        probe = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed), dtype=DT)
        xm, xs = x.clone().requires_grad_(), x.clone().requires_grad_()
        ym = mixed(xm, index)
        ys = torch.empty_like(ym)
        for k in (0, 1):
            ys[index == k] = split(xs[index == k], k)
        torch.testing.assert_close(ym, ys)
        (ym * probe).sum().backward()
        (ys * probe).sum().backward()
        torch.testing.assert_close(xm.grad, xs.grad)
        for (name, pm), ps in zip(mixed.named_parameters(), split.parameters(), strict=True):
            torch.testing.assert_close(pm.grad, ps.grad, msg=name)
        for (name, bm), bs in zip(mixed.named_buffers(), split.buffers(), strict=True):
            torch.testing.assert_close(bm, bs, msg=name)
    mixed.eval()
    split.eval()
    x = inputs((7, C, 3, 3), steps=1, seed=5)[0]
    expected = torch.stack([split(x[n : n + 1], int(k))[0] for n, k in enumerate(index)])
    torch.testing.assert_close(mixed(x, index), expected)


@pytest.mark.parametrize("cls", [AuxBatchNorm2d, SaAuxBatchNorm2d])
def test_a_branch_absent_from_the_batch_keeps_its_state(cls: type) -> None:
    layer = make(cls, k=3, momentum=None)
    before = copy.deepcopy(layer.state_dict())
    layer(inputs(SHAPE, steps=1)[0], torch.tensor([0, 2, 2, 0, 0]))
    assert layer.num_batches_tracked.tolist() == [1, 0, 1]
    for name in ("running_mean", "running_var"):
        torch.testing.assert_close(getattr(layer, name)[1], before[name][1])
        assert not torch.equal(getattr(layer, name)[0], before[name][0])


def test_the_sandwich_affine_is_shared_by_both_branches() -> None:
    """Gradient reaches γ_sa, β_sa from each branch alone, and a mixed batch gives it the sum;
    each branch's own row of the table gets gradient only from its samples."""
    layer = make(SaAuxBatchNorm2d)
    x = inputs((6, C, 3, 3), steps=1)[0]
    probe = torch.randn(x.shape, generator=torch.Generator().manual_seed(3), dtype=DT)
    index = torch.tensor([0, 1, 0, 1, 1, 0])
    grads = {}
    for k in (0, 1):
        layer.zero_grad()
        (layer(x[index == k], k) * probe[index == k]).sum().backward()
        grads[k] = {n: p.grad.clone() for n, p in layer.named_parameters()}
        assert grads[k]["weight"].abs().min() > 0 and grads[k]["bias"].abs().min() > 0
        assert grads[k]["embed.weight"][k].abs().min() > 0
        assert not grads[k]["embed.weight"][1 - k].any()
    layer.zero_grad()
    (layer(x, index) * probe).sum().backward()
    for name, p in layer.named_parameters():
        torch.testing.assert_close(p.grad, grads[0][name] + grads[1][name], msg=name)


def test_auxbn_with_one_branch_is_torch_batch_norm() -> None:
    layer = AuxBatchNorm2d(C, num_branches=1, dtype=DT)
    bn = nn.BatchNorm2d(C, dtype=DT)
    for x in inputs(SHAPE, steps=3):
        torch.testing.assert_close(layer(x), bn(x))
    torch.testing.assert_close(layer.running_var[0], bn.running_var)
    assert int(layer.num_batches_tracked[0]) == int(bn.num_batches_tracked) == 3


def test_the_context_selects_the_branch_and_the_argument_wins() -> None:
    layer = make(AuxBatchNorm2d).eval()
    model = nn.Sequential(nn.Identity(), layer)
    x = inputs(SHAPE, steps=1)[0]
    with branch_index(model, 1):
        torch.testing.assert_close(model(x), layer(x, torch.ones(N, dtype=torch.long)))
        torch.testing.assert_close(layer(x, 0), layer(x, torch.zeros(N, dtype=torch.long)))
    torch.testing.assert_close(model(x), layer(x, 0))


def test_initial_values_follow_the_official_code() -> None:
    torch.manual_seed(0)
    aux = AuxBatchNorm2d(256)
    assert aux.weight.shape == (2, 256) and (aux.weight == 1).all() and not aux.bias.any()
    sa = SaAuxBatchNorm2d(256, num_branches=3)
    for gamma in (sa.weight.detach(), sa.embed.weight[:, :256].detach()):
        assert abs(gamma.mean().item() - 1) < 0.005 and abs(gamma.std().item() - 0.02) < 0.004
    assert not sa.bias.any() and not sa.embed.weight[:, 256:].any()
    assert sa.running_mean.shape == (3, 256) and sa.num_batches_tracked.shape == (3,)
    assert "num_branches=3" in repr(sa)


@pytest.mark.parametrize(
    ("index", "match"),
    [(2, r"\[0, 2\)"), (torch.tensor([0, 1, 2, 0, 1]), r"\[0, 2\)"), (torch.zeros(3), "int64")],
)
def test_bad_index_raises_before_any_state_changes(index, match: str) -> None:
    layer = make(SaAuxBatchNorm2d)
    with pytest.raises(ValueError, match=match):
        layer(inputs(SHAPE, steps=1)[0], index)
    assert not layer.num_batches_tracked.any()


def test_a_branch_with_one_value_per_statistic_raises() -> None:
    layer = make(AuxBatchNorm2d)
    x = inputs((3, C, 1, 1), steps=1)[0]
    with pytest.raises(ValueError, match="more than 1 value"):
        layer(x, torch.tensor([0, 0, 1]))  # branch 1: one sample of 1x1
    assert not layer.num_batches_tracked.any()


@pytest.mark.parametrize("cls", [AuxBatchNorm2d, SaAuxBatchNorm2d])
def test_mixed_batch_gradcheck_and_compile(cls: type) -> None:
    """The per-sample path (the kit runs the int one): float64 gradcheck through the batch
    statistics, and torch.compile(fullgraph=True), so no host sync, equal to eager."""
    layer = make(cls, k=3)
    index = torch.tensor([2, 0, 2, 1, 0, 1])
    x = inputs((6, C, 2, 2), steps=1)[0].requires_grad_()
    names = [n for n, _ in layer.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_() for p in layer.parameters())
    buffers = {n: b.clone() for n, b in layer.named_buffers()}

    def fn(x: torch.Tensor, *ps: torch.Tensor) -> torch.Tensor:
        state = {**dict(zip(names, ps, strict=True)), **{n: b.clone() for n, b in buffers.items()}}
        return torch.func.functional_call(layer, state, (x, index))

    assert torch.autograd.gradcheck(fn, (x, *params), eps=1e-6, atol=1e-5, rtol=1e-3)
    torch._dynamo.reset()
    eager, module = layer.float(), copy.deepcopy(layer.float())
    compiled = torch.compile(module, backend="aot_eager", fullgraph=True)
    xf = x.detach().float()
    for training in (True, False):
        eager.train(training)
        module.train(training)
        torch.testing.assert_close(compiled(xf, index), eager(xf, index))
    for be, bc in zip(eager.buffers(), module.buffers(), strict=True):
        torch.testing.assert_close(bc, be)
