"""Read one or more run directories into one set of results, refusing incompatible merges.

Merge rule: two run directories merge when they trained the same things the same way.
A *cell* is (task, dataset, backbone label, variant label, variant options, batch size, epochs,
limit_batches); trials of one cell may differ only in `seed` and in what is not part of a
trial's identity (`normbench.spec.identity`: the environment such as threads, device and
`parallel`, where the data and plugins are, checkpointing). A *leaderboard* is a cell without
the variant; its variants must share everything but the fields on the variant axis
(`normbench.spec.fields_on("variant")`: name, options, placement): recipe, data set and its
options, backbone options. The suites must also agree on
`target_accuracy`. Published reference numbers never block a merge: rows from several sources
(the UBN paper and pytorch-cifar100 for one cell, say) all stay, one column per source in the
report; identical rows count once. Cells present in only one directory
simply add rows (e.g. a second run with more variants). The same trial id in two directories
(a copied or resumed run) counts once: the most finished copy wins. A stored trial that the
run's suite (as last run) now has at a newer revision of its layer, backbone or task is left
out, with one line saying how many and why (`normbench.results.revisions`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from normbench.contract import CLASSIFICATION, Scoring, scoring_of
from normbench.errors import UserError
from normbench.results import load_epochs, load_results
from normbench.results.revisions import Superseded, in_words, left_out_line, superseded_in
from normbench.results.store import EPOCHS, TRIALS, read_jsonl
from normbench.spec import REVISION_FIELD, fields_on, identity

# The replicate axis: the trials of one cell differ in it.
_REPLICATE = ("seed",)
# Preference among copies of one trial id: the most finished first.
_STATUS_RANK = {
    "completed": 0, "diverged": 1, "pruned": 2, "failed": 3, "incomplete": 4, "running": 5,
    "interrupted": 6,
}  # fmt: skip
# What identifies one leaderboard (its variants must share the recipe).
TABLE_KEYS = ("task", "dataset", "backbone_label", "batch_size", "epochs_planned", "limit_batches")


class ReportError(UserError):
    """A run directory that cannot be read, or run directories that cannot be merged."""


@dataclass(frozen=True)
class RunInfo:
    """One run directory's description: its resolved suite and environment (may be empty)."""

    path: Path
    suite: dict[str, Any]
    environment: dict[str, Any]


@dataclass(frozen=True)
class Results:
    """Merged results: one row per distinct trial, one per distinct trial-epoch."""

    runs: tuple[RunInfo, ...]
    trials: pd.DataFrame  # load_results columns + run, backbone_name, limit_batches, spec
    epochs: pd.DataFrame
    target_accuracy: float | None
    reference: tuple[dict[str, Any], ...]
    # trial id -> epoch -> {layer: condensation}, layers in model order (outermost first)
    condensation: dict[str, dict[int, dict[str, float]]]
    # trial id -> epoch -> {layer: {key: value}} (the layers' `diagnostics()`), model order
    diagnostics: dict[str, dict[int, dict[str, dict[str, float]]]]
    # task -> its scoring, as the runs stored it (suite.resolved.json, records)
    scorings: dict[str, Scoring] = field(default_factory=dict)
    # the variant (label or name) rows are compared with: the suite's `baseline`, else bn
    baseline: str = "bn"
    # one line per run directory whose trials of an older revision of a component were left
    # out (normbench.results.revisions: the suite's trials now are the new revision's)
    left_out: tuple[str, ...] = ()

    def scoring(self, task: str) -> Scoring:
        """How the trials of `task` are scored (classification's for a task none stored)."""
        return self.scorings.get(task, CLASSIFICATION)


