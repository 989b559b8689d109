"""Markdown and CSV renderings of the leaderboards. Pure text: no clock, no absolute paths, so
the same results always give the same file (the golden tests rely on it)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from normbench.reports import stats
from normbench.reports.data import Results
from normbench.reports.leaderboard import DEFAULT_TARGET_FRACTION, Table

DASH = "—"


def acc(x: Any, signed: bool = False) -> str:
    """An accuracy in percent with 2 decimals ("—" when missing)."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return DASH
    return f"{x:+.2f}" if signed else f"{x:.2f}"


def num(x: Any, fmt: str = ".1f") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return DASH
    return format(x, fmt)


def p_text(row: Mapping[str, Any]) -> str:
    """The paired test's p-value, or why there is none."""
    if isinstance(row.get("test_note"), str):
        return row["test_note"]
    p = row["p_value"]
    return DASH if pd.isna(p) else ("<0.001" if p < 0.001 else f"{p:.3f}")


def _params(p: Any) -> str:
    return DASH if p is None or pd.isna(p) else f"{p / 1e6:.2f}M"


def _best_header(selection: str) -> str:
    return {"val": "best top-1 @ epoch (val-selected)", "test": "best-on-test top-1 @ epoch"}.get(
        selection, "best top-1 @ epoch"
    )


def _best_cell(row: Mapping[str, Any], table_selection: str) -> str:
    if pd.isna(row["best_top1_mean"]):
        return DASH
    text = f"{acc(row['best_top1_mean'])} @ {row['best_epoch_mean']:.1f}"
    if table_selection == "mixed" and row["best_selection"] != "val":
        text += " (best-on-test)"
    return text


def table_markdown(t: Table) -> str:
    """One leaderboard as a Markdown table; optional columns only when they say something."""
    rows = t.rows
    paper = rows["paper_top1"].notna().any()
    source = (rows["source"] != "built-in").any()
    head = [
        "variant",
        "n",
        "top-1 (final)",
        "std",
        "95% CI",
        "top-5",
        "Δ vs BN",
        "p (paired t)",
        "pairs",
        _best_header(t.selection),
    ]
    head += ["paper top-1", "Δ vs paper"] if paper else []
    head += [
        "epochs→target",
        "time→target (s)",
        "wall time (s)",
        "img/s",
        "peak mem (MB)",
        "params",
        "diverged",
    ]
    head += ["source"] if source else []
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, r in rows.iterrows():
        name = f"**{r['variant']}**" if r["variant"] == t.baseline else r["variant"]
        ci = (
            DASH
            if pd.isna(r["top1_ci_low"])
            else (f"[{acc(r['top1_ci_low'])}, {acc(r['top1_ci_high'])}]")
        )
        cells = [
            name,
            str(r["n"]),
            acc(r["top1_mean"]),
            acc(r["top1_std"]),
            ci,
            acc(r["top5_mean"]),
            acc(r["diff_vs_bn"], signed=True),
            p_text(r),
            str(r["n_pairs"]) if r["n_pairs"] else DASH,
            _best_cell(r, t.selection),
        ]
        if paper:
            cells += [acc(r["paper_top1"]), acc(r["diff_vs_paper"], signed=True)]
        cells += [
            f"{num(r['epochs_to_target_mean'])} ({r['reached']})",
            num(r["time_to_target_s_mean"]),
            num(r["wall_time_s_mean"]),
            num(r["images_per_s_mean"], ".0f"),
            num(r["peak_mem_mb_mean"]),
            _params(r["params"]),
            _diverged(r),
        ]
        cells += [r["source"]] if source else []
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _diverged(r: Mapping[str, Any]) -> str:
    text = str(r["diverged"])
    return text + (f" (+{r['not_finished']} not finished)" if r["not_finished"] else "")


def target_line(t: Table) -> str:
    if t.target is None:
        return "Target accuracy: none (no completed trial)."
    if t.target_source == "suite":
        return f"Target accuracy: {acc(t.target)}% test top-1 (`target_accuracy` of the suite)."
    return (
        f"Target accuracy: {acc(t.target)}% test top-1 (default: "
        f"{DEFAULT_TARGET_FRACTION:.0%} of the best mean final top-1 in this table; "
        "the suite sets none)."
    )


