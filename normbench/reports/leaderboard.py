"""Leaderboards: one table per (task, dataset, backbone, batch size, length), one row per
variant.

Every statistic is over the *completed* trials of a variant (one per seed); diverged, failed,
pruned and interrupted trials are counted in the row and listed in `did_not_finish`, never
dropped silently. The headline is the task's headline metric (`Table.scoring`,
normbench.contract; classification: top-1) at the final epoch on the test split, and every
comparison reads it in its direction: rows sort best first, the best epoch is the best on
validation, time-to-target is the first epoch at least as good as the target. Row columns are
named after the metric (`top1_mean`, `rmse_mean`, ...). The best epoch is chosen on the
validation split; a trial without one falls back to best-on-test, and that is labelled
wherever it is shown.

In a search, a row is one sampled configuration (the searched values in its label): seeds
are pooled only within a configuration. The paired tests of a table against its baseline row
(bn unless the suite's `baseline` or `normbench report --baseline` names another) are one
family: their p-values are Holm-adjusted across the table's rows.

Time-to-target uses one target per table: the suite's reference headline for the baseline on
that data set and backbone when it gives one (UBN Table 8: "time to reach BN's final
accuracy"), else the suite's `target_accuracy`, else the baseline's mean final headline in the
same table (Table 8 as measured within one run), else within 5% of the table's best mean final
headline (95% of it, or 105% for a lower-is-better metric).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from normbench.contract import CLASSIFICATION, Metric, Scoring
from normbench.reports import stats
from normbench.reports.data import TABLE_KEYS, Results
from normbench.reports.numbers import number

DEFAULT_TARGET_FRACTION = 0.95  # default target: 95% of the best mean final top-1 of a table
# a row's column (and the CSV's): mean over matching seeds of (row − baseline row) headline;
# named `diff_vs_bn` before the baseline could be another layer (docs/tasks.md, Baseline)
DIFF = "diff_vs_baseline"


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
    baseline: str | None  # label of the baseline row (the suite's `baseline`, bn), if any
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
    task: str = "classification"
    scoring: Scoring = CLASSIFICATION  # the task's metrics; `rows` columns follow its headline
    baseline_name: str = "bn"  # the baseline asked for (suite or --baseline), found or not

    @property
    def headline(self) -> Metric:
        return self.scoring.best

    @property
    def title(self) -> str:
        epochs = f"{self.epochs} epoch{'s' if self.epochs != 1 else ''}"
        batch = f"batch {self.batch_size}"
        if self.devices is not None and self.batch_size is not None:
            n, scope = self.devices
            where = "per device" if scope == "device" else "over all devices"
            batch += f" per device x {n} devices ({n * self.batch_size} a step, statistics {where})"
        parts = [self.dataset, self.backbone, batch, epochs]
        if self.task != "classification":
            parts.insert(0, self.task)
        if self.smoke:
            parts.append(f"SMOKE RUN ({self.smoke})")
        return " · ".join(str(p) for p in parts)

    @property
    def slug(self) -> str:
        s = f"{self.dataset}_{self.backbone}_b{self.batch_size}_e{self.epochs}"
        s = s if self.task == "classification" else f"{self.task}_{s}"
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
    keys = df[list(TABLE_KEYS)].astype(object).where(df[list(TABLE_KEYS)].notna(), None)
    groups: dict[tuple[Any, ...], list[int]] = {}
    for idx, key in zip(df.index, map(tuple, keys.values.tolist()), strict=True):
        groups.setdefault(key, []).append(idx)
    tables = [_table(key, df.loc[idx], res) for key, idx in groups.items()]
    return sorted(
        tables,
        key=lambda t: (
            t.task != "classification",
            t.task,
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
    task, dataset, backbone, batch_size, epochs, limit = key
    scoring = res.scoring(str(task))
    h = scoring.best
    labels = _display_labels(df)
    done = df[df["status"] == "completed"]
    baseline = _baseline(df, labels, res.baseline)
    base_by_seed = _by_seed(done[done["variant_key"] == baseline], h) if baseline else {}
    rows = []
    for vkey in dict.fromkeys(df["variant_key"]):
        trials = df[df["variant_key"] == vkey]
        row = _row(labels[vkey], trials, res, base_by_seed, vkey == baseline, scoring)
        row.update(_paper(res.reference, dataset, trials.iloc[0], row, scoring))
        rows.append(row)
    table = (
        pd.DataFrame(rows)
        .sort_values(
            f"{h.name}_mean", ascending=not h.higher_is_better, na_position="last", kind="stable"
        )
        .reset_index(drop=True)
    )
    table["p_holm"] = stats.holm(list(table["p_value"]))
    sources = tuple(
        dict.fromkeys(str(r.get("source")) for r in res.reference if _ref_col(r, h.name) in table)
    )
    bn_ref = _baseline_reference(res, dataset, df.iloc[0], batch_size, h.name)
    target: float | None
    if bn_ref is not None:
        target, source = ref_value(bn_ref, h.name), "reference"
    else:
        base_value = _baseline_value(table, labels.get(baseline) if baseline else None, h)
        target, source = _target(res.target_accuracy, table, h, base_value)
    table = _add_targets(table, df, res.epochs, labels, target, h)
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
        target_note=_reference_note(bn_ref),
        smoke=smoke_text(res, set(df["run"])),
        sources=sources,
        best_config=_best_config(table, df, labels, res),
        taus=taus,
        devices=_devices(df),
        task=str(task),
        scoring=scoring,
        baseline_name=res.baseline,
    )


def _reference_note(ref: dict | None) -> str:
    """Whose reference number a table's target is: "BN in UBN Table 3"."""
    if ref is None:
        return ""
    name = str(ref.get("variant"))
    return f"{'BN' if name.lower() == 'bn' else name} in {ref.get('source')}"


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