def load_runs(run_dirs: list[Path]) -> Results:
    """Read and merge run directories; ReportError names the problem and the directories."""
    if not run_dirs:
        raise ReportError("no run directory given")
    runs = [_read_run(Path(d)) for d in run_dirs]
    left = {r.path: _superseded(r) for r in runs}
    frames = [_trial_frame(r.path, set(left[r.path])) for r in runs]
    for i in range(len(runs)):
        for j in range(i + 1, len(runs)):
            _check_compatible(runs[i], frames[i], runs[j], frames[j])
    trials = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    trials = _dedupe_trials(trials)
    epochs = pd.concat([load_epochs(r.path) for r in runs], ignore_index=True)
    gone = {t for found in left.values() for t in found}
    epochs = epochs[~epochs["trial_id"].isin(gone)] if gone else epochs
    epochs = epochs.drop_duplicates(["trial_id", "epoch"], keep="first")
    epochs = epochs.sort_values(["trial_id", "epoch"], kind="stable").reset_index(drop=True)
    target = next((r.suite.get("target_accuracy") for r in runs if r.suite), None)
    refs = _merged_reference(runs)
    return Results(
        tuple(runs),
        trials,
        epochs,
        target,
        refs,
        _per_layer(runs, "condensation"),
        _per_layer(runs, "diagnostics"),
        _scorings(runs),
        next((str(r.suite["baseline"]) for r in runs if r.suite.get("baseline")), "bn"),
        tuple(f"{r.path}: {_left_out_line(r, left[r.path])}" for r in runs if left[r.path]),
    )


def _scorings(runs: list[RunInfo]) -> dict[str, Scoring]:
    """Each task's scoring: from the suites (suite.resolved.json), then from the records of
    trials whose task no suite names (a record of a task other than classification carries
    it; `normbench.contract.scoring_of`)."""
    out: dict[str, Scoring] = {}
    for run in runs:
        task, stored = (run.suite.get("task") or {}).get("name"), run.suite.get("scoring")
        if isinstance(task, str) and isinstance(stored, dict):
            out.setdefault(task, Scoring.from_dict(stored))
    for run in runs:
        for rec in read_jsonl(run.path / EPOCHS):
            if not isinstance(rec.get("spec"), dict):  # only a trial's first line has its spec
                continue
            out.setdefault(rec["spec"].get("task", "classification"), scoring_of(rec))
    return out


def _per_layer(runs: list[RunInfo], key: str) -> dict[str, dict[int, dict[str, Any]]]:
    """Read from the JSONL itself: load_epochs sorts the layer keys, losing model order."""
    out: dict[str, dict[int, dict[str, Any]]] = {}
    for run in runs:
        for rec in read_jsonl(run.path / EPOCHS):
            value = rec.get(key)
            if isinstance(value, dict) and value:
                out.setdefault(rec["trial_id"], {}).setdefault(int(rec["epoch"]), value)
    return out


def _read_run(path: Path) -> RunInfo:
    if not path.is_dir():
        raise ReportError(f"run directory {path} does not exist")
    if not any((path / f).exists() for f in (EPOCHS, TRIALS, "suite.resolved.json")):
        raise ReportError(
            f"{path} is not a run directory (it has no {EPOCHS}, {TRIALS} or suite.resolved.json)"
        )
    return RunInfo(
        path, _read_json(path / "suite.resolved.json"), _read_json(path / "environment.json")
    )


