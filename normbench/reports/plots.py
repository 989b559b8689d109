"""PNG plots of stored results (matplotlib's Agg canvas; no display, no global backend switch).

- accuracy curves per leaderboard: the test headline (top-1) per epoch, mean over seeds with a
  min-max band;
- feature condensation per layer over epochs (UBN Figure 2 style): one panel per variant,
  one line per norm layer coloured by depth, and the threshold tau each UBN row ran with;
- UBN's running similarity per layer over training against its tau (when does FCT fire);
- a search: the objective against each searched parameter, one figure per Optuna study in
  RUN_DIR/optuna.db (optuna.visualization.matplotlib.plot_slice; completed trials only), or,
  without a study, tau against the final accuracy from the trials' options;
- cost vs accuracy: training time and images/s against the final headline, with std error bars;
- the overall ranking's critical-difference diagram (scikit-posthocs).
Each function returns the path it wrote, or None when the data has nothing to show.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from normbench.contract import Metric
from normbench.reports.data import Results
from normbench.reports.leaderboard import Table
from normbench.reports.numbers import number

PAPER_TAU = 0.15  # UBN's default threshold (Sec 4.3.2)
_MARKERS = ("o", "s", "^", "D", "v", "P", "X")


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def styles(table: Table) -> dict[str, dict[str, Any]]:
    """Colour and marker per variant, the same in every plot of a table (suite order);
    markers cycle too, so more than ten variants stay distinguishable."""
    palette = "tab10" if len(table.members) <= 10 else "tab20"
    colours = colormaps[palette].colors  # type: ignore[attr-defined]  # a ListedColormap
    return {
        label: {"color": colours[i % len(colours)], "marker": _MARKERS[i % len(_MARKERS)]}
        for i, label in enumerate(table.members)
    }


def _epoch_ticks(ax: Any, epochs: Any) -> None:
    """Integer epoch ticks; every epoch labelled when there are few."""
    values = sorted({int(e) for e in epochs})
    if 0 < len(values) <= 12:
        ax.set_xticks(values)
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _save(fig: Figure, path: Path, **kwargs: Any) -> Path:
    """PNG bytes rendered in memory, then written atomically (never through a link)."""
    import io

    from normbench.results.paths import atomic_write

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, **kwargs)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, buf.getvalue())
    return path


def _axis(m: Metric) -> str:
    """An axis label of a metric: "test top-1 (%)", "test RMSE"."""
    return f"{m.label} ({m.unit})" if m.unit else m.label


def accuracy_curves(table: Table, res: Results, path: Path) -> Path | None:
    """The test headline (classification: top-1 %) per epoch: mean over seeds, shaded min-max
    over seeds."""
    fig = _figure(8, 4.5 + 0.2 * len(table.members))
    ax = fig.add_subplot()
    style, epochs = styles(table), set()
    h = table.headline
    for label, ids in table.members.items():
        curve = res.epochs[res.epochs["trial_id"].isin(ids)]
        if curve.empty or f"test_{h.name}" not in curve:
            continue
        values = pd.to_numeric(curve[f"test_{h.name}"], errors="coerce")
        by_epoch = values.groupby(curve["epoch"])
        agg = by_epoch.agg(["mean", "min", "max"]).dropna()
        if agg.empty:
            continue
        colour, marker = style[label]["color"], style[label]["marker"]
        ax.plot(
            agg.index,
            agg["mean"],
            color=colour,
            marker=marker,
            ms=4,
            label=f"{label} (n={len(ids)})",
        )
        ax.fill_between(agg.index, agg["min"], agg["max"], color=colour, alpha=0.15)
        epochs |= set(agg.index)
    if not epochs:
        return None
    if table.target is not None:
        unit = "%" if h.unit == "%" else ""
        ax.axhline(
            table.target,
            color="grey",
            ls=":",
            lw=1,
            label=f"target {number(table.target, '.2f')}{unit}",
        )
    ax.set(xlabel="epoch", ylabel=f"test {_axis(h)}")
    fig.suptitle(f"Test {h.label} per epoch: {table.title}\n(mean over seeds, band = min–max)")
    _epoch_ticks(ax, epochs)
    ax.grid(alpha=0.3)
    _legend_below(fig, ax)
    return _save(fig, path)


def _legend_below(fig: Figure, ax: Any) -> None:
    """One legend under the plot(s): long variant labels never squeeze the axes."""
    handles, labels = ax.get_legend_handles_labels()
    ncols = 1 if len(labels) <= 2 else (2 if max(map(len, labels)) > 30 else 3)
    fig.legend(handles, labels, loc="outside lower center", ncols=ncols, fontsize="small")


def condensation(table: Table, res: Results, path: Path) -> Path | None:
    """Small multiples: per variant, each layer's condensation (mean over seeds) per epoch."""
    panels = {v: _layer_curves(ids, res) for v, ids in table.members.items()}
    panels = {v: p for v, p in panels.items() if not p.empty}
    if not panels:
        return None
    cols = min(len(panels), 3)
    rows = math.ceil(len(panels) / cols)
    fig = _figure(4.2 * cols + 0.8, 3.2 * rows + 0.6)
    axes = fig.subplots(rows, cols, sharex=True, sharey=True, squeeze=False)
    depth = max(p.shape[1] for p in panels.values())
    cmap, norm = colormaps["viridis"], Normalize(0, max(depth - 1, 1))
    for n, (variant, curves) in enumerate(panels.items()):
        ax = axes.flat[n]
        for i, layer in enumerate(curves.columns):
            ax.plot(curves.index, curves[layer], color=cmap(norm(i)), lw=1, marker=".", ms=3)
        tau = table.taus.get(variant)
        if tau is not None:
            ax.axhline(tau, color="red", ls="--", lw=1, label=f"τ = {tau:g} (FCT threshold)")
            ax.legend(fontsize="x-small", loc="best")
        ax.set_title(variant)
        ax.grid(alpha=0.3)
        _epoch_ticks(ax, curves.index)
    for ax in axes.flat[len(panels) :]:
        ax.set_visible(False)
    for ax in axes[:, 0]:
        ax.set_ylabel("condensation\n(mean pairwise cosine)")
    for ax in axes.flat[max(len(panels) - cols, 0) : len(panels)]:
        ax.set_xlabel("epoch")
        ax.xaxis.set_tick_params(labelbottom=True)
    bar = fig.colorbar(ScalarMappable(norm, cmap), ax=axes.ravel().tolist(), shrink=0.8)
    bar.set_label("layer depth (0 = first norm layer)")
    bar.locator = MaxNLocator(integer=True)
    bar.update_ticks()
    fig.suptitle(f"Feature condensation at each norm layer's input: {table.title}")
    return _save(fig, path)


