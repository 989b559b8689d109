"""AdaIN's content and style losses (normbench/models/style_losses.py) against a hand
computation on small tensors: plain Python loops over samples, channels and pixels in float64,
the unbiased variance with eps inside the square root (the official `calc_mean_std`), and the
official batch losses (`nn.MSELoss` means), which are the batch means of the per-sample ones."""

from __future__ import annotations

import math

import pytest
import torch

from normbench.models.style_losses import content_loss, moment_loss, style_loss

EPS = 1e-5


def _stats(t: torch.Tensor, n: int, c: int) -> tuple[float, float]:
    values = [float(v) for v in t[n, c].flatten()]
    mean = sum(values) / len(values)
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return mean, math.sqrt(var + EPS)


def _hand_moment(out: torch.Tensor, sty: torch.Tensor, n: int) -> float:
    channels = out.shape[1]
    total_mean = total_std = 0.0
    for c in range(channels):
        mo, so = _stats(out, n, c)
        ms, ss = _stats(sty, n if sty.shape[0] > 1 else 0, c)
        total_mean += (mo - ms) ** 2
        total_std += (so - ss) ** 2
    return total_mean / channels + total_std / channels


def _tensor(seed: int, *shape: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64) * (1 + seed % 3) + seed % 2


def test_content_loss_is_the_per_sample_mean_squared_error() -> None:
    out, target = _tensor(1, 2, 3, 2, 3), _tensor(2, 2, 3, 2, 3)
    got = content_loss(out, target)
    for n in range(2):
        pairs = zip(out[n].flatten().tolist(), target[n].flatten().tolist(), strict=True)
        expected = sum((a - b) ** 2 for a, b in pairs) / 18
        assert got[n].item() == pytest.approx(expected, rel=1e-12)
    # the official batch loss, MSELoss over the whole batch
    expected_batch = torch.nn.functional.mse_loss(out.float(), target.float())
    torch.testing.assert_close(got.mean().float(), expected_batch)


@pytest.mark.parametrize("style_batch", [2, 1])
def test_style_loss_matches_mean_and_std_by_hand(style_batch: int) -> None:
    """Two layers (3 and 4 channels); the style's spatial size differs from the output's."""
    outs = [_tensor(3, 2, 3, 3, 4), _tensor(4, 2, 4, 2, 2)]
    styles = [_tensor(5, style_batch, 3, 5, 2), _tensor(6, style_batch, 4, 3, 3)]
    got = style_loss(outs, styles)
    for n in range(2):
        expected = sum(_hand_moment(o, s, n) for o, s in zip(outs, styles, strict=True))
        assert got[n].item() == pytest.approx(expected, rel=1e-12)
    one = moment_loss(outs[0], styles[0])
    assert one[1].item() == pytest.approx(_hand_moment(outs[0], styles[0], 1), rel=1e-12)


def test_style_loss_batch_mean_is_the_official_mse_of_moments() -> None:
    """Official: Σ_i MSELoss(μ_o, μ_s) + MSELoss(σ_o, σ_s) over (N, C, 1, 1) moments."""
    outs = [_tensor(7, 3, 2, 4, 4), _tensor(8, 3, 5, 2, 2)]
    styles = [_tensor(9, 3, 2, 4, 4), _tensor(10, 3, 5, 2, 2)]
    official = torch.zeros((), dtype=torch.float32)
    for o, s in zip(outs, styles, strict=True):
        o, s = o.float(), s.float()
        mo, ms = o.mean(dim=(2, 3)), s.mean(dim=(2, 3))
        so = (o.flatten(2).var(dim=2) + EPS).sqrt()
        ss = (s.flatten(2).var(dim=2) + EPS).sqrt()
        official = official + torch.nn.functional.mse_loss(mo, ms)
        official = official + torch.nn.functional.mse_loss(so, ss)
    torch.testing.assert_close(style_loss(outs, styles).mean().float(), official)


def test_losses_are_zero_for_identical_inputs_and_refuse_mismatches() -> None:
    x = _tensor(11, 2, 3, 4, 4)
    assert torch.equal(content_loss(x, x), torch.zeros(2, dtype=x.dtype))
    assert torch.equal(style_loss([x], [x]), torch.zeros(2, dtype=x.dtype))
    with pytest.raises(ValueError, match="equal shapes"):
        content_loss(x, x[:, :2])
    with pytest.raises(ValueError, match="equal channels"):
        moment_loss(x, x[:, :2])
    with pytest.raises(ValueError, match="number of layers"):
        style_loss([x], [])
