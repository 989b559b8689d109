"""Stored results as pandas tables: `load_results` (one row per trial) and `load_epochs`.

Pure functions of the run directory (no torch, no lock: readers never block the writer).
A trial with epochs but no summary line is "running" while a `normbench run` holds the run
directory, else "interrupted" (the driver stopped mid-trial). A finished trial whose stored
epoch lines miss some of its finished epochs is "incomplete": its final metrics would be an
earlier epoch's, so it never counts as completed (a rerun restores or retrains it).

The metric columns follow each trial's task (its `Scoring`, read from its records with
`normbench.contract.scoring_of`): with headline metric `h` and shown metrics `s...`,
`final_test_h`, `final_test_s...`, `final_val_h`, `best_val_h` (best in h's direction),
`best_val_epoch` and `test_h_at_best_val`. Classification's are `final_test_top1`,
`final_test_top5`, `final_val_top1`, `best_val_top1`, `best_val_epoch`,
`test_top1_at_best_val`; a run of several tasks has each task's columns (NaN for the others).
`task` and `headline` name each trial's task and headline metric.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, cast

import pandas as pd

from normbench.contract import CLASSIFICATION, EpochRecord, Scoring, scoring_of
from normbench.results.store import EPOCHS, TRIALS, read_jsonl

# Columns of `load_results`, in order; the metric columns (`metric_columns`) of the tasks
# present go after "epochs" (classification's: CLASSIFICATION_COLUMNS).
CONFIG_COLUMNS = [
    "trial_id", "variant", "label", "backbone", "dataset", "task", "headline", "batch_size",
    "seed", "epochs_planned", "options", "cell", "status", "reason", "epochs",
]  # fmt: skip
COST_COLUMNS = [
    "wall_time_s", "train_time_s", "images_per_s", "peak_mem_mb", "peak_mem_method", "params",
    "variant_source", "environment", "notes",
]  # fmt: skip


def metric_columns(scoring: Scoring) -> list[str]:
    """The `load_results` columns of a task's metrics (see the module docstring)."""
    h = scoring.headline
    finals = [f"final_test_{m}" for m in (h, *scoring.shown)]
    return [*finals, f"final_val_{h}", f"best_val_{h}", "best_val_epoch", f"test_{h}_at_best_val"]


CLASSIFICATION_COLUMNS = metric_columns(CLASSIFICATION)
RESULT_COLUMNS = [*CONFIG_COLUMNS, *CLASSIFICATION_COLUMNS, *COST_COLUMNS]


def load_epochs(run_dir: str | os.PathLike[str]) -> pd.DataFrame:
    """One row per stored trial-epoch (first copy of a duplicated epoch wins)."""
    rows = [_flat_epoch(r) for r in read_jsonl(Path(run_dir) / EPOCHS)]
    df = pd.DataFrame(rows)
    if df.empty:
        return pd.DataFrame(columns=["trial_id", "epoch"])
    df = df.drop_duplicates(["trial_id", "epoch"], keep="first")
    return df.sort_values(["trial_id", "epoch"], kind="stable").reset_index(drop=True)


def load_results(run_dir: str | os.PathLike[str]) -> pd.DataFrame:
    """One row per trial: configuration, status, final and best metrics, cost."""
    run_dir = Path(run_dir)
    epochs: dict[str, dict[int, EpochRecord]] = {}
    first: dict[str, dict[str, Any]] = {}
    for rec in read_jsonl(run_dir / EPOCHS):
        tid = rec["trial_id"]
        first.setdefault(tid, rec)
        epochs.setdefault(tid, {}).setdefault(int(rec["epoch"]), cast(EpochRecord, rec))
    summaries = {rec["trial_id"]: rec for rec in read_jsonl(run_dir / TRIALS)}
    unfinished = "running" if run_holder(run_dir) == "run" else "interrupted"
    rows = []
    metrics: dict[str, None] = {}
    for tid in sorted(set(epochs) | set(summaries)):
        summary = summaries.get(tid)
        recs = [epochs.get(tid, {})[e] for e in sorted(epochs.get(tid, {}))]
        spec = (summary or {}).get("spec") or first.get(tid, {}).get("spec") or {}
        cell = (summary or {}).get("cell") or first.get(tid, {}).get("cell") or {}
        row = {"trial_id": tid, **_config_columns(spec, cell)}
        row["status"], row["reason"] = _status(summary, set(epochs.get(tid, {})), unfinished)
        scoring = _scoring(recs, row["task"])
        if scoring is not None:
            row["headline"] = scoring.headline
            metrics.update(dict.fromkeys(metric_columns(scoring)))
        row.update(_metric_columns(recs, scoring))
        if summary and summary.get("variant_source"):
            row["variant_source"] = summary["variant_source"]
        notes = (summary or {}).get("notes")
        row["notes"] = json.dumps(notes) if isinstance(notes, list) and notes else None
        rows.append(row)
    if not metrics:
        metrics = dict.fromkeys(CLASSIFICATION_COLUMNS)
    return pd.DataFrame(rows, columns=[*CONFIG_COLUMNS, *metrics, *COST_COLUMNS])


