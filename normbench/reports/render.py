"""Markdown and CSV renderings of the leaderboards. Pure text: no clock, no absolute paths, so
the same results always give the same file (the golden tests rely on it)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from normbench.contract import CLASSIFICATION, Metric
from normbench.provenance import short_commit
from normbench.reports import stats
from normbench.reports.data import Results
from normbench.reports.leaderboard import DEFAULT_TARGET_FRACTION, DIFF, Table, smoke_text
from normbench.reports.numbers import DASH, number


def acc(x: Any, signed: bool = False) -> str:
    """An accuracy in percent with 2 decimals ("—" when missing)."""
    return number(x, "+.2f" if signed else ".2f")


def metric_text(x: Any, m: Metric, signed: bool = False) -> str:
    """A value of metric `m`: a percent with 2 decimals (as `acc`), else 4 significant digits."""
    if m.unit == "%":
        return acc(x, signed)
    return number(x, "+.4g" if signed else ".4g")


def p_text(row: Mapping[str, Any]) -> str:
    """The paired test's p-value, or why there is none."""
    if isinstance(row.get("test_note"), str):
        return row["test_note"]
    p = row["p_value"]
    return DASH if pd.isna(p) else ("<0.001" if p < 0.001 else number(p, ".3f"))


def _params(p: Any) -> str:
    return DASH if p is None or pd.isna(p) else f"{number(p / 1e6, '.2f')}M"


def _best_header(selection: str, label: str = "top-1") -> str:
    return {
        "val": f"best {label} @ epoch (val-selected)",
        "test": f"best-on-test {label} @ epoch",
    }.get(selection, f"best {label} @ epoch")


def _best_cell(row: Mapping[str, Any], table_selection: str, h: Metric) -> str:
    if pd.isna(row[f"best_{h.name}_mean"]):
        return DASH
    text = f"{metric_text(row[f'best_{h.name}_mean'], h)} @ {number(row['best_epoch_mean'])}"
    if table_selection == "mixed" and row["best_selection"] != "val":
        text += " (best-on-test)"
    return text


def _ci(low: Any, high: Any, method: Any, h: Metric) -> str:
    if low is None or pd.isna(low):
        return DASH
    text = f"[{metric_text(low, h)}, {metric_text(high, h)}]"
    return text + " (bootstrap)" if method == stats.BOOTSTRAP_METHOD else text


def _spread(mean: Any, std: Any, fmt: str = ".1f") -> str:
    """`mean ± std` over seeds (the mean alone for one seed)."""
    if mean is None or pd.isna(mean):
        return DASH
    return number(mean, fmt) + ("" if std is None or pd.isna(std) else f" ± {number(std, fmt)}")


def holm_text(row: Mapping[str, Any]) -> str:
    p = row.get("p_holm")
    if p is None or pd.isna(p):
        return DASH
    return "<0.001" if p < 0.001 else number(p, ".3f")


def _frozen_text(row: Mapping[str, Any]) -> str:
    share = row.get("frozen_share")
    if share is None or pd.isna(share):
        return DASH
    return f"{number(100 * share, '.1f')}%"


