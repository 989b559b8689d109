"""The condensation probe: exact against a Gram-matrix computation, and free of side effects."""

from __future__ import annotations

import torch
from torch import nn

from normbench.engine import probes


def gram_cosine(f: torch.Tensor) -> float:
    """Mean cos over pairs i != j from the full Gram matrix of unit rows (zero rows stay 0)."""
    f = f.reshape(f.shape[0], -1).double()
    norms = f.norm(dim=1, keepdim=True)
    u = torch.where(norms > 0, f / norms.clamp_min(1e-300), torch.zeros_like(f))
    g = u @ u.T
    b = f.shape[0]
    return float((g.sum() - g.diagonal().sum()) / (b * (b - 1)))


def test_fast_cosine_equals_gram_form() -> None:
    torch.manual_seed(0)
    x = torch.randn(7, 3, 4, 4) + 0.5
    assert abs(probes.mean_pairwise_cosine(x) - gram_cosine(x)) < 1e-6
    x[2] = 0  # a zero sample counts as cos 0 with every other
    assert abs(probes.mean_pairwise_cosine(x) - gram_cosine(x)) < 1e-6
    same = torch.ones(5, 2, 3, 3)
    assert abs(probes.mean_pairwise_cosine(same) - 1.0) < 1e-6


class _Noisy(nn.BatchNorm2d):
    """A badly behaved plugin-style norm: in eval it draws random numbers and bumps its buffer."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        self.running_mean.add_(torch.rand(self.num_features))
        return out


def _model() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Conv2d(4, 6, 3, padding=1),
        _Noisy(6),
        nn.ReLU(),
        nn.Conv2d(6, 6, 3, padding=1),
        nn.GroupNorm(2, 6),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, 3),
    )


def test_condensation_matches_independent_inputs_and_changes_nothing() -> None:
    torch.manual_seed(0)
    model = _model()
    model.train()
    model(torch.randn(8, 3, 6, 6))  # move running stats away from their init
    probe = torch.randn(5, 3, 6, 6)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()

    got = probes.condensation(model, probe)

    assert torch.equal(torch.get_rng_state(), rng)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(m.training for m in model.modules())
    # independent: the norm inputs computed by hand with the model in eval mode
    with torch.no_grad():
        model.eval()
        h1 = model[0](probe)
        h2 = model[3](model[2](model[1](h1)))
        h4 = model[6](model[5](nn.functional.batch_norm(
            h2, before["4.running_mean"], before["4.running_var"], model[4].weight, model[4].bias
        )))  # fmt: skip
    want = {"1": gram_cosine(h1), "4": gram_cosine(h2), "7": gram_cosine(h4)}
    assert got.keys() == want.keys()
    for k in want:
        assert abs(got[k] - want[k]) < 1e-5, k


def test_diagnostics_collected_as_floats() -> None:
    class WithDiag(nn.Module):
        def diagnostics(self) -> dict:
            return {"steps": torch.tensor(3), "sim": 0.25}

    model = nn.Sequential(nn.Identity(), WithDiag())
    assert probes.diagnostics(model) == {"1": {"steps": 3.0, "sim": 0.25}}
