"""Stored trials computed by another revision of the code than the suite's trials now.

A suite's trial carries the revisions of its layer, backbone and task that are not 1
(`TrialSpec.revisions`, in its id). When a component's computation changed after a trial was
stored, the suite now expands to the same trial at a new revision, under a new id: the stored
one is *superseded*. This module is the one place that decides which stored trials are:
`normbench run` (and `--dry-run`) does not reuse them and says so, `normbench report`
leaves them out of the leaderboards and says how many, and `train.init_from` never picks
one. Their records stay on disk as they are.

Reads specs only (no torch): the reports use it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from normbench.results import paths
from normbench.results.store import stored_specs
from normbench.spec import REVISION_FIELD, SpecError, TrialSpec, unrevised_id


@dataclass(frozen=True)
class Superseded:
    """A stored trial that the suite's trial `by` replaces; `was` and `now` are the
    revisions ({kind: n}, kinds at 1 left out) of the components whose revision differs."""

    trial_id: str
    by: str
    was: dict[str, int]
    now: dict[str, int]

    @property
    def newer(self) -> bool:
        """Computed by newer code than this (a downgrade, another branch): not superseded by
        this code's trial but not its computation either, so left out all the same."""
        return any(n > self.now[k] for k, n in self.was.items())


def superseded(
    stored: Mapping[str, Mapping[str, Any] | None], current: Iterable[Mapping[str, Any]]
) -> dict[str, Superseded]:
    """{stored trial id: Superseded} for each stored trial (id -> its spec, None: unknown)
    that is one of the `current` trials (specs) at other revisions of its components."""
    by_unrevised: dict[str, tuple[str, dict[str, int]]] = {}
    for spec in current:
        ids = _ids(spec)
        if ids is not None:
            by_unrevised[ids[1]] = (ids[0], dict(spec.get(REVISION_FIELD) or {}))
    out: dict[str, Superseded] = {}
    for tid, stored_spec in stored.items():
        ids = _ids(stored_spec) if stored_spec is not None else None
        if ids is None or ids[1] not in by_unrevised or ids[0] == by_unrevised[ids[1]][0]:
            continue
        by, now = by_unrevised[ids[1]]
        was = dict((stored_spec or {}).get(REVISION_FIELD) or {})
        kinds = sorted(k for k in set(was) | set(now) if was.get(k, 1) != now.get(k, 1))
        out[tid] = Superseded(
            tid, by, {k: was.get(k, 1) for k in kinds}, {k: now.get(k, 1) for k in kinds}
        )
    return out


def superseded_in(run_dir: Path) -> dict[str, Superseded]:
    """`superseded` for a run directory: its stored trials against the trials of its suite as
    last run (`suite.resolved.json`; none there: nothing is superseded). Reads only."""
    current = resolved_trials(run_dir)
    return superseded(stored_specs(run_dir), current.values()) if current else {}


def resolved_trials(run_dir: Path) -> dict[str, dict[str, Any]]:
    """Trial id -> spec of the suite last run in `run_dir` ({} without a readable one)."""
    try:
        suite = json.loads(paths.read_bytes(run_dir / "suite.resolved.json") or b"{}")
    except ValueError:
        return {}
    trials = suite.get("trials") if isinstance(suite, dict) else None
    return {
        str(t["trial_id"]): t["spec"]
        for t in trials or []
        if isinstance(t, dict) and "spec" in t and "trial_id" in t
    }


def _ids(spec: Mapping[str, Any]) -> tuple[str, str] | None:
    """(trial id, id at revision 1) of a stored spec; None for one this code cannot read."""
    try:
        return TrialSpec.from_dict(dict(spec)).trial_id, unrevised_id(spec)
    except (SpecError, TypeError, ValueError):
        return None


def left_out_line(found: Mapping[str, Superseded], specs: Mapping[str, Mapping[str, Any]]) -> str:
    """The report's line on the superseded trials it leaves out (`found`, non-empty):
    "2 trials computed by an older revision (variant tinynorm: 2 at revision 1, now 2); ...",
    and apart those computed by newer code than this ("1 trial computed by a newer revision
    ... (variant tinynorm: 1 at revision 2, now 1); ...")."""
    older = {t: s for t, s in found.items() if not s.newer}
    newer = {t: s for t, s in found.items() if s.newer}
    return "; ".join(_left_out(group, specs, group is newer) for group in (older, newer) if group)


def _left_out(
    found: Mapping[str, Superseded], specs: Mapping[str, Mapping[str, Any]], newer: bool
) -> str:
    parts: dict[tuple[str, int, int], int] = {}
    for s in found.values():
        spec = specs.get(s.trial_id) or {}
        for kind in s.now:
            name = spec.get(kind)
            if kind == "backbone":
                name = f"{spec.get('variant')} in {name}"
            key = (f"{kind} {name}", s.was[kind], s.now[kind])
            parts[key] = parts.get(key, 0) + 1
    what = "; ".join(f"{k}: {n} at revision {was}, now {now}" for (k, was, now), n in sorted(
        parts.items()
    ))  # fmt: skip
    them, their = ("it", "its") if len(found) == 1 else ("them", "their")
    if newer:
        return (
            f"{n_trials(len(found))} computed by a newer revision of a component than this "
            f"code ({what}); this code runs {them} at its own; {their} records stay in the run "
            "directory"
        )
    return (
        f"{n_trials(len(found))} computed by an older revision of a component ({what}); the "
        f"suite now runs {them} at the new one; {their} records stay in the run directory"
    )


def n_trials(n: int, what: str = "") -> str:
    """How revision messages count trials: "1 trial", "3 trials", "1 finished trial"."""
    return f"{n} {what}{' ' if what else ''}trial{'' if n == 1 else 's'}"


def in_words(revisions: Mapping[str, int] | None) -> str:
    """A spec's `revisions` in words: {} or None -> "all at revision 1", {"variant": 2} ->
    "variant at revision 2" (the kinds left out are at 1)."""
    if not revisions:
        return "all at revision 1"
    return ", ".join(f"{k} at revision {n}" for k, n in sorted(revisions.items()))
