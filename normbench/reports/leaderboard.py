"""Leaderboards: one table per (dataset, backbone, batch size, length), one row per variant.

Every statistic is over the *completed* trials of a variant (one per seed); diverged, failed,
pruned and interrupted trials are counted in the row and listed in `did_not_finish`, never
dropped silently. The headline accuracy is the final-epoch test top-1. The best epoch is
chosen on the validation split; a trial without one falls back to best-on-test, and that is
labelled wherever it is shown.

In a search, a row is one sampled configuration (the searched values in its label): seeds
are pooled only within a configuration. The paired tests of a table against its BN row are
one family: their p-values are Holm-adjusted across the table's rows.

Time-to-target uses one target per table: the suite's reference top-1 for BN on that data
set and backbone when it gives one (UBN Table 8: "time to reach BN's final accuracy"), else
the suite's `target_accuracy`, else BN's mean final top-1 in the same table (Table 8 as
measured within one run), else 95% of the table's best mean final top-1.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
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
    target_source: str  # "reference", "suite", "baseline" or "default"
    selection: str  # how the best epoch was chosen: "val", "test" or "mixed"
    baseline: str | None  # label of the BN row, if any
    # variant label -> completed trial ids, in the suite's variant order (for plots)
    members: dict[str, tuple[str, ...]]
    target_note: str = ""  # where a reference target comes from (its source)
    smoke: str | None = None  # why this is a smoke run (--max-epochs / --limit-batches), or None
    sources: tuple[str, ...] = ()  # reference sources with a number in this table, in order
    best_config: str | None = None  # a search's best configuration, in words
    # variant label -> the UBN threshold tau its trials used (for the FCT plots)
    taus: dict[str, float] = field(default_factory=dict)
    # (devices, stats_scope) when the trials ran on several devices (all alike), else None
    devices: tuple[int, str] | None = None

    @property
    def title(self) -> str:
        epochs = f"{self.epochs} epoch{'s' if self.epochs != 1 else ''}"
        batch = f"batch {self.batch_size}"
        if self.devices is not None and self.batch_size is not None:
            n, scope = self.devices
            where = "per device" if scope == "device" else "over all devices"
            batch += f" per device x {n} devices ({n * self.batch_size} a step, statistics {where})"
        parts = [self.dataset, self.backbone, batch, epochs]
        if self.smoke:
            parts.append(f"SMOKE RUN ({self.smoke})")
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
    paths = _search_paths(res)
    df = df.assign(variant_key=[_variant_key(r, paths) for _, r in df.iterrows()])
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


# Searched spec fields a row or table shows already: the layer is the row's label (its options
# are in `options`), the backbone and batch size are table keys.
_SHOWN = ("variant", "backbone", "batch_size")


def _search_paths(res: Results) -> tuple[str, ...]:
    """Spec paths a search samples outside the layer's options and the table keys (e.g.
    `recipe.lr`, `backbone_options.width`): each value is a configuration of its own."""
    paths: dict[str, None] = {}
    for run in res.runs:
        for path in (run.suite.get("search") or {}).get("space") or {}:
            if not str(path).startswith("variant_options.") and path not in _SHOWN:
                paths[str(path)] = None
    return tuple(paths)


def _variant_key(row: pd.Series, paths: tuple[str, ...] = ()) -> tuple[str, str]:
    """(label, options JSON): one row per configuration, searched values included."""
    if not paths:
        return str(row["label"]), str(row["options"])
    opts = json.loads(row["options"]) if row["options"] else {}
    spec = json.loads(row["spec"]) if isinstance(row.get("spec"), str) else {}
    for path in paths:
        value: Any = spec
        for part in path.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if value is not None:
            opts[path] = value
    return str(row["label"]), json.dumps(opts, sort_keys=True)


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
        row.update(_paper(res.reference, dataset, trials.iloc[0], labels[vkey], row))
        rows.append(row)
    table = (
        pd.DataFrame(rows)
        .sort_values("top1_mean", ascending=False, na_position="last", kind="stable")
        .reset_index(drop=True)
    )
    table["p_holm"] = stats.holm(list(table["p_value"]))
    sources = tuple(
        dict.fromkeys(str(r.get("source")) for r in res.reference if _ref_col(r, "top1") in table)
    )
    bn_ref = _bn_reference(res.reference, dataset, df.iloc[0], batch_size)
    target: float | None
    if bn_ref is not None:
        target, source = float(bn_ref["top1"]), "reference"
    else:
        base_top1 = _baseline_top1(table, labels.get(baseline) if baseline else None)
        target, source = _target(res.target_accuracy, table, base_top1)
    table = _add_targets(table, df, res.epochs, labels, target)
    sel = set(table["best_selection"].dropna())
    selection = "mixed" if len(sel) > 1 else (sel.pop() if sel else "val")
    base_label = labels.get(baseline) if baseline else None
    members = {labels[k]: tuple(done[done["variant_key"] == k]["trial_id"]) for k in labels}
    taus = {
        labels[k]: tau for k in labels if (tau := _tau(df[df["variant_key"] == k], res)) is not None
    }
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
        target_note=f"BN in {bn_ref.get('source')}" if bn_ref is not None else "",
        smoke=smoke_text(res, set(df["run"])),
        sources=sources,
        best_config=_best_config(table, df, labels, res),
        taus=taus,
        devices=_devices(df),
    )


def _devices(df: pd.DataFrame) -> tuple[int, str] | None:
    """(devices, stats_scope) of a table's trials when they ran on several devices."""
    specs = [json.loads(s) for s in df["spec"] if isinstance(s, str)] if "spec" in df else []
    found = {(int(s.get("devices", 1)), str(s.get("stats_scope", "device"))) for s in specs}
    if len(found) != 1:
        return None
    (n, scope) = found.pop()
    return (n, scope) if n > 1 else None