def table_markdown(t: Table) -> str:
    """One leaderboard as a Markdown table; optional columns only when they say something."""
    rows = t.rows
    h, shown = t.headline, [t.scoring.metric(n) for n in t.scoring.shown]
    source = (rows["source"] != "built-in").any()
    frozen = rows["frozen_share"].notna().any()
    head = [
        "variant",
        "n",
        f"{h.label} (final)",
        "std",
        "95% CI",
        *(m.label for m in shown),
        f"Δ vs {versus(t)} [95% CI]",
        "p (paired t)",
        "p (Holm)",
        "pairs",
        _best_header(t.selection, h.label),
    ]
    for k, _ in enumerate(t.sources, 1):
        head += [f"ref [{k}] {m.label}" for m in (h, *shown)] + [f"Δ vs [{k}]"]
    head += ["frozen (FCT)"] if frozen else []
    head += [
        "epochs→target",
        "train time→target (s)",
        "train time (s)",
        "img/s",
        "peak mem (MB)",
        "params",
        "diverged",
    ]
    head += ["source"] if source else []
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, r in rows.iterrows():
        name = f"**{r['variant']}**" if r["variant"] == t.baseline else r["variant"]
        diff = metric_text(r[DIFF], h, signed=True)
        if not pd.isna(r["diff_ci_low"]):
            low, high = (metric_text(r[k], h, True) for k in ("diff_ci_low", "diff_ci_high"))
            diff += f" [{low}, {high}]"
        n = h.name
        cells = [
            name,
            str(r["n"]),
            metric_text(r[f"{n}_mean"], h),
            metric_text(r[f"{n}_std"], h),
            _ci(r[f"{n}_ci_low"], r[f"{n}_ci_high"], r[f"{n}_ci_method"], h),
            *(metric_text(r[f"{m.name}_mean"], m) for m in shown),
            diff,
            p_text(r),
            holm_text(r),
            str(r["n_pairs"]) if r["n_pairs"] else DASH,
            _best_cell(r, t.selection, h),
        ]
        for src in t.sources:
            cells += [metric_text(r.get(f"paper_{m.name}[{src}]"), m) for m in (h, *shown)]
            cells += [metric_text(r.get(f"diff_vs_paper[{src}]"), h, signed=True)]
        cells += [_frozen_text(r)] if frozen else []
        cells += [
            f"{number(r['epochs_to_target_mean'])} ({r['reached']})",
            number(r["time_to_target_s_mean"]),
            _spread(r["train_time_s_mean"], r["train_time_s_std"]),
            _spread(r["images_per_s_mean"], r["images_per_s_std"], ".0f"),
            _spread(r["peak_mem_mb_mean"], r["peak_mem_mb_std"]),
            _params(r["params"]),
            _diverged(r),
        ]
        cells += [r["source"]] if source else []
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def table_notes(t: Table) -> list[str]:
    """Sentences under a table: sources, the FCT's firing, what the memory column measured."""
    out = [
        f"[{k}] {src}" + ("  " if k < len(t.sources) else "") for k, src in enumerate(t.sources, 1)
    ]
    out += [""] if out else []
    for _, r in t.rows.iterrows():
        if r["n"] and not pd.isna(r["frozen_share"]) and r["frozen_steps"] == 0:
            tau = t.taus.get(str(r["variant"]))
            at = f" at τ = {tau:g}" if tau is not None else ""
            out += [
                f"**The FCT threshold never fired for {r['variant']}**{at}: in all {r['n']} "
                "seed(s) every layer normalized every training step with batch statistics, "
                "so this row measures UBN without its feature-condensation threshold.",
                "",
            ]
    for _, r in t.rows.iterrows():
        if isinstance(r.get("environments"), str):
            out += [
                f"**The seeds of {r['variant']} ran in different execution environments** "
                f"({r['environments']}): its spread and its comparisons include the "
                "environment's effect, not only the seeds' (docs/reproducibility.md).",
                "",
            ]
    if t.baseline is None and (t.rows["n"] > 0).any():
        out += [
            f"No row of this table is the baseline `{t.baseline_name}` (the suite's `baseline` "
            "or `--baseline`), so Δ, p and pairs compare nothing here.",
            "",
        ]
    methods = {str(m) for m in t.rows["peak_mem_method"].dropna()}
    if (t.rows["n"] > 0).any() and not methods:
        out += [
            "Peak memory: these records predate per-trial measurement (they hold the worker "
            "process's lifetime peak, which grows with trial order), so the column is empty.",
            "",
        ]
    elif methods:
        how = ", ".join(_MEM_METHODS.get(m, m) for m in sorted(methods))
        out += [f"Peak memory measured as: {how}.", ""]
    if t.best_config:
        out += [t.best_config, ""]
    return out


_MEM_METHODS = {
    "cpu_profiler_step_peak": "CPU, torch profiler peak of the first training steps plus "
    "parameters, buffers, gradients and optimiser state (data set not counted)",
    "cuda_max_allocated": "CUDA `max_memory_allocated` since the trial started",
}


def _diverged(r: Mapping[str, Any]) -> str:
    text = str(r["diverged"])
    return text + (f" (+{r['not_finished']} not finished)" if r["not_finished"] else "")


def versus(t: Table) -> str:
    """What a table's Δ columns compare with, as its headers name it: "BN" for bn (the
    default), else the baseline row's label (the suite's `baseline` or `--baseline`), or
    "none" when no row of this table is the baseline."""
    return "none" if t.baseline is None else baseline_text(t.baseline)


