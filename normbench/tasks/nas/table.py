"""The NAS-Bench-201 table: the accuracy every cell of the space reached when trained by the
benchmark (Dong & Yang, ICLR 2020, arXiv 2001.00326), looked up by the found cell's text.

The table is the benchmark's release file (`NAS-Bench-201-v1_0-e61699.pth`, 2.1 GB, or
`NAS-Bench-201-v1_1-096897.pth`), which the user downloads and points at. It is a `torch.save`
pickle, and unpickling a file can run any code hidden in it: reading it is the one place
normbench unpickles, so it happens only when the user says `trust_pickle: true` beside
`nas201_table: PATH`. Without it nothing of the file is read. With it, the file is first read
with `torch.load(weights_only=True)` (torch's restricted unpickler: tensors and plain
containers); only if that refuses the file is it unpickled in full.

The file's layout (the benchmark's own API, `nas_201_api/api.py`, reads it so): a dict with
`meta_archs` (the cells' texts, the index of a cell is its position), `arch2infos` ({index:
{"full": results of the 200-epoch training, "less": of the 12-epoch one}}) and
`evaluated_indexes`. Results are `dataset_seed` ({data set: [seeds]}) and `all_results`
({(data set, seed): one training}), each training holding `epochs` and `eval_acc1es`
({"<set>@<epoch>": top-1 %}). The accuracy of a cell is the mean over its seeds of the last
epoch's top-1, as the benchmark's `get_metrics(dataset, set)` gives it. Data sets: `cifar10`
(set `ori-test`), `cifar10-valid`, `cifar100` and `ImageNet16-120` (sets `x-valid`, `x-test`,
and `ori-test` = both halves of the test set). "Test top-1" in the NAS-Bench-201 paper is
`x-test` for CIFAR-100 and ImageNet16-120, `ori-test` for CIFAR-10.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from normbench.errors import UserError

TEST_SET = {"cifar10": "ori-test", "cifar10-valid": "ori-test"}  # else "x-test"
Training = Literal["200", "12"]


class TableError(UserError, ValueError):
    """The table cannot be read or does not hold what was asked."""


def test_set(dataset: str) -> str:
    """The benchmark's test set of `dataset` (module doc)."""
    return TEST_SET.get(dataset, "x-test")


@dataclass(frozen=True)
class Nas201Table:
    """A loaded table (`load_table`): architecture texts and their results."""

    path: str
    archs: tuple[str, ...]
    results: dict[int, Any]  # index -> {"full": ..., "less": ...}

    def index(self, genotype: str) -> int:
        """The cell's index; TableError when the table does not list it."""
        try:
            return self.archs.index(genotype)
        except ValueError:
            raise TableError(f"{self.path}: the table lists no cell {genotype!r}") from None

    def accuracy(
        self, genotype: str, dataset: str, split: str | None = None, training: Training = "200"
    ) -> float:
        """Top-1 (%) of the cell on `dataset`'s `split` (default: its test set) after the
        benchmark's 200-epoch (or 12-epoch) training, the mean over the table's seeds."""
        split = split or test_set(dataset)
        index = self.index(genotype)
        entry = self.results.get(index, {}).get("full" if training == "200" else "less")
        seeds = (entry or {}).get("dataset_seed", {}).get(dataset)
        if not seeds:
            raise TableError(
                f"{self.path}: cell {index} has no {training}-epoch results on {dataset!r}"
            )
        runs = [entry["all_results"][dataset, seed] for seed in seeds]
        key = f"{split}@{runs[0]['epochs'] - 1}"
        missing = [r["seed"] for r in runs if key not in r.get("eval_acc1es", {})]
        if missing:
            raise TableError(
                f"{self.path}: cell {index} on {dataset!r} has no {key!r} accuracy "
                f"(seeds {missing})"
            )
        return sum(float(r["eval_acc1es"][key]) for r in runs) / len(runs)


def load_table(path: str | Path, *, trust_pickle: bool = False) -> Nas201Table:
    """Read the table at `path` (module doc). Raises TableError without `trust_pickle` (before
    opening the file), for a missing file, and for a file that is not the table."""
    where = str(path)
    if not trust_pickle:
        raise TableError(
            f"nas201_table: {where} is a pickle (torch.save) file, and unpickling a file can "
            "run code hidden in it; set trust_pickle: true only for the NAS-Bench-201 release "
            "file from a source you trust"
        )
    if not Path(where).is_file():
        raise TableError(f"nas201_table: no file at {where} (the NAS-Bench-201 release file)")
    try:
        data = _unpickle(where)
    except Exception as exc:  # a truncated or foreign file: whatever the unpickler raised
        raise TableError(f"nas201_table: {where} could not be read: {exc}") from exc
    keys = ("meta_archs", "arch2infos", "evaluated_indexes")
    if not isinstance(data, dict) or not all(k in data for k in keys):
        raise TableError(
            f"nas201_table: {where} is not a NAS-Bench-201 table (a dict with keys "
            f"{', '.join(keys)})"
        )
    archs = tuple(str(a) for a in data["meta_archs"])
    return Nas201Table(where, archs, dict(data["arch2infos"]))


def _unpickle(where: str) -> Any:
    """torch's restricted unpickler first, the full one only for a file it refuses."""
    try:
        return torch.load(where, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # globals the restricted unpickler refuses
        return torch.load(where, map_location="cpu", weights_only=False)
