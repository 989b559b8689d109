"""A DARTS search end to end on scikit-learn's digits (normbench.tasks.nas.search): the data's
two streams, the supernet with SaBN from the registry in its operations, records per epoch, and
the found cell trained as a classification trial through normbench's one training loop."""

from __future__ import annotations

import pytest
import torch

from normbench.data.base import DatasetOptionError
from normbench.engine.loop import run_trial
from normbench.models.nas201 import OPERATIONS, parse_genotype
from normbench.tasks.nas.darts import DartsRecipe
from normbench.tasks.nas.data import search_data
from normbench.tasks.nas.search import SearchSettings, retrain_spec, run_search
from normbench.tasks.nas.supernet import genotype_of

pytestmark = pytest.mark.slow


def test_search_streams_pair_the_two_splits() -> None:
    data = search_data("digits", batch_size=64, device="cpu", seed=0, val_fraction=0.5)
    assert data.info["weight_images"] + data.info["arch_images"] == 1797 - 359  # less test
    assert len(data.pairs) == data.info["weight_images"] // 64  # an epoch: one weight pass
    data.pairs.set_epoch(3)
    first = [(w[1].clone(), a[1].clone()) for w, a in data.pairs]
    data.pairs.set_epoch(3)
    again = [(w[1], a[1]) for w, a in data.pairs]
    assert all(torch.equal(a, b) for pair, other in zip(first, again, strict=True)
               for a, b in zip(pair, other, strict=True))  # fmt: skip
    arch_labels = torch.cat([a for _, a in first])
    assert len(arch_labels) == len(first) * 64  # every weight batch has its own arch batch
    with pytest.raises(DatasetOptionError, match="val_fraction must be > 0"):
        search_data("digits", batch_size=64, device="cpu", seed=0, val_fraction=0.0)


def test_search_on_digits_then_the_found_cell_trains() -> None:
    settings = SearchSettings(
        "digits",
        variant="sabn",
        channels=4,
        cells_per_stage=1,
        recipe=DartsRecipe(epochs=4, stop_epoch=2, batch_size=32),
        dataset_options={"val_fraction": 0.5},
        limit_batches=2,
    )
    records = list(run_search(settings))
    assert [r["epoch"] for r in records] == [1, 2]
    assert records[1]["lr"] < records[0]["lr"] == 0.025  # the 4-epoch cosine, cut at 2
    for r in records:
        probs = torch.tensor(r["alphas"])
        assert probs.shape == (6, len(OPERATIONS))
        torch.testing.assert_close(probs.sum(-1), torch.ones(6))
        assert r["genotype"] == genotype_of(probs, OPERATIONS)  # the largest alpha per edge
        assert 0 <= r["valid_top1"] <= 100 and r["valid_loss"] > 0
    assert list(run_search(settings))[-1] == records[-1]  # the seed fixes the whole search

    found = records[-1]["genotype"]
    parse_genotype(found)
    spec = retrain_spec(
        found, "digits", epochs=2, batch_size=64, channels=8, cells_per_stage=1,
        device="cpu", num_threads=1, probe=False,
    )  # fmt: skip
    assert spec.backbone == "nas201" and spec.backbone_options["genotype"] == found
    trained = list(run_trial(spec))
    assert [r["status"] for r in trained] == ["ok", "ok"]
    assert trained[-1]["test_top1"] is not None