def smoke_text(res: Results, runs: set[str] | None = None) -> str | None:
    """Why the runs (all, or those in `runs`) are smoke runs: the caps they ran with."""
    caps: dict[str, None] = {}
    for run in res.runs:
        if runs is not None and str(run.path) not in runs:
            continue
        if run.suite.get("max_epochs") is not None:
            caps[f"--max-epochs {run.suite['max_epochs']}"] = None
        if run.suite.get("limit_batches") is not None:
            caps[f"--limit-batches {run.suite['limit_batches']}"] = None
    return ", ".join(caps) or None


def _bn_reference(
    refs: tuple[dict, ...], dataset: Any, trial: pd.Series, batch_size: Any
) -> dict | None:
    """The first reference row (suite order) giving BN's top-1 on this data set and backbone."""
    names = {str(trial["backbone_label"]).lower(), str(trial["backbone"]).lower()}
    for ref in refs:
        if (
            str(ref.get("dataset")).lower() == str(dataset).lower()
            and str(ref.get("backbone")).lower() in names
            and str(ref.get("variant")).lower() == BASELINE
            and ref.get("batch_size") in (None, batch_size)
            and ref.get("top1") is not None
        ):
            return ref
    return None


def _tau(trials: pd.DataFrame, res: Results) -> float | None:
    """The FCT threshold of a UBN-like row: its `tau` option, else the `tau` its layers log in
    `diagnostics()`; None for other layers, and for records written before UBN logged it."""
    for opts in trials["options"]:
        tau = (json.loads(opts) if opts else {}).get("tau")
        if isinstance(tau, int | float):
            return float(tau)
    for tid in trials["trial_id"]:
        for layers in res.diagnostics.get(tid, {}).values():
            for diag in layers.values():
                if "tau" in diag and diag["tau"] is not None:
                    return float(diag["tau"])
    return None