def _layer_curves(ids: tuple[str, ...], res: Results) -> pd.DataFrame:
    """epoch x layer frame (layers in model order) of condensation averaged over seeds."""
    rows: list[tuple[int, str, float]] = []
    order: dict[str, int] = {}
    for tid in ids:
        for epoch, layers in res.condensation.get(tid, {}).items():
            for layer, value in layers.items():
                order.setdefault(layer, len(order))
                rows.append((epoch, layer, value))
    if not rows:
        return pd.DataFrame()
    df = pd.DataFrame(rows, columns=["epoch", "layer", "value"])
    wide = df.pivot_table(index="epoch", columns="layer", values="value", aggfunc="mean")
    return wide[sorted(wide.columns, key=order.__getitem__)]


def running_similarity(table: Table, res: Results, path: Path) -> Path | None:
    """Per row whose layers log a running similarity (UBN's `running_sim` diagnostic, mean
    over seeds) at the end of each epoch, against the row's tau when recorded: above tau the
    layer uses batch statistics, below it frozen running statistics."""
    panels = {}
    for variant, ids in table.members.items():
        rows = [
            (epoch, layer, diag["running_sim"])
            for tid in ids
            for epoch, layers in res.diagnostics.get(tid, {}).items()
            for layer, diag in layers.items()
            if diag.get("running_sim") is not None
        ]
        if rows:
            df = pd.DataFrame(rows, columns=["epoch", "layer", "value"])
            order = list(dict.fromkeys(df["layer"]))
            wide = df.pivot_table(index="epoch", columns="layer", values="value", aggfunc="mean")
            panels[variant] = wide[order]
    if not panels:
        return None
    fig = _figure(7.5, 3.6 * len(panels) + 0.6)
    axes = fig.subplots(len(panels), 1, squeeze=False)[:, 0]
    cmap = colormaps["viridis"]
    for ax, (variant, curves) in zip(axes, panels.items(), strict=True):
        norm = Normalize(0, max(curves.shape[1] - 1, 1))
        for i, layer in enumerate(curves.columns):
            ax.plot(curves.index, curves[layer], color=cmap(norm(i)), lw=1, marker=".", ms=3)
        tau = table.taus.get(variant)
        share = table.rows.set_index("variant")["frozen_share"].get(variant)
        frozen = (
            ""
            if share is None or pd.isna(share)
            else f"; frozen steps {number(100 * share, '.1f')}%"
        )
        if tau is not None:
            ax.axhline(tau, color="red", ls="--", lw=1.2, label=f"τ = {tau:g}")
            ax.legend(fontsize="x-small", loc="best")
        else:
            frozen += "; τ not recorded"
        ax.set(title=f"{variant}{frozen}", xlabel="epoch", ylabel="running similarity ŝ")
        ax.grid(alpha=0.3)
        _epoch_ticks(ax, curves.index)
    bar = fig.colorbar(ScalarMappable(Normalize(0, 1), cmap), ax=list(axes), shrink=0.8)
    bar.set_label("layer depth (0 = first, 1 = last norm layer)")
    fig.suptitle(f"UBN running similarity per layer vs τ: {table.title}")
    return _save(fig, path)