def baseline_text(name: str) -> str:
    """A baseline as the report writes it: "BN" for bn, else its label or name as given."""
    return "BN" if name.lower() == "bn" else name


def target_line(t: Table) -> str:
    if t.scoring != CLASSIFICATION:
        return _task_target_line(t)
    if t.target is None:
        return "Target accuracy: none (no completed trial)."
    base = versus(t)
    if t.target_source == "reference":
        return (
            f"Target accuracy: {acc(t.target)}% test top-1 (the reference top-1 of "
            f"{t.target_note}: time for each layer to reach {base}'s published accuracy, "
            "as UBN Table 8)."
        )
    if t.target_source == "suite":
        return f"Target accuracy: {acc(t.target)}% test top-1 (`target_accuracy` of the suite)."
    if t.target_source == "baseline":
        return (
            f"Target accuracy: {acc(t.target)}% test top-1 ({base}'s mean final top-1 in this "
            f"table: time for each layer to reach {base}'s final accuracy, as UBN Table 8; the "
            f"suite sets no target and gives no {base} reference)."
        )
    return (
        f"Target accuracy: {acc(t.target)}% test top-1 (default: "
        f"{DEFAULT_TARGET_FRACTION:.0%} of the best mean final top-1 in this table; "
        "the suite sets none)."
    )


def _task_target_line(t: Table) -> str:
    """The target sentence of a task other than classification: its headline, its unit and
    its direction."""
    h = t.headline
    way = "at or above" if h.higher_is_better else "at or below"
    what = f"test {h.label}" + (f" ({h.unit})" if h.unit and h.unit != "%" else "")
    if t.target is None:
        return f"Target {what}: none (no completed trial)."
    value = metric_text(t.target, h) + ("%" if h.unit == "%" else "")
    why = {
        "reference": f"the reference {h.label} of {t.target_note}",
        "suite": "`target_accuracy` of the suite",
        "baseline": f"{versus(t)}'s mean final {h.label} in this table",
        "default": f"within 5% of the best mean final {h.label} in this table",
    }[t.target_source]
    return f"Target {what}: {value} ({why}); a trial reaches it at its first epoch {way} it."


def task_legend(tables: list[Table]) -> list[str]:
    """How to read the tables of tasks other than classification: their headline in place of
    top-1, with its unit and direction (the legend above is classification's)."""
    out: list[str] = []
    for task, scoring in dict((t.task, t.scoring) for t in tables).items():
        if scoring == CLASSIFICATION:
            continue
        h = scoring.best
        better = "higher" if h.higher_is_better else "lower"
        unit = f", in {h.unit}" if h.unit else ""
        shown = ", ".join(scoring.metric(m).label for m in scoring.shown)
        out += [
            f"- **Task {task}**: the headline is **{h.label}**{unit}, **{better} is better**"
            + (f" ({h.description})" if h.description else "")
            + "; it takes top-1's place in every column, rows sort best first, the best epoch "
            "and time-to-target follow its direction, and ranks give 1 to the best. "
            "Δ is variant − baseline in its unit (the baseline its header names)"
            + (" (negative is better)" if not h.higher_is_better else "")
            + (f". Other columns: {shown} (final, mean over seeds)." if shown else ".")
        ]
    return out + [""] if out else []


def header(res: Results) -> list[str]:
    """What the run was: suite, description, how it was run, dates, device, commit, trials."""
    suites = [r.suite for r in res.runs if r.suite]
    names = list(dict.fromkeys(str(s.get("name")) for s in suites)) or [res.runs[0].path.name]
    smoke = smoke_text(res)
    title = f"# normbench report: {' + '.join(names)}"
    out = [title + (f" (SMOKE RUN: {smoke})" if smoke else ""), ""]
    if smoke:
        out += [
            f"**Smoke run** ({smoke}): a shortened check that the suite runs, not a result. "
            "Its numbers are not comparable with the suite's full length or with papers.",
            "",
        ]
    for text in dict.fromkeys(str(s["description"]) for s in suites if s.get("description")):
        out += [f"Suite description: {text}", ""]
    out += _as_run(res)
    for run in res.runs:
        env = run.environment
        commit = short_commit(env.get("git_commit"))
        out.append(
            f"- Run `{run.path.name}`: started {env.get('started', 'unknown')}, device "
            f"{env.get('device', 'unknown')} on {env.get('hostname', 'unknown host')} "
            f"({env.get('platform', 'unknown platform')}), git {commit}, torch "
            f"{(env.get('versions') or {}).get('torch', 'unknown')}"
        )
    counts = res.trials["status"].value_counts() if not res.trials.empty else {}
    detail = ", ".join(f"{n} {s}" for s, n in sorted(dict(counts).items()))
    out.append(f"- Trials: {len(res.trials)} ({detail or 'none'})")
    last = _last_result(res)
    out += [f"- Last stored result: {last}"] if last else []
    return out + [""]