def _best_config(
    table: pd.DataFrame, df: pd.DataFrame, labels: dict[tuple[str, str], str], res: Results
) -> str | None:
    """A search's best configuration: the row with the best mean of the search metric over its
    completed trials (pruned and failed trials never count), metric as the suite names it."""
    search = next((r.suite["search"] for r in res.runs if r.suite.get("search")), None)
    if not search or len(table) < 2:
        return None
    metric = str(search.get("metric", "val_top1"))
    column = f"final_{metric}"
    if column not in df:
        return None
    done = df[df["status"] == "completed"]
    scores = {}
    for key, label in labels.items():
        values = pd.to_numeric(done[done["variant_key"] == key][column], errors="coerce").dropna()
        if not values.empty:
            scores[label] = float(values.mean())
    if not scores:
        return None
    pick = max if search.get("mode", "max") == "max" else min
    best = pick(scores, key=scores.__getitem__)
    row = table.set_index("variant").loc[best]
    where = "validation" if metric.startswith("val") else "the TEST split (optimistic)"
    text = (
        f"Best configuration (chosen on {where}, `{metric}` {search.get('mode', 'max')}, over "
        f"completed trials only): **{best}**, mean {metric} {scores[best]:.2f} over "
        f"{int(row['n'])} seed(s); its final test top-1 {row['top1_mean']:.2f}."
    )
    # A search over several layers: the best configuration of each, too.
    layer = {labels[k]: str(v) for k, v in zip(df["variant_key"], df["variant"], strict=True)}
    per: dict[str, str] = {}
    for label in sorted(scores, key=scores.__getitem__, reverse=pick is max):
        per.setdefault(layer[label], label)
    if len(per) > 1:
        text += (
            " Best per layer: "
            + "; ".join(
                f"{name}: **{label}** ({metric} {scores[label]:.2f})" for name, label in per.items()
            )
            + "."
        )
    return text


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
    ci = stats.mean_ci(top1)
    row: dict[str, Any] = {
        "variant": label,
        "n": len(top1),
        "diverged": int((trials["status"] == "diverged").sum()),
        "not_finished": int((~trials["status"].isin(["completed", "diverged"])).sum()),
        "top1_mean": stats.mean(top1),
        "top1_std": stats.sample_std(top1),
        "top1_ci_low": ci.low,
        "top1_ci_high": ci.high,
        "top1_ci_method": ci.method,
        "top5_mean": stats.mean([float(v) for v in done["final_test_top5"].dropna()]),
    }
    row.update(_vs_baseline(_by_seed(done), base, is_base))
    row.update(_best_epoch(done, res.epochs))
    row.update(_cost(done))
    row.update(_frozen(done, res))
    row["source"] = _source(trials)
    row["environments"] = environment_difference(done)
    return row


def environment_difference(done: pd.DataFrame) -> str | None:
    """How the execution environments of a row's completed trials differ ("num_threads 1 / 2"),
    or None when they ran in one (or recorded none). A row's seeds that ran in different
    environments differ by the environment too, not only by the seed (docs/reproducibility.md)."""
    if "environment" not in done:
        return None
    envs = sorted({str(e) for e in done["environment"].dropna()})
    if len(envs) < 2:
        return None
    parsed = [json.loads(e) if e.startswith("{") else {} for e in envs]
    keys = sorted({k for env in parsed for k in env})
    diffs = []
    for k in keys:
        values = list(dict.fromkeys(json.dumps(env.get(k)) for env in parsed))
        if len(values) > 1:
            diffs.append(f"{k} {' / '.join(v.strip(chr(34)) for v in values)}")
    if "mixed" in envs:
        diffs.append("a trial resumed in another environment")
    return "; ".join(diffs) or f"{len(envs)} environments"


def _frozen(done: pd.DataFrame, res: Results) -> dict[str, Any]:
    """Share of layer-steps normalized with frozen running statistics (UBN's FCT firing), from
    the last epoch's layer diagnostics (`frozen_steps` and `batch_steps` count from step 1);
    NaN for layers that log no such counts."""
    frozen = total = 0.0
    found = False
    for tid in done["trial_id"]:
        epochs = res.diagnostics.get(tid, {})
        if not epochs:
            continue
        for diag in epochs[max(epochs)].values():
            if diag.get("frozen_steps") is None or diag.get("batch_steps") is None:
                continue
            found = True
            frozen += float(diag["frozen_steps"])
            total += float(diag["frozen_steps"]) + float(diag["batch_steps"])
    share = frozen / total if found and total > 0 else math.nan
    return {"frozen_share": share, "frozen_steps": frozen if found else math.nan}