def _read_json(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ReportError(f"{path}: not valid JSON ({exc})") from exc


def _superseded(run: RunInfo) -> dict[str, Superseded]:
    """The run's stored trials that its suite (as last run) has at a newer revision."""
    return superseded_in(run.path) if run.suite else {}


def _left_out_line(run: RunInfo, found: dict[str, Superseded]) -> str:
    return left_out_line(found, _specs(run.path))


def _trial_frame(run_dir: Path, left_out: set[str]) -> pd.DataFrame:
    """load_results plus what grouping and merging need: the spec, backbone name, smoke cap;
    without the `left_out` trials (superseded by a newer revision)."""
    df = load_results(run_dir)
    df = df[~df["trial_id"].isin(left_out)].reset_index(drop=True) if left_out else df
    specs = _specs(run_dir)
    cells = [json.loads(c) if isinstance(c, str) else {} for c in df["cell"]]
    df["run"] = str(run_dir)
    df["backbone_label"] = [
        c.get("backbone") or b for c, b in zip(cells, df["backbone"], strict=True)
    ]
    df["limit_batches"] = [specs.get(t, {}).get("limit_batches") for t in df["trial_id"]]
    df["spec"] = [json.dumps(specs.get(t, {}), sort_keys=True) for t in df["trial_id"]]
    return df


def _specs(run_dir: Path) -> dict[str, dict[str, Any]]:
    specs: dict[str, dict[str, Any]] = {}
    for rec in read_jsonl(run_dir / EPOCHS):
        if rec.get("spec"):
            specs.setdefault(rec["trial_id"], rec["spec"])
    for rec in read_jsonl(run_dir / TRIALS):
        if rec.get("spec"):
            specs[rec["trial_id"]] = rec["spec"]
    return specs


def cell_key(row: pd.Series) -> tuple[Any, ...]:
    """What identifies a cell across seeds (see the module docstring)."""
    return (*table_key(row), row["label"], row["options"])


def table_key(row: pd.Series) -> tuple[Any, ...]:
    """What identifies one leaderboard: its variants must share the recipe."""
    return tuple(row[k] for k in TABLE_KEYS)


def _check_compatible(a: RunInfo, fa: pd.DataFrame, b: RunInfo, fb: pd.DataFrame) -> None:
    """Same cell: same spec up to seed; same leaderboard: same recipe and data up to variant."""
    where = f"cannot merge run directories {a.path} and {b.path}"
    for key in ("target_accuracy", "baseline"):
        va, vb = a.suite.get(key), b.suite.get(key)
        if a.suite and b.suite and va != vb:
            raise ReportError(f"{where}: they differ in {key} ({va} vs {vb})")
    for key_fn, ignored, what in (
        (cell_key, _REPLICATE, "cell"),
        (table_key, _REPLICATE + fields_on("variant"), "leaderboard"),
    ):
        first = {key_fn(r): r["spec"] for _, r in fa.iterrows() if r["spec"] != "{}"}
        for _, r in fb.iterrows():
            other = first.get(key_fn(r))
            if other is None or r["spec"] == "{}":
                continue
            ours, theirs = identity(json.loads(other)), identity(json.loads(r["spec"]))
            diff = _first_difference(ours, theirs, ignored)
            if diff is not None:
                name = (
                    f"{r['backbone_label']}/{r['label']}"
                    if what == "cell"
                    else (f"{r['dataset']}/{r['backbone_label']}")
                )
                why = (
                    "; the plugin files are part of every trial's identity, so runs made with "
                    "different plugin lists do not merge: list the plugin from a suite's first "
                    "run, or report the runs apart"
                    if diff[0] == "plugins"
                    else ""
                )
                raise ReportError(
                    f"{where}: {what} {name} (batch {r['batch_size']}) differs in "
                    + _difference(diff, other, r["spec"])
                    + why
                )


def _difference(diff: tuple[str, Any, Any], ours: str, theirs: str) -> str:
    """ "recipe.lr (0.1 vs 0.05)"; computation revisions in words: "revisions (all at
    revision 1 vs variant at revision 2)"."""
    if diff[0].split(".")[0] != REVISION_FIELD:
        return f"{diff[0]} ({diff[1]!r} vs {diff[2]!r})"
    was, now = (in_words(json.loads(spec).get(REVISION_FIELD)) for spec in (ours, theirs))
    return f"{REVISION_FIELD} ({was} vs {now})"


def _first_difference(
    a: Any, b: Any, ignored: tuple[str, ...], prefix: str = ""
) -> tuple[str, Any, Any] | None:
    """The first dotted key whose values differ, ignoring the `ignored` top-level keys."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            if not prefix and key in ignored:
                continue
            found = _first_difference(a.get(key), b.get(key), ignored, f"{prefix}{key}.")
            if found is not None:
                return found
        return None
    return None if a == b else (prefix.rstrip("."), a, b)


def _merged_reference(runs: list[RunInfo]) -> tuple[dict, ...]:
    """Union of the suites' reference rows, in suite order; identical rows count once. Rows
    of one cell from several sources all stay (the report gives each source its column)."""
    seen: dict[str, dict[str, Any]] = {}
    for run in runs:
        for ref in run.suite.get("reference") or []:
            seen.setdefault(json.dumps(ref, sort_keys=True, default=str), ref)
    return tuple(seen.values())


def _dedupe_trials(df: pd.DataFrame) -> pd.DataFrame:
    if df.empty:
        return df
    rank = df["status"].map(_STATUS_RANK).fillna(9)
    order = df.assign(_rank=rank, _ep=-df["epochs"].fillna(0)).sort_values(
        ["_rank", "_ep"], kind="stable"
    )
    out = order.drop_duplicates("trial_id", keep="first").drop(columns=["_rank", "_ep"])
    return out.sort_values("trial_id", kind="stable").reset_index(drop=True)