def ref_value(ref: dict, metric: str) -> float | None:
    """A reference row's published number for `metric`: under `metrics`, or (classification's
    `top1`, `top5`) a key of its own."""
    value = (ref.get("metrics") or {}).get(metric, ref.get(metric))
    return None if value is None else float(value)


def _baseline_reference(
    res: Results, dataset: Any, trial: pd.Series, batch_size: Any, metric: str
) -> dict | None:
    """The first reference row (suite order) giving the baseline's headline on this data set
    and backbone."""
    names = {str(trial["backbone_label"]).lower(), str(trial["backbone"]).lower()}
    for ref in res.reference:
        if (
            str(ref.get("dataset")).lower() == str(dataset).lower()
            and str(ref.get("backbone")).lower() in names
            and str(ref.get("variant")).lower() == res.baseline.lower()
            and ref.get("batch_size") in (None, batch_size)
            and ref_value(ref, metric) is not None
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
    h = res.scoring(str(df["task"].iloc[0])).best
    text = (
        f"Best configuration (chosen on {where}, `{metric}` {search.get('mode', 'max')}, over "
        f"completed trials only): **{best}**, mean {metric} {number(scores[best], '.2f')} over "
        f"{int(row['n'])} seed(s); its final test {h.label} "
        f"{number(row[f'{h.name}_mean'], '.2f')}."
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
                f"{name}: **{label}** ({metric} {number(scores[label], '.2f')})"
                for name, label in per.items()
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
    return number(v, ".4g") if isinstance(v, float) else str(v)


def _baseline(
    df: pd.DataFrame, labels: dict[tuple[str, str], str], name: str
) -> tuple[str, str] | None:
    """The baseline row (the suite's `baseline`, default bn): the row labelled `name` in the
    suite first, then the row the table shows as `name` (`gn(num_groups=8)`), else the first
    row of the variant registered as `name`."""
    for k in labels:
        if k[0].lower() == name.lower():
            return k
    for k, shown in labels.items():
        if shown.lower() == name.lower():
            return k
    rows = df[df["variant"].astype(str).str.lower() == name.lower()]
    return _variant_key(rows.iloc[0]) if not rows.empty else None


def baseline_names(tables: list[Table], res: Results) -> list[str]:
    """Every name `baseline` may take: the labels the tables show, then the suites' labels
    and the registry names of their variants (first seen first, case kept)."""
    names = [str(v) for t in tables for v in t.rows["variant"]]
    for col in ("label", "variant"):
        names += [str(v) for v in res.trials.get(col, [])]
    seen: dict[str, str] = {}
    for n in names:
        seen.setdefault(n.lower(), n)
    return list(seen.values())


def _by_seed(trials: pd.DataFrame, h: Metric) -> dict[int, float]:
    """Final test headline per seed (trials without a seed or a final number are left out)."""
    pairs = zip(trials["seed"], _column(trials, f"final_test_{h.name}"), strict=True)
    return {int(s): float(v) for s, v in pairs if not pd.isna(s) and not pd.isna(v)}


def _column(df: pd.DataFrame, name: str) -> pd.Series:
    """A numeric column of `df`, all NaN when it has none (a task's metric no trial stored)."""
    if name not in df:
        return pd.Series([math.nan] * len(df), index=df.index, dtype=float)
    return pd.to_numeric(df[name], errors="coerce")


def _row(
    label: str,
    trials: pd.DataFrame,
    res: Results,
    base: dict[int, float],
    is_base: bool,
    scoring: Scoring,
) -> dict[str, Any]:
    h = scoring.headline
    done = trials[trials["status"] == "completed"]
    values = [float(v) for v in _column(done, f"final_test_{h}").dropna()]
    ci = stats.mean_ci(values)
    row: dict[str, Any] = {
        "variant": label,
        "n": len(values),
        "diverged": int((trials["status"] == "diverged").sum()),
        "not_finished": int((~trials["status"].isin(["completed", "diverged"])).sum()),
        f"{h}_mean": stats.mean(values),
        f"{h}_std": stats.sample_std(values),
        f"{h}_ci_low": ci.low,
        f"{h}_ci_high": ci.high,
        f"{h}_ci_method": ci.method,
    }
    for m in scoring.shown:
        row[f"{m}_mean"] = stats.mean([float(v) for v in _column(done, f"final_test_{m}").dropna()])
    row.update(_vs_baseline(_by_seed(done, scoring.best), base, is_base))
    row.update(_best_epoch(done, res.epochs, scoring.best))
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
        note = "baseline" if is_base else "no baseline"
        return {
            DIFF: nan,
            "diff_ci_low": nan,
            "diff_ci_high": nan,
            "p_value": nan,
            "n_pairs": 0,
            "test_note": note,
        }
    r = stats.paired_test(mine, base)
    return {
        DIFF: r.mean_diff,
        "diff_ci_low": r.diff_low,
        "diff_ci_high": r.diff_high,
        "p_value": nan if r.p_value is None else r.p_value,
        "n_pairs": r.n_pairs,
        "test_note": r.note,
    }


def _best_epoch(done: pd.DataFrame, epochs: pd.DataFrame, h: Metric) -> dict[str, Any]:
    """Mean test headline at each trial's best-on-val epoch (best-on-test without a val split),
    best in the metric's direction."""
    tops, eps, how = [], [], set()
    test_key = f"test_{h.name}"
    for _, t in done.iterrows():
        if not pd.isna(t.get(f"best_val_{h.name}", math.nan)):
            tops.append(t[f"test_{h.name}_at_best_val"])
            eps.append(t["best_val_epoch"])
            how.add("val")
            continue
        mine = epochs[epochs["trial_id"] == t["trial_id"]]
        if test_key not in mine:
            continue
        test = pd.to_numeric(mine[test_key], errors="coerce")
        if test.dropna().empty:
            continue
        best = mine.loc[test.idxmax() if h.higher_is_better else test.idxmin()]  # the first
        tops.append(best[test_key])
        eps.append(best["epoch"])
        how.add("test")
    selection = None if not how else ("mixed" if len(how) > 1 else how.pop())
    return {
        f"best_{h.name}_mean": stats.mean([float(x) for x in tops]),
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
    refs: tuple[dict, ...], dataset: str, trial: pd.Series, row: dict[str, Any], scoring: Scoring
) -> dict[str, Any]:
    """Every source's reference numbers for this row (matched by label, else registry name):
    `paper_<m>[src]` for the headline and shown metrics (classification: `paper_top1[src]`,
    `paper_top5[src]`) and `diff_vs_paper[src]` (our mean headline minus theirs)."""
    names = {str(trial["backbone_label"]).lower(), str(trial["backbone"]).lower()}
    h = scoring.headline
    out: dict[str, Any] = {}
    for want in (str(row["variant"]).lower(), str(trial["variant"]).lower()):
        for ref in refs:
            value = ref_value(ref, h)
            if (
                str(ref.get("dataset")).lower() == str(dataset).lower()
                and str(ref.get("backbone")).lower() in names
                and str(ref.get("variant")).lower() == want
                and ref.get("batch_size") in (None, trial["batch_size"])
                and value is not None
                and _ref_col(ref, h) not in out
            ):
                for m in (h, *scoring.shown):
                    found = ref_value(ref, m)
                    out[_ref_col(ref, m)] = math.nan if found is None else found
                out[f"diff_vs_paper[{ref.get('source')}]"] = row[f"{h}_mean"] - value
    return out


def _baseline_value(table: pd.DataFrame, label: str | None, h: Metric) -> float | None:
    """The baseline's mean final headline in this table (None without a completed row)."""
    if label is None:
        return None
    value = table.set_index("variant")[f"{h.name}_mean"].get(label)
    # NOTE: unrounded: the baseline's own seeds must reach its target (the report rounds for
    # display).
    return None if value is None or pd.isna(value) else float(value)


def _target(
    suite_target: float | None, table: pd.DataFrame, h: Metric, base: float | None = None
) -> tuple[float | None, str]:
    """The suite's target, else the baseline's final headline in this run (UBN Table 8), else
    within 5% of the best mean final headline (95% of it; 105% when lower is better)."""
    if suite_target is not None:
        return float(suite_target), "suite"
    if base is not None:
        return base, "baseline"
    column = table[f"{h.name}_mean"]
    best = column.max() if h.higher_is_better else column.min()
    if pd.isna(best):
        return None, "default"
    fraction = DEFAULT_TARGET_FRACTION if h.higher_is_better else 2 - DEFAULT_TARGET_FRACTION
    return fraction * float(best), "default"


def _add_targets(
    table: pd.DataFrame,
    df: pd.DataFrame,
    epochs: pd.DataFrame,
    labels: dict[tuple[str, str], str],
    target: float | None,
    h: Metric,
) -> pd.DataFrame:
    """Epochs and wall time to first reach `target` (test headline, in its direction), mean
    over the seeds that did."""
    out: dict[str, list[Any]] = {
        k: [] for k in ("epochs_to_target_mean", "time_to_target_s_mean", "reached")
    }
    done = df[df["status"] == "completed"]
    for label in table["variant"]:
        keys = [k for k, v in labels.items() if v == label]
        trials = done[done["variant_key"].isin(keys)]
        hits = (
            [
                stats.time_to_target(
                    epochs[epochs["trial_id"] == t],
                    target,
                    f"test_{h.name}",
                    higher_is_better=h.higher_is_better,
                )
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
    text = {
        "interrupted": "interrupted (no summary line: the driver stopped mid-trial)",
        "running": "running (a normbench run holds this run directory and is training it)",
    }
    return bad["status"].map(text).fillna("no reason recorded")