def _vs_baseline(mine: dict[int, float], base: dict[int, float], is_base: bool) -> dict:
    nan = math.nan
    if is_base or not base:
        note = "baseline" if is_base else "no BN baseline"
        return {
            "diff_vs_bn": nan,
            "diff_ci_low": nan,
            "diff_ci_high": nan,
            "p_value": nan,
            "n_pairs": 0,
            "test_note": note,
        }
    r = stats.paired_test(mine, base)
    return {
        "diff_vs_bn": r.mean_diff,
        "diff_ci_low": r.diff_low,
        "diff_ci_high": r.diff_high,
        "p_value": nan if r.p_value is None else r.p_value,
        "n_pairs": r.n_pairs,
        "test_note": r.note,
    }


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
    # Peak memory only where the trial measured its own (records carry the method); older
    # records hold the worker process's lifetime RSS, which depends on trial order.
    measured = done[done["peak_mem_method"].notna()]
    mem = [float(v) for v in pd.to_numeric(measured["peak_mem_mb"], errors="coerce").dropna()]
    methods = sorted(set(measured["peak_mem_method"].astype(str)))
    return {
        "wall_time_s_mean": stats.mean(col("wall_time_s")),
        "wall_time_s_std": stats.sample_std(col("wall_time_s")),
        "train_time_s_mean": stats.mean(col("train_time_s")),
        "train_time_s_std": stats.sample_std(col("train_time_s")),
        "images_per_s_mean": stats.mean(col("images_per_s")),
        "images_per_s_std": stats.sample_std(col("images_per_s")),
        "peak_mem_mb_mean": stats.mean(mem),
        "peak_mem_mb_std": stats.sample_std(mem),
        "peak_mem_method": ",".join(methods) or None,
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


def _ref_col(ref: dict, what: str) -> str:
    """The rows' column of one source's published number: `paper_top1[UBN Table 3]`."""
    return f"paper_{what}[{ref.get('source')}]"


def _paper(
    refs: tuple[dict, ...], dataset: str, trial: pd.Series, label: str, row: dict[str, Any]
) -> dict[str, Any]:
    """Every source's reference numbers for this row (matched by label, else registry name):
    `paper_top1[src]`, `paper_top5[src]` and `diff_vs_paper[src]` (our mean minus theirs)."""
    names = {str(trial["backbone_label"]).lower(), str(trial["backbone"]).lower()}
    out: dict[str, Any] = {}
    for want in (label.lower(), str(trial["variant"]).lower()):
        for ref in refs:
            if (
                str(ref.get("dataset")).lower() == str(dataset).lower()
                and str(ref.get("backbone")).lower() in names
                and str(ref.get("variant")).lower() == want
                and ref.get("batch_size") in (None, trial["batch_size"])
                and ref.get("top1") is not None
                and _ref_col(ref, "top1") not in out
            ):
                top1 = float(ref["top1"])
                out[_ref_col(ref, "top1")] = top1
                out[_ref_col(ref, "top5")] = (
                    math.nan if ref.get("top5") is None else float(ref["top5"])
                )
                out[f"diff_vs_paper[{ref.get('source')}]"] = row["top1_mean"] - top1
    return out


def _baseline_top1(table: pd.DataFrame, label: str | None) -> float | None:
    """BN's mean final top-1 in this table (None without a completed BN row)."""
    if label is None:
        return None
    value = table.set_index("variant")["top1_mean"].get(label)
    # NOTE: unrounded: BN's own seeds must reach BN's target (the report rounds for display).
    return None if value is None or pd.isna(value) else float(value)


def _target(
    suite_target: float | None, table: pd.DataFrame, base_top1: float | None = None
) -> tuple[float | None, str]:
    """The suite's target, else BN's final top-1 in this run (UBN Table 8), else 95% of the
    best mean final top-1."""
    if suite_target is not None:
        return float(suite_target), "suite"
    if base_top1 is not None:
        return base_top1, "baseline"
    best = table["top1_mean"].max()
    if pd.isna(best):
        return None, "default"
    return DEFAULT_TARGET_FRACTION * float(best), "default"


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
        secs = [h.train_time_s for h in reached if h.train_time_s is not None]
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