def _scoring(recs: list[EpochRecord], task: str) -> Scoring | None:
    """A trial's scoring: its records', else classification's for a classification trial
    (None: another task's trial that stored no record)."""
    if recs:
        return scoring_of(recs[0])
    return CLASSIFICATION if task == "classification" else None


def run_holder(run_dir: Path) -> str | None:
    """Which command holds the run directory now ("run", "evaluate"), or None."""
    from normbench.results.lock import lock_holder

    held = lock_holder(run_dir)
    return None if held is None else held[1]


def _status(
    summary: dict[str, Any] | None, stored: set[int], unfinished: str
) -> tuple[str, str | None]:
    """A trial's status and reason: its summary's, "incomplete" when a finished trial's stored
    epoch lines miss some of its epochs, `unfinished` without a summary."""
    from normbench.results.store import DONE_STATUSES

    if summary is None:
        return unfinished, None
    finished = summary.get("epochs")
    if summary["status"] in DONE_STATUSES and isinstance(finished, int):
        missing = sorted(set(range(1, finished + 1)) - stored)
        if missing:
            return "incomplete", (
                f"{summary['status']} after {finished} epochs, but the lines of epochs "
                f"{missing} are lost, so its final metrics are not shown; rerun `normbench "
                "run` on its suite to restore them from its checkpoint or retrain it"
            )
    return summary["status"], summary.get("reason")


def _config_columns(spec: dict[str, Any], cell: dict[str, Any]) -> dict[str, Any]:
    return {
        "variant": spec.get("variant"),
        "label": cell.get("label") or cell.get("variant") or spec.get("variant"),
        "backbone": spec.get("backbone"),
        "dataset": spec.get("dataset"),
        "task": spec.get("task", "classification"),
        "batch_size": spec.get("batch_size"),
        "seed": spec.get("seed"),
        "epochs_planned": spec.get("epochs"),
        "options": json.dumps(spec.get("variant_options", {}), sort_keys=True),
        "cell": json.dumps(cell, sort_keys=True, default=str),
    }


def _metric_columns(recs: list[EpochRecord], scoring: Scoring | None) -> dict[str, Any]:
    """Final, best-by-validation and cost columns from a trial's epoch records."""
    if not recs or scoring is None:
        return {"epochs": 0}
    last: dict[str, Any] = dict(recs[-1])
    h, sign = scoring.headline, 1.0 if scoring.best.higher_is_better else -1.0
    vals = [
        (v, r)
        for r in recs
        if (v := cast(dict[str, Any], r).get(f"val_{h}")) is not None and math.isfinite(v)
    ]
    best_val, best = max(vals, key=lambda vr: sign * vr[0]) if vals else (math.nan, None)
    speeds = [v for r in recs if (v := r["images_per_s"]) is not None and math.isfinite(v)]
    mems = [v for r in recs if (v := r["peak_mem_mb"]) is not None and math.isfinite(v)]
    trains = [r.get("train_time_s") for r in recs]
    return {
        "epochs": int(last["epoch"]),
        **{f"final_test_{m}": last.get(f"test_{m}") for m in (h, *scoring.shown)},
        f"final_val_{h}": last.get(f"val_{h}"),
        f"best_val_{h}": best_val,
        "best_val_epoch": best["epoch"] if best else None,
        f"test_{h}_at_best_val": cast(dict[str, Any], best).get(f"test_{h}") if best else None,
        "wall_time_s": last.get("elapsed_s"),
        # training only (no evaluation, probes, checkpoints); NaN if an epoch did not record it
        "train_time_s": (
            sum(t for t in trains if t is not None)
            if all(t is not None and math.isfinite(t) for t in trains)
            else math.nan
        ),
        "images_per_s": sum(speeds) / len(speeds) if speeds else math.nan,
        "peak_mem_mb": max(mems) if mems else math.nan,
        "peak_mem_method": last.get("peak_mem_method"),
        "params": last.get("params"),
        "variant_source": last.get("variant_source"),
        # JSON of the execution environment (device, threads, dtype, versions); a cell whose
        # seeds differ here ran in different environments (normbench.engine.device).
        "environment": _environment(recs),
    }


def _environment(recs: list[EpochRecord]) -> str | None:
    """The trial's environment as sorted JSON (a resumed trial never changes it), or None."""
    envs = {json.dumps(r.get("environment"), sort_keys=True) for r in recs if r.get("environment")}
    return envs.pop() if len(envs) == 1 else (None if not envs else "mixed")


def _flat_epoch(rec: dict[str, Any]) -> dict[str, Any]:
    """Drop the spec copy; nested per-layer dicts become JSON strings."""
    out = {k: v for k, v in rec.items() if k not in ("spec", "cell")}
    for k in ("condensation", "diagnostics", "environment"):
        if isinstance(out.get(k), dict):
            out[k] = json.dumps(out[k], sort_keys=True)
    return out
