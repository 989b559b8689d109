"""`normbench report A B` merges copies of one run that differ only in what is not part of a
trial's identity (`normbench.spec.identity`): where the data is, and how devices are run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd

from normbench.cli import main

RUN = Path(__file__).resolve().parent / "fixtures" / "run_small"


def _respec(run: Path, **changes: object) -> None:
    """Rewrite every stored spec of `run` (summary and epoch lines) with `changes`."""
    for name in ("trials.jsonl", "epochs.jsonl"):
        path = run / name
        lines = [json.loads(x) for x in path.read_text().splitlines()]
        for line in (x for x in lines if "spec" in x):  # epoch lines: the first has it
            if "dataset_options.root" in changes:
                line["spec"]["dataset_options"]["root"] = changes["dataset_options.root"]
            line["spec"].update({k: v for k, v in changes.items() if "." not in k})
        path.write_text("".join(json.dumps(x) + "\n" for x in lines))


def test_copies_differing_in_data_root_and_parallel_merge(tmp_path: Path, capsys) -> None:
    moved, virtual = tmp_path / "moved", tmp_path / "virtual"
    shutil.copytree(RUN, moved)
    shutil.copytree(RUN, virtual)
    _respec(moved, **{"dataset_options.root": "/elsewhere/data"})
    _respec(virtual, parallel="virtual", num_threads=2, checkpoint_every=3)
    out = tmp_path / "report"
    try:
        main(["report", str(RUN), str(moved), str(virtual), "--output", str(out)])
    except SystemExit as exc:
        assert exc.code in (0, None), capsys.readouterr().err
    rows = pd.read_csv(out / "leaderboard.csv")
    # bn and ubn, each once, each over its 3 seeds: the copies counted once
    assert sorted(rows["variant"]) == ["bn", "ubn"] and set(rows["n"]) == {3}


def test_a_real_difference_still_refuses(tmp_path: Path, capsys) -> None:
    other = tmp_path / "other"
    shutil.copytree(RUN, other)
    for name in ("trials.jsonl", "epochs.jsonl"):
        path = other / name
        lines = [json.loads(x) for x in path.read_text().splitlines()]
        for line in (x for x in lines if "spec" in x):
            line["spec"]["dataset_options"]["image_size"] = 8
        path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    try:
        main(["report", str(RUN), str(other), "--output", str(tmp_path / "r")])
    except SystemExit as exc:
        assert exc.code == 2
    err = capsys.readouterr().err
    assert "differs in dataset_options.image_size (None vs 8)" in err
