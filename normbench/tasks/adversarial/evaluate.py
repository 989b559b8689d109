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
tables). Each branch draws its random starts from its own generator seeded with `seed`, so
every model and branch is attacked from the same draws. The batches are read once; the counts
stay on the device until the end of the split.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

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
    all_sum: Callable[[torch.Tensor], torch.Tensor] | None = None,
    device: torch.device | None = None,
) -> dict[str, float | None]:
    """SA and RA (percent) per branch of `model` (a `PixelModel`) on `batches` of pixels
    (N, C, H, W) in [0, 1] and labels (N,), iterated once; None for every metric when there
    are no images. `all_sum` adds the counts over data-parallel ranks (each evaluating its
    share of the batches; `device`: where a rank without batches keeps its zeros). The model's
    training flag is restored on return."""
    attacks = tuple(attacks)
    if len({a.name for a in attacks}) != len(attacks):
        raise ValueError(f"robust_accuracy: two attacks with the same step count: {attacks}")
    branches = BRANCHES if has_branches(model) else dict(list(BRANCHES.items())[:1])
    keys = [f"{b}_{m}" for b in branches for m in ("sa", *(f"{a.name}_ra" for a in attacks))]
    was_training = model.training
    model.eval()
    try:
        counts = _count_hits(model, batches, attacks, branches, seed)
    finally:
        model.train(was_training)
    if counts is None:
        counts = torch.zeros(len(keys) + 1, dtype=torch.int64, device=device)
    totals = (all_sum or (lambda t: t))(counts).tolist()  # one host read
    seen = totals[-1]
    results = {
        k: 100.0 * hits / seen if seen else None for k, hits in zip(keys, totals, strict=False)
    }
    for prefix in BRANCHES:  # a model without branches: one result under every prefix
        if prefix not in branches:
            results.update({prefix + k[k.index("_") :]: v for k, v in list(results.items())})
    return {k: results[k] for k in metric_names(attacks)}


def _count_hits(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    attacks: tuple[PGDAttack, ...],
    branches: dict[str, int],
    seed: int,
) -> torch.Tensor | None:
    """int64 on the device: correct predictions per (branch, SA or attack), then the images
    seen; None without batches. Each branch attacks from its own generator seeded with `seed`."""
    counts: torch.Tensor | None = None
    generators: dict[int, torch.Generator] = {}
    for x, y in batches:
        hits = []
        for index in branches.values():
            if index not in generators:
                generators[index] = torch.Generator(device=x.device).manual_seed(seed)
            with branch_index(model, index):
                with torch.no_grad():
                    hits.append(model(x).argmax(dim=1).eq(y).sum())
                for attack in attacks:
                    x_adv = pgd(model, x, y, attack, generator=generators[index])
                    with torch.no_grad():
                        hits.append(model(x_adv).argmax(dim=1).eq(y).sum())
        batch = torch.stack([*hits, torch.tensor(y.shape[0], device=y.device)])
        counts = batch if counts is None else counts + batch
    return counts
