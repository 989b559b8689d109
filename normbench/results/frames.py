"""Stored results as pandas tables: `load_results` (one row per trial) and `load_epochs`.

Pure functions of the run directory (no torch, no lock: readers never block the writer).
A trial with epochs but no summary line is "interrupted" (the driver stopped mid-trial).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, cast

import pandas as pd

from normbench.contract import EpochRecord
from normbench.results.store import EPOCHS, TRIALS, read_jsonl

# Columns of `load_results`, in order.
RESULT_COLUMNS = [
    "trial_id", "variant", "label", "backbone", "dataset", "batch_size", "seed", "epochs_planned",
    "options", "cell", "status", "reason", "epochs", "final_test_top1", "final_test_top5",
    "final_val_top1", "best_val_top1", "best_val_epoch", "test_top1_at_best_val", "wall_time_s",
    "train_time_s", "images_per_s", "peak_mem_mb", "peak_mem_method", "params", "variant_source",
    "environment",
]  # fmt: skip


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
    rows = []
    for tid in sorted(set(epochs) | set(summaries)):
        summary = summaries.get(tid)
        recs = [epochs.get(tid, {})[e] for e in sorted(epochs.get(tid, {}))]
        spec = (summary or {}).get("spec") or first.get(tid, {}).get("spec") or {}
        cell = (summary or {}).get("cell") or first.get(tid, {}).get("cell") or {}
        row = {"trial_id": tid, **_config_columns(spec, cell)}
        row["status"] = summary["status"] if summary else "interrupted"
        row["reason"] = summary.get("reason") if summary else None
        row.update(_metric_columns(recs))
        if summary and summary.get("variant_source"):
            row["variant_source"] = summary["variant_source"]
        rows.append(row)
    return pd.DataFrame(rows, columns=RESULT_COLUMNS)


def _config_columns(spec: dict[str, Any], cell: dict[str, Any]) -> dict[str, Any]:
    return {
        "variant": spec.get("variant"),
        "label": cell.get("label") or cell.get("variant") or spec.get("variant"),
        "backbone": spec.get("backbone"),
        "dataset": spec.get("dataset"),
        "batch_size": spec.get("batch_size"),
        "seed": spec.get("seed"),
        "epochs_planned": spec.get("epochs"),
        "options": json.dumps(spec.get("variant_options", {}), sort_keys=True),
        "cell": json.dumps(cell, sort_keys=True, default=str),
    }


def _metric_columns(recs: list[EpochRecord]) -> dict[str, Any]:
    """Final, best-by-validation and cost columns from a trial's epoch records."""
    if not recs:
        return {"epochs": 0}
    last = recs[-1]
    vals = [(v, r) for r in recs if (v := r["val_top1"]) is not None and math.isfinite(v)]
    best_val, best = max(vals, key=lambda vr: vr[0]) if vals else (math.nan, None)
    speeds = [v for r in recs if (v := r["images_per_s"]) is not None and math.isfinite(v)]
    mems = [v for r in recs if (v := r["peak_mem_mb"]) is not None and math.isfinite(v)]
    trains = [r.get("train_time_s") for r in recs]
    return {
        "epochs": int(last["epoch"]),
        "final_test_top1": last.get("test_top1"),
        "final_test_top5": last.get("test_top5"),
        "final_val_top1": last.get("val_top1"),
        "best_val_top1": best_val,
        "best_val_epoch": best["epoch"] if best else None,
        "test_top1_at_best_val": best["test_top1"] if best else None,
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