def cost_vs_accuracy(table: Table, path: Path) -> Path | None:
    """Training time (s) and images/s against the final test headline (classification: top-1
    %), error bars = std over seeds."""
    rows = table.rows[table.rows["n"] > 0]
    h = table.headline
    if rows.empty:
        return None
    fig = _figure(11, 4.4 + 0.15 * len(rows))
    style = styles(table)
    panels = [("train_time_s", "training time (s)"), ("images_per_s", "training images / second")]
    for ax, (col, xlabel) in zip(fig.subplots(1, 2), panels, strict=True):
        for _, r in rows.iterrows():
            s = style.get(r["variant"], {})
            ax.errorbar(
                r[f"{col}_mean"],
                r[f"{h.name}_mean"],
                xerr=_err(r[f"{col}_std"]),
                yerr=_err(r[f"{h.name}_std"]),
                fmt=s.get("marker", "o"),
                color=s.get("color"),
                capsize=3,
                label=f"{r['variant']} (n={r['n']})",
            )
        ax.set(xlabel=xlabel, ylabel=f"final test {_axis(h)}")
        ax.grid(alpha=0.3)
    _legend_below(fig, ax)
    fig.suptitle(f"Cost vs accuracy: {table.title} (error bars: std over seeds)")
    return _save(fig, path)


def _err(x: Any) -> float | None:
    return None if x is None or pd.isna(x) else float(x)


def search_slices(res: Results, folder: Path, smoke: str | None = None) -> list[Path]:
    """The objective against each searched parameter, one PNG per Optuna study in the run
    directories (optuna.visualization.matplotlib.plot_slice: completed trials only)."""
    import warnings

    import optuna
    from optuna.visualization.matplotlib import plot_slice

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    out = []
    for run in res.runs:
        storage = _read_only_study(run.path / "optuna.db")
        if storage is None:
            continue
        for name in optuna.get_all_study_names(storage=storage):
            study = optuna.load_study(study_name=name, storage=storage)
            done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
            if not done:
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                # one sample: matplotlib warns that the axis has no width; the plot is right
                warnings.filterwarnings("ignore", "Attempting to set identical", UserWarning)
                axes = plot_slice(study)
            ax = axes.flat[0] if hasattr(axes, "flat") else axes
            fig: Any = ax.figure
            title = f"Search {_short_study(name)}: objective vs each parameter (completed trials)"
            fig.suptitle(title + (f"\nSMOKE RUN ({smoke})" if smoke else ""))
            slug = "".join(c if c.isalnum() or c in "_-" else "-" for c in name)[:60]
            path = _save(fig, folder / f"search_{slug}.png", bbox_inches="tight")
            import matplotlib.pyplot as plt

            plt.close(fig)
            out.append(path)
    return out


