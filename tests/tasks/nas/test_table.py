"""The NAS-Bench-201 table (normbench.tasks.nas.table) on small files written here in the
release file's layout: the accuracy of a cell is the mean over its seeds of the last epoch's
test top-1; without `trust_pickle` nothing of the file is unpickled (an armed pickle proves it)."""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch

from normbench.models.nas201 import RESNET_CELL
from normbench.tasks.nas.search import table_accuracy
from normbench.tasks.nas.table import TableError, load_table

ALL_3X3 = "+".join("|" + "|".join(f"nor_conv_3x3~{j}" for j in range(i)) + "|" for i in range(1, 4))


def run(dataset: str, seed: int, epochs: int, test: dict[str, float], arch: str) -> dict:
    """One training's `ResultsCount` state, as the benchmark's API saves it."""
    evals = {f"{name}@{e}": 1.0 + e / 10 for name in test for e in range(epochs - 1)}
    evals.update({f"{name}@{epochs - 1}": acc for name, acc in test.items()})
    return {
        "name": dataset,
        "net_state_dict": None,
        "train_acc1es": {e: 50.0 for e in range(epochs)},
        "train_acc5es": None,
        "train_losses": {e: 1.0 for e in range(epochs)},
        "train_times": None,
        "arch_config": {"channel": 16, "num_cells": 5, "arch_str": arch, "class_num": 100},
        "params": 1.5,
        "flop": 200.0,
        "seed": seed,
        "epochs": epochs,
        "latency": [0.01],
        "eval_names": list(test),
        "eval_acc1es": evals,
        "eval_times": {},
        "eval_losses": {k: 1.0 for k in evals},
    }


def results(index: int, arch: str, epochs: int, per_seed: dict[int, dict[str, dict]]) -> dict:
    """One architecture's `ArchResults` state: {data set: {seed: {set: top-1}}}."""
    return {
        "arch_index": index,
        "arch_str": arch,
        "all_results": {
            (ds, seed): run(ds, seed, epochs, test, arch)
            for ds, seeds in per_seed.items()
            for seed, test in seeds.items()
        },
        "dataset_seed": {ds: sorted(seeds) for ds, seeds in per_seed.items()},
        "clear_net_done": True,
    }


def write_table(path: Path, accuracy: float | np.floating = 70.0) -> Path:
    full = {
        "cifar100": {777: {"x-test": accuracy, "x-valid": 60.0}, 888: {"x-test": 72.0}},
        "cifar10": {777: {"ori-test": 93.5}},
    }
    table = {
        "meta_archs": [RESNET_CELL, ALL_3X3],
        "arch2infos": {
            0: {
                "full": results(0, RESNET_CELL, 200, full),
                "less": results(0, RESNET_CELL, 12, {"cifar100": {777: {"x-test": 30.0}}}),
            },
            1: {"full": results(1, ALL_3X3, 200, {}), "less": results(1, ALL_3X3, 12, {})},
        },
        "evaluated_indexes": OrderedDict([(0, None), (1, None)]),
    }
    torch.save(table, path)
    return path


def test_accuracy_is_the_mean_over_seeds_of_the_last_epochs_test_set(tmp_path) -> None:
    path = write_table(tmp_path / "NAS-Bench-201-v1_0-e61699.pth")
    table = load_table(path, trust_pickle=True)
    assert table.index(ALL_3X3) == 1
    assert table.accuracy(RESNET_CELL, "cifar100") == pytest.approx((70.0 + 72.0) / 2)  # x-test
    assert table.accuracy(RESNET_CELL, "cifar10") == pytest.approx(93.5)  # ori-test
    assert table.accuracy(RESNET_CELL, "cifar100", training="12") == pytest.approx(30.0)
    got = table_accuracy(RESNET_CELL, "cifar100", nas201_table=str(path), trust_pickle=True)
    assert got == pytest.approx(71.0)
    with pytest.raises(TableError, match="no 'x-valid@199' accuracy \\(seeds \\[888\\]\\)"):
        table.accuracy(RESNET_CELL, "cifar100", "x-valid")
    with pytest.raises(TableError, match="cell 1 has no 200-epoch results on 'cifar100'"):
        table.accuracy(ALL_3X3, "cifar100")
    with pytest.raises(TableError, match="lists no cell '\\|none~0\\|"):
        table.accuracy("|none~0|+|none~0|none~1|+|none~0|none~1|none~2|", "cifar100")


def test_a_table_the_restricted_unpickler_refuses_loads_in_full_when_trusted(tmp_path) -> None:
    path = write_table(tmp_path / "t.pth", accuracy=np.float64(70.0))  # a numpy scalar inside
    with pytest.raises(Exception, match="Weights only load failed"):
        torch.load(path, weights_only=True)
    assert load_table(path, trust_pickle=True).accuracy(RESNET_CELL, "cifar100") == 71.0


class Armed:
    """Unpickling this makes a directory: the kind of code a pickle can run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.mkdir, (str(self.marker),))


def test_nothing_is_unpickled_without_trust_pickle(tmp_path) -> None:
    marker = tmp_path / "the_pickle_ran"
    path = tmp_path / "armed.pth"
    torch.save({"meta_archs": Armed(marker)}, path)
    with pytest.raises(TableError, match="set trust_pickle: true only for"):
        load_table(path)
    with pytest.raises(TableError, match="trust_pickle"):
        table_accuracy(RESNET_CELL, "cifar100", nas201_table=str(path))
    assert not marker.exists()
    # the file was armed: trusting it runs its code (and it is no table)
    with pytest.raises(TableError, match="is not a NAS-Bench-201 table"):
        load_table(path, trust_pickle=True)
    assert marker.is_dir()


def test_missing_or_foreign_files_are_one_line_errors(tmp_path) -> None:
    with pytest.raises(TableError, match="no file at .*nowhere.pth"):
        load_table(tmp_path / "nowhere.pth", trust_pickle=True)
    (tmp_path / "text.pth").write_text("not a pickle")
    with pytest.raises(TableError, match="text.pth could not be read"):
        load_table(tmp_path / "text.pth", trust_pickle=True)