def _as_run(res: Results) -> list[str]:
    """The run as it was run: epochs, seeds and batch caps from the trials, and the overrides."""
    df = res.trials
    if df.empty:
        return []
    epochs = sorted({int(e) for e in df["epochs_planned"].dropna()})
    seeds = sorted({int(x) for x in df["seed"].dropna()})
    limits = sorted({int(x) for x in df["limit_batches"].dropna()})
    limit = ", ".join(map(str, limits)) + " batches/epoch" if limits else "full epochs"
    out = [
        f"- As run: {', '.join(map(str, epochs))} epoch(s) per trial, {len(seeds)} seed(s) "
        f"({', '.join(map(str, seeds))}), {limit}"
    ]
    overrides = [o for run in res.runs for o in (run.suite.get("overrides") or [])]
    if overrides:
        out.append(
            "- Overrides: " + ", ".join(f"`{o}`" for o in dict.fromkeys(map(str, overrides)))
        )
    return out


def _last_result(res: Results) -> str | None:
    """When the newest epoch record was written (the runner stamps `finished_at`), UTC."""
    if "finished_at" not in res.epochs:
        return None
    stamps = pd.to_numeric(res.epochs["finished_at"], errors="coerce").dropna()
    if stamps.empty:
        return None
    return pd.Timestamp(stamps.max(), unit="s", tz="UTC").strftime("%Y-%m-%dT%H:%M:%S+0000")


def legend(baseline: str) -> str:
    """How to read the tables, naming `baseline` (the suite's `baseline` or `--baseline`)."""
    base = baseline_text(baseline)
    return f"""## How to read the tables

- **variant**: the suite's label, with the layer's options (and, in a search, the sampled
  values) when the label does not show them; the baseline ({base}) is in bold. **n**: completed
  seeds the statistics use; in a search, seeds are pooled only within one configuration.
- **top-1 (final)**: mean final-epoch test top-1 (%) over the n seeds. **std**: sample
  standard deviation (ddof=1), "—" for n=1. **top-5**: mean final-epoch test top-5.
- **95% CI**: Student's t-interval of the mean over seeds (scipy.stats), which holds at the 3
  seeds suites use; from {stats.BOOTSTRAP_MIN_N} seeds on a percentile bootstrap (RNG seed
  {stats.BOOTSTRAP_SEED}, {stats.BOOTSTRAP_RESAMPLES} resamples), marked "(bootstrap)".
- **Δ vs {base} [95% CI]**: the header names each table's baseline ({base}: the suite's
  `baseline` or `normbench report --baseline`, bn by default), or says "none" when no row of
  that table is the baseline; mean over matching seeds of (variant − {base}) final top-1, in
  points, with the t-interval of that mean difference (the effect size). **p (paired t)**: the raw
  two-sided paired t-test (scipy.stats.ttest_rel) of one row against {base}; **p (Holm)**: the
  same p-values adjusted for the table's number of comparisons with {base} (Holm, statsmodels);
  read "significant" only off the Holm column. **pairs**: matching seeds. Below
  {stats.MIN_PAIRS} pairs no p-value is given: too few seeds for any claim.
- **best top-1 @ epoch**: mean test top-1 at the epoch with the best *validation* top-1, and
  the mean of that epoch. Runs without a validation split fall back to the best *test* epoch,
  labelled "best-on-test": an optimistic number, shown only for comparison with papers.
- **ref [k] top-1 / top-5**, **Δ vs [k]**: the numbers source [k] (listed under the table)
  publishes for this row, and our mean top-1 minus theirs; one set of columns per source.
- **frozen (FCT)**: share of UBN's layer-steps normalized with frozen running statistics
  (its feature-condensation threshold fired), over all layers and seeds; 0% means UBN never
  used it.
- **epochs→target** / **train time→target (s)**: first epoch (and the training time up to
  it, evaluation excluded) at which a seed's test top-1 reached the table's target, mean over
  the seeds that did (reached/completed in brackets); UBN Table 8 compares norms this way.
- **train time (s)**: training time of the whole trial (evaluation and probes excluded);
  **img/s**: training images per second; both mean ± std over seeds (wall times on a shared
  machine vary). **peak mem (MB)**: the trial's own peak memory (how it was measured is said
  under the table); **params**: trainable parameters.
- **diverged**: seeds that diverged (listed below with their reason).
- Statistics use completed trials only; diverged, failed, pruned, incomplete (finished, but
  epoch lines lost), running and interrupted trials are listed under "Did not finish" with
  their reason. "Notes" lists what happened to trials on the way (e.g. an invalid
  checkpoint moved aside and the trial restarted). Accuracies are in %, 2 decimals.
- **source**: where a variant not built into normbench came from (a plugin file or package).
"""


