"""One step of adversarial training with clean and adversarial branches, as SaBN's adversarial
experiments train (official code `Adv/functions.py`, `train`; paper Sec 4.3):

1. PGD examples from the model in its training mode, through the adversarial branch (index 1):
   the attack's forward passes use batch statistics, and move that branch's running ones;
2. the clean batch through the clean branch (index 0), the adversarial batch through the
   adversarial branch, as two forward passes (two batches of statistics);
3. loss = (CE(clean) + CE(adversarial)) / 2.

A model without branch-indexed layers (BN) takes the same step: its norms see the clean and the
adversarial batch in two passes, as the official BN baseline did. `joint_batch=True` instead
forms one batch of both halves with a per-sample index (AdvProp's batch): for AuxBN and SaAuxBN
this is the same function (their statistics are per branch), for BN the statistics mix both.

The branch is set with `normbench.variants.branch_index` (docs/variants.md#branch-index); every
branch-indexed layer must have at least 2 branches (`check_branches`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from normbench.tasks.adversarial.attack import PGDAttack, pgd
from normbench.variants import BranchIndexed, branch_index

CLEAN, ADVERSARIAL = 0, 1
BRANCHES = {"clean": CLEAN, "adv": ADVERSARIAL}  # metric prefix -> branch index


def has_branches(model: nn.Module) -> bool:
    """Whether any layer of `model` is branch-indexed."""
    return any(isinstance(m, BranchIndexed) for m in model.modules())


def branch_problem(model: nn.Module, what: str = "the model") -> str | None:
    """Why `model` cannot be trained with clean and adversarial branches: its first
    branch-indexed layer with fewer than 2 branches (the task sends clean samples to branch 0
    and adversarial ones to branch 1), named (`what` for the model itself); None if none."""
    for name, m in model.named_modules():
        if isinstance(m, BranchIndexed) and m.num_branches < 2:
            return (
                f"adversarial training needs 2 branches (0 clean, 1 adversarial) in every "
                f"branch-indexed layer, but {name or what} ({type(m).__name__}) has "
                f"num_branches={m.num_branches}; set the variant option num_branches: 2"
            )
    return None


def check_branches(model: nn.Module) -> None:
    """Raise ValueError with `branch_problem`'s reason, if any."""
    problem = branch_problem(model)
    if problem is not None:
        raise ValueError(problem)


@dataclass(frozen=True)
class StepOutput:
    """The step's loss (with its graph) and both branches' logits (N, classes), detached."""

    loss: torch.Tensor
    clean_logits: torch.Tensor
    adv_logits: torch.Tensor


def adversarial_step(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    attack: PGDAttack,
    *,
    generator: torch.Generator | None = None,
    joint_batch: bool = False,
) -> StepOutput:
    """The loss of one training step (see the module docstring) on pixels x (N, C, H, W) in
    [0, 1] with labels y (N,); `model` takes pixels (`PixelModel`) and is in training mode.
    The caller runs backward and the optimiser step."""
    with branch_index(model, ADVERSARIAL):
        x_adv = pgd(model, x, y, attack, generator=generator)
    if joint_batch:
        n = x.shape[0]
        index = torch.arange(2 * n, device=x.device).ge(n).long()  # (2N,): 0 clean, 1 adv
        with branch_index(model, index):
            logits = model(torch.cat([x, x_adv]))
        clean, adv = logits[:n], logits[n:]
    else:
        with branch_index(model, CLEAN):
            clean = model(x)
        with branch_index(model, ADVERSARIAL):
            adv = model(x_adv)
    loss = (F.cross_entropy(clean, y) + F.cross_entropy(adv, y)) / 2
    return StepOutput(loss, clean.detach(), adv.detach())
