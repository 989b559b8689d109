"""PGD, the L∞ projected gradient attack of Madry et al. ("Towards Deep Learning Models Resistant
to Adversarial Attacks", ICLR 2018, arXiv 1706.06083), in pixel space [0, 1].

    x⁰ = clip_[0,1](x + U(−ε, ε))                          (random start; x⁰ = x without it)
    xᵗ⁺¹ = clip_[0,1](x + clip_[−ε,ε](xᵗ + α·sign(∇ₓ CE(f(xᵗ), y)) − x))

The same arithmetic, in the same order, as torchattacks' `PGD` (tests/tasks/adversarial compare
the two with the same seeded start), with three differences that a training harness needs:

* the model's mode is the caller's: SaBN's adversarial training attacks the model in training
  mode (batch statistics, and the running ones move), its evaluation in eval mode, where
  torchattacks switches to eval itself and recognises batch norms by class name;
* the random start takes a `torch.Generator`, so an epoch's draws are reproducible and a resumed
  trial draws what an uninterrupted one would have;
* nothing reads a value on the host (torchattacks checks the input range with `.max()`), so a
  step runs on any device without a sync, and the model may be `torch.compile`d.

`PixelModel` is torchattacks' model convention: input in [0, 1], the data set's normalisation
inside the model, so ε is in pixel units (8/255 is 8 grey levels).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class PGDAttack:
    """ε (`eps`) and step α (`step_size`) in [0, 1] pixel units, `steps` gradient steps, a
    uniform random start in the ε-ball or not. The SaBN recipe: ε 8/255, α 2/255, 7 steps in
    training, 10 and 20 in evaluation, all with random start."""

    eps: float = 8 / 255
    step_size: float = 2 / 255
    steps: int = 10
    random_start: bool = True

    def __post_init__(self) -> None:
        for name in ("eps", "step_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"PGD: `{name}` must be a number, but got {value!r}")
            if not (math.isfinite(value) and 0 <= value <= 1):
                raise ValueError(f"PGD: `{name}` must be in [0, 1] (pixel units), got {value!r}")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 0:
            raise ValueError(f"PGD: `steps` must be an int >= 0, but got {self.steps!r}")

    @property
    def name(self) -> str:
        """ "pgd10" for 10 steps: the metric key of a robust accuracy under this attack."""
        return f"pgd{self.steps}"


def pgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    attack: PGDAttack,
    *,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Adversarial examples for `model` (a `PixelModel`: input in [0, 1]) at images x
    (N, C, H, W) in [0, 1] with labels y (N,): a detached tensor like x, within ε of x in every
    pixel and inside [0, 1]. The model runs in the mode it is in (see the module docstring);
    gradients are enabled for the attack even inside `torch.no_grad()`; parameter gradients
    are neither computed nor touched. `generator` draws the random start
    (None: torch's global generator, as torchattacks)."""
    images = x.detach()
    adv = images.clone()
    if attack.random_start:
        noise = torch.empty_like(adv).uniform_(-attack.eps, attack.eps, generator=generator)
        adv = torch.clamp(adv + noise, min=0, max=1)
    for _ in range(attack.steps):
        with torch.enable_grad():  # also under no_grad (a loop's evaluation, a re-run step)
            adv.requires_grad_(True)
            loss = F.cross_entropy(model(adv), y)
            (grad,) = torch.autograd.grad(loss, adv)
        adv = adv.detach() + attack.step_size * grad.sign()
        delta = torch.clamp(adv - images, min=-attack.eps, max=attack.eps)
        adv = torch.clamp(images + delta, min=0, max=1)
    return adv.detach()


class PixelModel(nn.Module):
    """`model((x − mean) / std)` for x in [0, 1] (N, C, H, W): a classifier that takes pixels,
    as attack libraries expect. mean, std: per channel, [0, 1] units (torchvision `Normalize`)."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, model: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        if len(mean) != len(std) or not all(s > 0 for s in std):
            raise ValueError(f"PixelModel: one positive std per mean, got {mean=} {std=}")
        self.model = model
        # not persistent: a fact of the data set, not of the trained weights
        self.register_buffer("mean", torch.tensor(mean).reshape(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).reshape(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x - self.mean) / self.std)

    def to_pixels(self, x: torch.Tensor) -> torch.Tensor:
        """The inverse of the data pipeline's normalisation, clipped to [0, 1]: the pixels of
        a normalised batch (to float rounding)."""
        return torch.clamp(x * self.std + self.mean, min=0, max=1)