def markdown(
    res: Results,
    tables: list[Table],
    dnf: pd.DataFrame,
    plots: Mapping[str, list[Path]],
    ranking: list[str] | None = None,
) -> str:
    """The whole report; `plots` maps a table slug (or "search", "ranking") to image paths,
    relative; `ranking` is the overall ranking's Markdown, when there is one."""
    out = header(res) + [legend(res.baseline)] + task_legend(tables)
    if not tables:
        out += ["No trials are stored in this run directory yet.", ""]
    for t in tables:
        out += [f"## {t.title}", "", target_line(t), "", table_markdown(t), ""]
        out += table_notes(t)
        out += [f"![{p.stem}]({p.as_posix()})" for p in plots.get(t.slug, [])]
        out += [""] if plots.get(t.slug) else []
    if ranking:
        out += ranking
        out += [f"![{p.stem}]({p.as_posix()})" for p in plots.get("ranking", [])] + [""]
    out += ["## Did not finish", ""]
    out += [dnf_markdown(dnf), ""]
    out += notes_markdown(res.trials)
    if plots.get("search"):
        out += ["## Search", ""]
        out += [f"![{p.stem}]({p.as_posix()})" for p in plots["search"]] + [""]
    return "\n".join(out).rstrip() + "\n"


def notes_markdown(trials: pd.DataFrame) -> list[str]:
    """A "Notes" section: each stored note of each trial, one bullet (none: no section)."""
    if trials.empty or "notes" not in trials:
        return []
    lines = []
    for _, r in trials.iterrows():
        if not isinstance(r["notes"], str):
            continue
        who = f"`{r['trial_id']}` ({r['label']}, {r['backbone_label']}, seed {r['seed']})"
        lines += [f"- {who}: {' '.join(str(n).split())}" for n in json.loads(r["notes"])]
    return ["## Notes", "", *lines, ""] if lines else []


def dnf_markdown(dnf: pd.DataFrame) -> str:
    if dnf.empty:
        return "Every trial completed."
    lines = [
        "| trial | variant | backbone | seed | status | epoch | reason |",
        "|---|---|---|---|---|---|---|",
    ]
    for _, r in dnf.iterrows():
        reason = str(r["reason"]).replace("|", "\\|").replace("\n", " ")
        lines.append(
            f"| `{r['trial_id']}` | {r['variant']} | {r['backbone']} | {r['seed']} | "
            f"{r['status']} | {r['epoch']} | {reason} |"
        )
    return "\n".join(lines)


def leaderboard_csv(tables: list[Table]) -> pd.DataFrame:
    """All leaderboards in one frame (raw numbers), keyed by the table's coordinates."""
    frames = []
    for t in tables:
        keys = {
            "dataset": t.dataset,
            "backbone": t.backbone,
            "batch_size": t.batch_size,
            "epochs": t.epochs,
            "limit_batches": t.limit_batches,
            "target": t.target,
            "target_source": t.target_source,
            "smoke": t.smoke or "",
        }
        frames.append(t.rows.assign(**keys)[[*keys, *t.rows.columns]])
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
