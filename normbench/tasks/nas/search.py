"""A DARTS search on a registered data set with a registered norm layer in the supernet, and
the two ways the found cell is scored as SaBN's paper does: its NAS-Bench-201 table accuracy
(`table_accuracy`), or training it as a classification trial (`retrain_spec`: the backbone
`nas201` with the cell's text as its `genotype` option, run by normbench's one training loop).

`run_search` yields one record per search epoch: the search losses and top-1 of both splits,
the validation split's loss and top-1 (the supernet in eval mode), the cell of largest alpha
and softmax(alpha). The found cell is the last epoch's, as the official scripts report it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from normbench.spec import Recipe, TrialSpec
from normbench.tasks.nas.darts import DartsRecipe, DartsSearch, evaluate
from normbench.tasks.nas.data import SearchData, search_data
from normbench.tasks.nas.supernet import Supernet
from normbench.tasks.nas.table import load_table
from normbench.variants_api import norm_layer


@dataclass(frozen=True)
class SearchSettings:
    """What one search computes: data, the supernet's norm layer, its size, the recipe, the
    seed (weights, alpha's initial value, the sampled branches, the batch order)."""

    dataset: str
    variant: str = "bn"
    variant_options: dict[str, Any] = field(default_factory=dict)
    dataset_options: dict[str, Any] = field(default_factory=dict)
    channels: int = 16
    cells_per_stage: int = 5
    recipe: DartsRecipe = field(default_factory=DartsRecipe)
    seed: int = 0
    limit_batches: int | None = None  # smoke mode: at most this many steps per epoch


def build_search(
    settings: SearchSettings, device: torch.device | str = "cpu"
) -> tuple[DartsSearch, SearchData]:
    """The seeded supernet's `DartsSearch`, and the search's data."""
    data = search_data(
        settings.dataset,
        batch_size=settings.recipe.batch_size,
        device=device,
        seed=settings.seed,
        limit_batches=settings.limit_batches,
        **settings.dataset_options,
    )
    torch.manual_seed(settings.seed)
    model = Supernet(
        data.num_classes,
        norm_layer(settings.variant, **settings.variant_options),
        channels=settings.channels,
        cells_per_stage=settings.cells_per_stage,
        in_channels=data.in_channels,
    ).to(device)
    return DartsSearch(model, settings.recipe), data


def run_search(
    settings: SearchSettings, device: torch.device | str = "cpu"
) -> Iterator[dict[str, Any]]:
    """Search until the recipe's `stop_epoch`; one record per epoch (module doc)."""
    search, data = build_search(settings, device)
    while not search.done:
        data.pairs.set_epoch(search.epoch)
        record = search.run_epoch(data.pairs)
        valid = evaluate(search.model, data.valid)  # type: ignore[arg-type]
        yield {**record, "valid_loss": valid["loss"], "valid_top1": valid["top1"]}


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
