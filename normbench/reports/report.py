"""`build_report`: stored results in, `leaderboard.md` + CSV + PNG plots out. Never trains,
never imports torch: a report is a pure function of the run directories it reads."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from normbench.errors import closest
from normbench.reports import plots, render
from normbench.reports.data import Results, load_runs
from normbench.reports.leaderboard import (
    Table,
    baseline_names,
    build_tables,
    did_not_finish,
    smoke_text,
)
from normbench.reports.ranking import Ranking, overall_ranking, ranking_markdown
from normbench.results.paths import atomic_write, make_dirs, refuse_links

PLOTS = "plots"


@dataclass(frozen=True)
class Report:
    """What `build_report` wrote, and the tables behind it (for `print_summary` and tests)."""

    output: Path
    markdown: Path
    results: Results
    tables: list[Table]
    did_not_finish: pd.DataFrame
    files: list[Path] = field(default_factory=list)  # every file written, plots included
    ranking: Ranking | None = None  # across leaderboards, when there are several

    @property
    def suite_name(self) -> str:
        names = [str(r.suite["name"]) for r in self.results.runs if r.suite.get("name")]
        return " + ".join(dict.fromkeys(names)) or self.results.runs[0].path.name

    def __str__(self) -> str:
        return str(self.markdown)


def build_report(
    run_dirs: list[Path] | list[str] | list[os.PathLike[str]],
    output: Path | None = None,
    *,
    baseline: str | None = None,
) -> Report:
    """Read (and merge) run directories and write the report into `output`.

    `output` defaults to `<run dir>/report/` for a single run directory; merging several needs
    an explicit output. `baseline` (a variant label or name) replaces the suite's `baseline`
    as the row every other is compared with. Raises ReportError (a UserError) for missing or
    unmergeable dirs and for a baseline that is no variant of the runs.
    """
    from normbench.reports.data import ReportError

    dirs = [Path(d) for d in run_dirs]
    res = load_runs(dirs)
    if baseline is not None:
        res = dataclasses.replace(res, baseline=baseline)
    tables = build_tables(res)
    if baseline is not None:
        _check_baseline(baseline, tables, res)
    if output is None:
        if len(dirs) > 1:
            raise ReportError("merging several run directories needs --output DIR")
        output = _output_in_run(dirs[0])
    else:
        output = Path(output)
        output.mkdir(parents=True, exist_ok=True)
    refuse_links(output, inside=f"the report folder {output}")  # the folder named is the user's
    dnf = did_not_finish(res)
    ranking = overall_ranking(tables)
    files, links = _plots(res, tables, ranking, output)
    files += _csv(tables, dnf, output)
    md = output / "leaderboard.md"
    section = ranking_markdown(ranking) if ranking is not None else None
    text = _with_left_out(render.markdown(res, tables, dnf, links, section), res)
    atomic_write(md, text + _evaluations(dirs))
    return Report(output, md, res, tables, dnf, [md, *files], ranking)


def _with_left_out(text: str, res: Results) -> str:
    """The report with its left-out trials (older revisions) said under the title."""
    if not res.left_out:
        return text
    title, _, rest = text.partition("\n")
    notes = "".join(f"\n**Left out**: {line}.\n" for line in res.left_out)
    return f"{title}\n{notes}{rest}"


def _output_in_run(run_dir: Path) -> Path:
    """RUN_DIR/report, made without following a link planted in the run directory."""
    out = run_dir / "report"
    refuse_links(out, inside=f"run directory {run_dir}", root_too=True)
    return make_dirs(out, run_dir)


def _evaluations(dirs: list[Path]) -> str:
    """Extra rows from `normbench evaluate` (RUN_DIR/evaluations.jsonl), if any."""
    from normbench.reports.evaluations import evaluation_markdown

    text = evaluation_markdown(dirs)
    return "\n" + text if text else ""


def _plots(
    res: Results, tables: list[Table], ranking: Ranking | None, out: Path
) -> tuple[list[Path], dict]:
    """Write every plot that has data; returns the files and links relative to `out`."""
    files: list[Path] = []
    links: dict[str, list[Path]] = {}
    for t in tables:
        for kind, make in (
            ("curves", lambda t, p: plots.accuracy_curves(t, res, p)),
            ("condensation", lambda t, p: plots.condensation(t, res, p)),
            ("fct", lambda t, p: plots.running_similarity(t, res, p)),
            ("cost", plots.cost_vs_accuracy),
        ):
            path = make(t, out / PLOTS / f"{kind}_{t.slug}.png")
            if path is not None:
                files.append(path)
                links.setdefault(t.slug, []).append(path.relative_to(out))
    smoke = smoke_text(res)
    searches = plots.search_slices(res, out / PLOTS, smoke)
    if not searches:
        tau_plot = plots.fct_search(res, out / PLOTS / "fct_search.png")
        searches = [tau_plot] if tau_plot is not None else []
    if searches:
        files += searches
        links["search"] = [p.relative_to(out) for p in searches]
    cd = plots.critical_difference(ranking, out / PLOTS / "ranking_cd.png", smoke)
    if cd is not None:
        files.append(cd)
        links["ranking"] = [cd.relative_to(out)]
    return files, links


def _csv(tables: list[Table], dnf: pd.DataFrame, out: Path) -> list[Path]:
    board, bad = out / "leaderboard.csv", out / "did_not_finish.csv"
    atomic_write(board, render.leaderboard_csv(tables).to_csv(index=False))
    atomic_write(bad, dnf.to_csv(index=False))
    return [board, bad]


def _check_baseline(baseline: str, tables: list[Table], res: Results) -> None:
    """ReportError (one line, the names it may take) when `baseline` is none of the labels
    the tables show, the suites' labels or their variants' registry names."""
    from normbench.reports.data import ReportError

    names = baseline_names(tables, res)
    if baseline.lower() not in {n.lower() for n in names}:
        raise ReportError(
            f"--baseline {baseline!r} is no variant of these runs{closest(baseline, names)}; "
            f"the labels available: {', '.join(repr(n) for n in names)}"
        )
