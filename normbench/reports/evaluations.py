"""Rows for `normbench evaluate` results: finished checkpoints re-scored under inference-time
settings (`RUN_DIR/evaluations.jsonl`), labelled with the setting, beside the trained score.

Pure function of the run directories; never imports torch. The numbers are each trial's task's
headline on test (classification: top-1; a line of another task carries its `scoring`).
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from normbench.contract import scoring_of
from normbench.reports.numbers import number
from normbench.results.revisions import superseded_in
from normbench.results.store import EPOCHS, EVALUATIONS, read_jsonl

SETTING_TITLES = {
    "example_weight": "example weight alpha chosen on val",
    "recalibrated_stats": "running statistics recalibrated",
}


def evaluation_markdown(run_dirs: list[Path]) -> str:
    """A Markdown section with one row per (cell, setting), or "" without evaluations.

    Columns: the cell, the setting, seeds n, mean (sd) test top-1 under the setting, the same
    trials' trained test top-1 at the evaluated epoch, the difference, and the settings' values
    (the alpha each seed chose, or the batches used).
    """
    groups: dict[tuple[Any, ...], list[tuple[dict[str, Any], float | None]]] = defaultdict(list)
    for run_dir in run_dirs:
        trained = {
            (r["trial_id"], r["epoch"]): r.get(f"test_{scoring_of(r).headline}")
            for r in read_jsonl(Path(run_dir) / EPOCHS)
        }
        left_out = superseded_in(Path(run_dir))  # left out of the leaderboards: here too
        for e in read_jsonl(Path(run_dir) / EVALUATIONS):
            if e.get("trial_id") in left_out:
                continue
            cell = e.get("cell") or {}
            key = (
                cell.get("dataset"),
                cell.get("backbone"),
                cell.get("variant"),
                cell.get("batch_size"),
                e["setting"],
            )
            groups[key].append((e, trained.get((e["trial_id"], e["checkpoint_epoch"]))))
    if not groups:
        return ""
    out = [
        "## Post-hoc evaluation (`normbench evaluate`)",
        "",
        "Finished checkpoints re-scored without retraining; test top-1 in %, mean (sd) over seeds.",
        "",
        "| dataset | backbone | variant | batch | setting | n | test top-1 | trained | diff "
        "| values |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (dataset, backbone, variant, batch, setting), rows in groups.items():
        test = f"test_{scoring_of(rows[0][0]).headline}"
        new = [e[test] for e, _ in rows if e.get(test) is not None]
        old = [t for _, t in rows if t is not None]
        values = ", ".join(f"{e['value']:g}" for e, _ in rows)
        diff = _mean(new) - _mean(old) if new and old else None
        out.append(
            f"| {dataset} | {backbone} | {variant} | {batch} | "
            f"{SETTING_TITLES.get(setting, setting)} | {len(rows)} | {_mean_sd(new)} | "
            f"{_mean_sd(old)} | {'' if diff is None else number(diff, '+.2f')} | {values} |"
        )
    return "\n".join(out) + "\n"


def _mean(xs: list[float]) -> float:
    return statistics.fmean(xs)


def _mean_sd(xs: list[float]) -> str:
    if not xs:
        return ""
    if len(xs) == 1:
        return number(xs[0], ".2f")
    return f"{number(_mean(xs), '.2f')} ({number(statistics.stdev(xs), '.2f')})"