def header(res: Results) -> list[str]:
    """What the run was: suite, description, dates, device, commit, trial counts."""
    suites = [r.suite for r in res.runs if r.suite]
    names = list(dict.fromkeys(str(s.get("name")) for s in suites)) or [res.runs[0].path.name]
    out = [f"# normbench report: {' + '.join(names)}", ""]
    for text in dict.fromkeys(str(s["description"]) for s in suites if s.get("description")):
        out += [text, ""]
    for run in res.runs:
        env = run.environment
        commit = (env.get("git_commit") or "unknown")[:12]
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


def _last_result(res: Results) -> str | None:
    """When the newest epoch record was written (the runner stamps `finished_at`), UTC."""
    if "finished_at" not in res.epochs:
        return None
    stamps = pd.to_numeric(res.epochs["finished_at"], errors="coerce").dropna()
    if stamps.empty:
        return None
    return pd.Timestamp(stamps.max(), unit="s", tz="UTC").strftime("%Y-%m-%dT%H:%M:%S+0000")


LEGEND = f"""## How to read the tables

- **variant**: the suite's label, with the layer's options when the label does not show
  them; the BN baseline is in bold. **n**: completed seeds the statistics use.
- **top-1 (final)**: mean final-epoch test top-1 (%) over the n seeds. **std**: sample
  standard deviation (ddof=1), "—" for n=1. **top-5**: mean final-epoch test top-5.
- **95% CI**: percentile bootstrap of the mean (scipy.stats.bootstrap, RNG seed
  {stats.BOOTSTRAP_SEED}, {stats.BOOTSTRAP_RESAMPLES} resamples); with 2-5 seeds it is rough.
- **Δ vs BN**: mean over matching seeds of (variant − BN) final top-1, in points; **p (paired
  t)**: two-sided paired t-test (scipy.stats.ttest_rel) on those seeds; **pairs**: how many.
  Below {stats.MIN_PAIRS} pairs no p-value is given: too few seeds for any claim.
- **best top-1 @ epoch**: mean test top-1 at the epoch with the best *validation* top-1, and
  the mean of that epoch. Runs without a validation split fall back to the best *test* epoch,
  labelled "best-on-test": an optimistic number, shown only for comparison with papers.
- **paper top-1** / **Δ vs paper**: the suite's published reference and our mean minus it.
- **epochs→target** / **time→target (s)**: first epoch (and training wall time) at which a
  seed's test top-1 reached the target, mean over the seeds that did (reached/completed in
  brackets); UBN Table 8 compares norms this way.
- **wall time (s)**: training wall time of the whole trial; **img/s**: training images per
  second (mean over epochs); **peak mem (MB)**: peak GPU memory allocated (on a CPU: the
  process's peak resident memory); **params**: trainable parameters.
- **diverged**: seeds that diverged (listed below with their reason).
- Statistics use completed trials only; diverged, failed, pruned and interrupted trials are
  listed under "Did not finish" with their reason. Accuracies are in %, 2 decimals.
- **source**: where a variant not built into normbench came from (a plugin file or package).
"""


def markdown(
    res: Results, tables: list[Table], dnf: pd.DataFrame, plots: Mapping[str, list[Path]]
) -> str:
    """The whole report; `plots` maps a table slug (or "search") to image paths, relative."""
    out = header(res) + [LEGEND]
    if not tables:
        out += ["No trials are stored in this run directory yet.", ""]
    for t in tables:
        out += [f"## {t.title}", "", target_line(t), "", table_markdown(t), ""]
        out += [f"![{p.stem}]({p.as_posix()})" for p in plots.get(t.slug, [])]
        out += [""] if plots.get(t.slug) else []
    out += ["## Did not finish", ""]
    out += [dnf_markdown(dnf), ""]
    if plots.get("search"):
        out += ["## FCT threshold search", ""]
        out += [f"![{p.stem}]({p.as_posix()})" for p in plots["search"]] + [""]
    return "\n".join(out).rstrip() + "\n"


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
        }
        frames.append(t.rows.assign(**keys)[[*keys, *t.rows.columns]])
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
