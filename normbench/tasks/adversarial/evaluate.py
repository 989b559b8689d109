"""Standard accuracy (SA) and robust accuracy (RA) per branch, as SaBN's adversarial experiments
report them (official code `Adv/functions.py`, `validate` and `validate_adv`; README table).

In eval mode (running statistics), through each branch in turn (`training.BRANCHES`: "clean"
index 0, "adv" index 1): SA is the top-1 accuracy (percent) on the clean images; RA under a PGD
attack (`attack.PGDAttack`, random start) is the top-1 accuracy on the examples PGD computes
against that same branch. Keys: `{branch}_sa`, `{branch}_{attack.name}_ra`, e.g. `adv_pgd20_ra`,
the headline (`HEADLINE`: robustness is what adversarial training is for, and the paper's last
row). Every metric is a percentage, higher is better.

A model without branch-indexed layers (BN) computes the same numbers through either branch; it
is evaluated once and both prefixes carry them (the official README lists BN's 84.84 in both
tables). The random starts come from a generator seeded with `seed` at the start of each branch,
so every model and branch is attacked from the same draws.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from normbench.tasks.adversarial.attack import PGDAttack, pgd
from normbench.tasks.adversarial.training import BRANCHES, has_branches
from normbench.variants import branch_index

EVAL_ATTACKS = (PGDAttack(steps=10), PGDAttack(steps=20))  # PGD-10 and PGD-20, 8/255, 2/255
HEADLINE = "adv_pgd20_ra"


def metric_names(attacks: Iterable[PGDAttack] = EVAL_ATTACKS) -> list[str]:
    """The keys `robust_accuracy` returns, branch by branch."""
    attacks = tuple(attacks)
    return [f"{b}_{m}" for b in BRANCHES for m in ("sa", *(f"{a.name}_ra" for a in attacks))]


def robust_accuracy(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    attacks: Iterable[PGDAttack] = EVAL_ATTACKS,
    *,
    seed: int = 0,
) -> dict[str, float]:
    """SA and RA (percent) per branch of `model` (a `PixelModel`) on `batches` of pixels
    (N, C, H, W) in [0, 1] and labels (N,), which is iterated once per branch. The model's
    training flag is restored on return. Raises ValueError on an empty `batches`."""
    attacks = tuple(attacks)
    if len({a.name for a in attacks}) != len(attacks):
        raise ValueError(f"robust_accuracy: two attacks with the same step count: {attacks}")
    was_training = model.training
    model.eval()
    results: dict[str, float] = {}
    try:
        for prefix, index in BRANCHES.items():
            if results and not has_branches(model):
                results.update({f"{prefix}_{k.split('_', 1)[1]}": v for k, v in results.items()})
                break
            with branch_index(model, index):
                for key, value in _branch_accuracy(model, batches, attacks, seed).items():
                    results[f"{prefix}_{key}"] = value
    finally:
        model.train(was_training)
    return results


def _branch_accuracy(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    attacks: tuple[PGDAttack, ...],
    seed: int,
) -> dict[str, float]:
    """{"sa": ..., "pgd10_ra": ...} in percent for the branch the context has set."""
    correct: dict[str, torch.Tensor] = {}
    total, generator = 0, None
    for x, y in batches:
        if generator is None:
            generator = torch.Generator(device=x.device).manual_seed(seed)
        with torch.no_grad():
            hits = {"sa": model(x).argmax(dim=1).eq(y).sum()}
        for attack in attacks:
            x_adv = pgd(model, x, y, attack, generator=generator)
            with torch.no_grad():
                hits[f"{attack.name}_ra"] = model(x_adv).argmax(dim=1).eq(y).sum()
        for key, count in hits.items():  # summed on the device: one host read at the end
            correct[key] = correct[key] + count if key in correct else count
        total += int(y.shape[0])
    if total == 0:
        raise ValueError("robust_accuracy: no batches to evaluate")
    return {key: 100.0 * int(count) / total for key, count in correct.items()}
