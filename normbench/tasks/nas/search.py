"""The two ways a found cell is scored as SaBN's paper does (the task `darts` uses both): its
NAS-Bench-201 table accuracy (`table_accuracy`), or training it as a classification trial
(`retrain_spec`: the backbone `nas201` with the cell's text as its `genotype` option, run by
normbench's one training loop).
"""

from __future__ import annotations

from typing import Any

from normbench.spec import Recipe, TrialSpec
from normbench.tasks.nas.table import load_table


def table_accuracy(
    genotype: str,
    dataset: str,
    *,
    nas201_table: str,
    trust_pickle: bool = False,
    split: str | None = None,
) -> float:
    """The found cell's NAS-Bench-201 top-1 (%) on `dataset` (the table's name: `cifar10`,
    `cifar100`, `ImageNet16-120`), on its test set unless `split` says otherwise. Reads the
    table only with `trust_pickle` (normbench.tasks.nas.table)."""
    return load_table(nas201_table, trust_pickle=trust_pickle).accuracy(genotype, dataset, split)


# NAS-Bench-201's training of every cell (its `configs/nas-benchmark/CIFAR.config`): SGD with
# Nesterov momentum 0.9, lr 0.1 by a cosine to 0 over 200 epochs, weight decay 5e-4, batch 256.
NAS201_TRAINING = Recipe(
    lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4, schedule="cosine", warmup_epochs=0
)


def retrain_spec(
    genotype: str,
    dataset: str,
    *,
    variant: str = "bn",
    channels: int = 16,
    cells_per_stage: int = 5,
    epochs: int = 200,
    batch_size: int = 256,
    seed: int = 0,
    recipe: Recipe = NAS201_TRAINING,
    **changes: Any,
) -> TrialSpec:
    """A classification trial that trains the found cell in the NAS-Bench-201 network
    (backbone `nas201`, C = `channels`, N = `cells_per_stage`) with NAS-Bench-201's recipe;
    its test top-1 is the cell's score. `changes` sets any other `TrialSpec` field."""
    return TrialSpec(
        variant=variant,
        backbone="nas201",
        backbone_options={
            "genotype": genotype,
            "channels": channels,
            "cells_per_stage": cells_per_stage,
        },
        dataset=dataset,
        epochs=epochs,
        batch_size=batch_size,
        seed=seed,
        recipe=recipe,
        **changes,
    )