def _read_only_study(db: Path) -> Any:
    """The Optuna storage of a run's `optuna.db`, opened read-only (a report never writes a
    run directory, and never creates tables in a file planted there), or None when there is
    none, it is a link, or it cannot be read (a warning names it)."""
    import warnings

    import optuna

    from normbench.errors import RunDirWarning

    if db.is_symlink() or not db.is_file():
        if db.is_symlink():
            warnings.warn(f"{db} is a symbolic link; not read", RunDirWarning, stacklevel=2)
        return None
    url = f"sqlite:///file:{db.resolve()}?mode=ro&uri=true"
    try:
        return optuna.storages.RDBStorage(url, skip_table_creation=True)
    except Exception as exc:  # sqlite/sqlalchemy/optuna errors of a damaged or foreign file
        why = " ".join(str(exc).split())[:160]
        warnings.warn(f"{db}: the Optuna study cannot be read ({why}); no search plot",
                      RunDirWarning, stacklevel=2)  # fmt: skip
        return None


def critical_difference(ranking: Any, path: Path, smoke: str | None = None) -> Path | None:
    """scikit-posthocs' critical-difference diagram of the overall ranking (3+ variants)."""
    if ranking is None or ranking.nemenyi is None:
        return None
    import scikit_posthocs as sp

    fig = _figure(8, 2.2 + 0.25 * len(ranking.mean_rank))
    ax = fig.add_subplot()
    sp.critical_difference_diagram(ranking.mean_rank, ranking.nemenyi, ax=ax)
    title = f"Mean rank over {len(ranking.scores)} leaderboards (bar: Nemenyi p >= 0.05)"
    ax.set_title(title + (f"\nSMOKE RUN ({smoke})" if smoke else ""), fontsize="small")
    return _save(fig, path)


def fct_search(res: Results, path: Path) -> Path | None:
    """tau vs final accuracy from the trials' options, for runs without an Optuna study."""
    points, ylabel = _option_points(res)
    if points.empty or points["tau"].nunique() < 2:
        return None
    fig = _figure(7, 4.5)
    ax = fig.add_subplot()
    hue = {study: f"C{i % 10}" for i, study in enumerate(sorted(points["study"].unique()))}
    for (study, state), grp in points.groupby(["study", "state"], sort=True):
        pruned = state != "COMPLETE"
        label = f"{study}" + (" (stopped early: last reported value)" if pruned else "")
        ax.scatter(
            grp["tau"],
            grp["value"],
            marker="x" if pruned else "o",
            color=hue[study],
            alpha=0.5 if pruned else 0.9,
            label=label,
        )
    ax.axvline(PAPER_TAU, color="grey", ls=":", label=f"paper default τ={PAPER_TAU}")
    ax.set(
        title="FCT search: condensation threshold τ vs accuracy",
        xlabel="threshold τ",
        ylabel=ylabel,
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize="x-small")
    return _save(fig, path)


def _short_study(name: str) -> str:
    return name if len(name) <= 32 else name[:29] + "..."


def _option_points(res: Results) -> tuple[pd.DataFrame, str]:
    df = res.trials[res.trials["status"].isin(["completed", "pruned"])]
    if "final_val_top1" not in df:  # a task without top-1: no accuracy to plot tau against
        return pd.DataFrame(columns=["study", "tau", "state", "value"]), ""
    taus = [json.loads(o).get("tau") if isinstance(o, str) else None for o in df["options"]]
    use_val = df["final_val_top1"].notna().any()
    metric = "final_val_top1" if use_val else "final_test_top1"
    out = pd.DataFrame(
        {
            "study": df["label"].astype(str),
            "tau": taus,
            "state": np.where(df["status"] == "completed", "COMPLETE", "PRUNED"),
            "value": pd.to_numeric(df[metric], errors="coerce"),
        }
    ).dropna(subset=["tau", "value"])
    return out, ("final val top-1 (%)" if use_val else "final test top-1 (%)")
