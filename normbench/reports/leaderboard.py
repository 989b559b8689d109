"""Leaderboards: one table per (dataset, backbone, batch size, length), one row per variant.

Every statistic is over the *completed* trials of a variant (one per seed); diverged, failed,
pruned and interrupted trials are counted in the row and listed in `did_not_finish`, never
dropped silently. The headline accuracy is the final-epoch test top-1. The best epoch is
chosen on the validation split; a trial without one falls back to best-on-test, and that is
labelled wherever it is shown.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import pandas as pd

from normbench.reports import stats
from normbench.reports.data import Results

BASELINE = "bn"
DEFAULT_TARGET_FRACTION = 0.95  # default target: 95% of the best mean final top-1 of a table
_TABLE_KEYS = ["dataset", "backbone_label", "batch_size", "epochs_planned", "limit_batches"]


@dataclass(frozen=True)
class Table:
    """One leaderboard. `rows` holds raw numbers (the CSV); render.py formats them."""

    dataset: str
    backbone: str
    batch_size: int | None
    epochs: int | None
    limit_batches: int | None
    rows: pd.DataFrame
    target: float | None
    target_source: str  # "suite" or "default"
    selection: str  # how the best epoch was chosen: "val", "test" or "mixed"
    baseline: str | None  # label of the BN row, if any
    # variant label -> completed trial ids, in the suite's variant order (for plots)
    members: dict[str, tuple[str, ...]]

    @property
    def title(self) -> str:
        epochs = f"{self.epochs} epoch{'s' if self.epochs != 1 else ''}"
        parts = [self.dataset, self.backbone, f"batch {self.batch_size}", epochs]
        if self.limit_batches:
            parts.append(f"smoke: {self.limit_batches} batches/epoch")
        return " · ".join(str(p) for p in parts)

    @property
    def slug(self) -> str:
        s = f"{self.dataset}_{self.backbone}_b{self.batch_size}_e{self.epochs}"
        s += f"_lb{self.limit_batches}" if self.limit_batches else ""
        return "".join(c if c.isalnum() or c in "_-" else "-" for c in s)


def build_tables(res: Results) -> list[Table]:
    """All leaderboards of the merged results, in a stable order."""
    df = res.trials
    if df.empty:
        return []
    df = df.assign(variant_key=[_variant_key(r) for _, r in df.iterrows()])
    order = _suite_order(res)
    rank = [order.get(str(label), len(order)) for label in df["label"]]
    df = df.assign(_rank=rank).sort_values(["_rank", "trial_id"], kind="stable")
    keys = df[_TABLE_KEYS].astype(object).where(df[_TABLE_KEYS].notna(), None)
    groups: dict[tuple[Any, ...], list[int]] = {}
    for idx, key in zip(df.index, map(tuple, keys.values.tolist()), strict=True):
        groups.setdefault(key, []).append(idx)
    tables = [_table(key, df.loc[idx], res) for key, idx in groups.items()]
    return sorted(
        tables,
        key=lambda t: (
            str(t.dataset),
            str(t.backbone),
            t.batch_size or 0,
            t.epochs or 0,
            t.limit_batches or 0,
        ),
    )


def _suite_order(res: Results) -> dict[str, int]:
    """Variant label -> position in the suite (plots and ties follow the suite's order)."""
    order: dict[str, int] = {}
    for run in res.runs:
        for trial in run.suite.get("trials") or []:
            label = (trial.get("cell") or {}).get("variant")
            if label is not None:
                order.setdefault(str(label), len(order))
    return order


def _variant_key(row: pd.Series) -> tuple[str, str]:
    return str(row["label"]), str(row["options"])


def _table(key: tuple[Any, ...], df: pd.DataFrame, res: Results) -> Table:
    dataset, backbone, batch_size, epochs, limit = key
    labels = _display_labels(df)
    done = df[df["status"] == "completed"]
    baseline = _baseline(df, labels)
    base_by_seed = _by_seed(done[done["variant_key"] == baseline]) if baseline else {}
    rows = []
    for vkey in dict.fromkeys(df["variant_key"]):
        trials = df[df["variant_key"] == vkey]
        row = _row(labels[vkey], trials, res, base_by_seed, is_base=vkey == baseline)
        row.update(_paper(res.reference, dataset, trials.iloc[0], labels[vkey], row["top1_mean"]))
        rows.append(row)
    table = (
        pd.DataFrame(rows)
        .sort_values("top1_mean", ascending=False, na_position="last", kind="stable")
        .reset_index(drop=True)
    )
    target, source = _target(res.target_accuracy, table)
    table = _add_targets(table, df, res.epochs, labels, target)
    sel = set(table["best_selection"].dropna())
    selection = "mixed" if len(sel) > 1 else (sel.pop() if sel else "val")
    base_label = labels.get(baseline) if baseline else None
    members = {labels[k]: tuple(done[done["variant_key"] == k]["trial_id"]) for k in labels}
    return Table(
        str(dataset),
        str(backbone),
        _int(batch_size),
        _int(epochs),
        _int(limit),
        table,
        target,
        source,
        selection,
        base_label,
        members,
    )


def _int(x: Any) -> int | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else int(x)


def _display_labels(df: pd.DataFrame) -> dict[tuple[str, str], str]:
    """The suite's label, plus the options when it does not show them already: the label is
    the bare registry name (e.g. `gn` with num_groups 8), or one label has several option sets
    (a search). An explicit label such as `GN-8` is kept as the user wrote it."""
    names = dict(zip(df["variant_key"], df["variant"].astype(str).str.lower(), strict=True))
    counts: dict[str, int] = {}
    for label, _ in names:
        counts[label] = counts.get(label, 0) + 1
    out = {}
    for (label, options), name in names.items():
        opts = json.loads(options) if options else {}
        extra = ",".join(f"{k}={_short(v)}" for k, v in sorted(opts.items()))
        bare = counts[label] > 1 or label.lower() == name
        out[(label, options)] = f"{label}({extra})" if bare and extra else label
    return out


def _short(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _baseline(df: pd.DataFrame, labels: dict[tuple[str, str], str]) -> tuple[str, str] | None:
    """The BN row: label "bn" first, else the first variant registered as bn."""
    keys = list(labels)
    for k in keys:
        if k[0].lower() == BASELINE:
            return k
    bn = df[df["variant"].astype(str).str.lower() == BASELINE]
    return _variant_key(bn.iloc[0]) if not bn.empty else None


def _by_seed(trials: pd.DataFrame) -> dict[int, float]:
    """Final test top-1 per seed (trials without a seed or a final number are left out)."""
    pairs = zip(trials["seed"], trials["final_test_top1"], strict=True)
    return {int(s): float(v) for s, v in pairs if not pd.isna(s) and not pd.isna(v)}


def _row(
    label: str, trials: pd.DataFrame, res: Results, base: dict[int, float], is_base: bool
) -> dict[str, Any]:
    done = trials[trials["status"] == "completed"]
    top1 = [float(v) for v in done["final_test_top1"].dropna()]
    low, high = stats.bootstrap_ci(top1)
    row: dict[str, Any] = {
        "variant": label,
        "n": len(top1),
        "diverged": int((trials["status"] == "diverged").sum()),
        "not_finished": int((~trials["status"].isin(["completed", "diverged"])).sum()),
        "top1_mean": stats.mean(top1),
        "top1_std": stats.sample_std(top1),
        "top1_ci_low": low,
        "top1_ci_high": high,
        "top5_mean": stats.mean([float(v) for v in done["final_test_top5"].dropna()]),
    }
    row.update(_vs_baseline(_by_seed(done), base, is_base))
    row.update(_best_epoch(done, res.epochs))
    row.update(_cost(done))
    row["source"] = _source(trials)
    return row


def _vs_baseline(mine: dict[int, float], base: dict[int, float], is_base: bool) -> dict:
    if is_base or not base:
        note = "baseline" if is_base else "no BN baseline"
        return {"diff_vs_bn": math.nan, "p_value": math.nan, "n_pairs": 0, "test_note": note}
    r = stats.paired_test(mine, base)
    p = math.nan if r.p_value is None else r.p_value
    return {"diff_vs_bn": r.mean_diff, "p_value": p, "n_pairs": r.n_pairs, "test_note": r.note}


def _best_epoch(done: pd.DataFrame, epochs: pd.DataFrame) -> dict[str, Any]:
    """Mean test top-1 at each trial's best-on-val epoch (best-on-test without a val split)."""
    tops, eps, how = [], [], set()
    for _, t in done.iterrows():
        if not pd.isna(t["best_val_top1"]):
            tops.append(t["test_top1_at_best_val"])
            eps.append(t["best_val_epoch"])
            how.add("val")
            continue
        mine = epochs[epochs["trial_id"] == t["trial_id"]]
        if "test_top1" not in mine:
            continue
        test = pd.to_numeric(mine["test_top1"], errors="coerce")
        if test.dropna().empty:
            continue
        best = mine.loc[test.idxmax()]  # first maximum
        tops.append(best["test_top1"])
        eps.append(best["epoch"])
        how.add("test")
    selection = None if not how else ("mixed" if len(how) > 1 else how.pop())
    return {
        "best_top1_mean": stats.mean([float(x) for x in tops]),
        "best_epoch_mean": stats.mean([float(x) for x in eps]),
        "best_selection": selection,
    }


def _cost(done: pd.DataFrame) -> dict[str, Any]:
    def col(name: str) -> list[float]:
        return [float(v) for v in pd.to_numeric(done[name], errors="coerce").dropna()]

    params = col("params")
    return {
        "wall_time_s_mean": stats.mean(col("wall_time_s")),
        "wall_time_s_std": stats.sample_std(col("wall_time_s")),
        "images_per_s_mean": stats.mean(col("images_per_s")),
        "images_per_s_std": stats.sample_std(col("images_per_s")),
        "peak_mem_mb_mean": stats.mean(col("peak_mem_mb")),
        "params": int(params[0]) if params else None,
    }


def _source(trials: pd.DataFrame) -> str:
    """Where the variant came from: "built-in", "file <name>" or the package."""
    sources = [s for s in trials["variant_source"].dropna().astype(str)]
    if not sources:
        return "built-in"
    s = sources[0]
    if s.startswith("file:"):
        return "file " + s[5:].rsplit("/", 1)[-1]
    return s


def _paper(
    refs: tuple[dict, ...], dataset: str, trial: pd.Series, label: str, mean_top1: float
) -> dict[str, Any]:
    """The suite's reference number for this row (matched by label, else registry name)."""
    names = {str(trial["backbone_label"]).lower(), str(trial["backbone"]).lower()}
    for want in (label.lower(), str(trial["variant"]).lower()):
        for ref in refs:
            if (
                str(ref.get("dataset")).lower() == str(dataset).lower()
                and str(ref.get("backbone")).lower() in names
                and str(ref.get("variant")).lower() == want
                and ref.get("batch_size") in (None, trial["batch_size"])
                and ref.get("top1") is not None
            ):
                top1 = float(ref["top1"])
                return {
                    "paper_top1": top1,
                    "diff_vs_paper": mean_top1 - top1,
                    "paper_source": ref.get("source"),
                }
    return {"paper_top1": math.nan, "diff_vs_paper": math.nan, "paper_source": None}


def _target(suite_target: float | None, table: pd.DataFrame) -> tuple[float | None, str]:
    if suite_target is not None:
        return float(suite_target), "suite"
    best = table["top1_mean"].max()
    if pd.isna(best):
        return None, "default"
    return round(DEFAULT_TARGET_FRACTION * float(best), 2), "default"


def _add_targets(
    table: pd.DataFrame,
    df: pd.DataFrame,
    epochs: pd.DataFrame,
    labels: dict[tuple[str, str], str],
    target: float | None,
) -> pd.DataFrame:
    """Epochs and wall time to first reach `target` (test top-1), mean over the seeds that did."""
    out: dict[str, list[Any]] = {
        k: [] for k in ("epochs_to_target_mean", "time_to_target_s_mean", "reached")
    }
    done = df[df["status"] == "completed"]
    for label in table["variant"]:
        keys = [k for k, v in labels.items() if v == label]
        trials = done[done["variant_key"].isin(keys)]
        hits = (
            [
                stats.time_to_target(epochs[epochs["trial_id"] == t], target)
                for t in trials["trial_id"]
            ]
            if target is not None
            else []
        )
        reached = [h for h in hits if h.epoch is not None]
        out["epochs_to_target_mean"].append(
            stats.mean([float(h.epoch) for h in reached if h.epoch])
        )
        secs = [h.elapsed_s for h in reached if h.elapsed_s is not None]
        out["time_to_target_s_mean"].append(stats.mean(secs))
        out["reached"].append(f"{len(reached)}/{len(trials)}")
    return table.assign(**out)


def did_not_finish(res: Results) -> pd.DataFrame:
    """Every trial that did not complete: trial, cell, status, last epoch, reason."""
    df = res.trials
    if df.empty:
        return pd.DataFrame(
            columns=["trial_id", "variant", "backbone", "seed", "status", "epoch", "reason"]
        )
    bad = df[df["status"] != "completed"]
    out = pd.DataFrame(
        {
            "trial_id": bad["trial_id"],
            "dataset": bad["dataset"],
            "backbone": bad["backbone_label"],
            "variant": bad["label"],
            "batch_size": bad["batch_size"],
            "seed": bad["seed"],
            "status": bad["status"],
            "epoch": bad["epochs"],
            "reason": bad["reason"].fillna(_default_reason(bad)),
        }
    )
    return out.sort_values(["status", "trial_id"], kind="stable").reset_index(drop=True)


def _default_reason(bad: pd.DataFrame) -> pd.Series:
    text = {"interrupted": "interrupted (no summary line: the driver stopped mid-trial)"}
    return bad["status"].map(text).fillna("no reason recorded")
