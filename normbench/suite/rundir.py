"""What `normbench run` checks in an existing run directory, and how it ends on a full disk.

- `check_run_dir` makes, reading only, every refusal opening the run directory would make (a
  planted link, a lock held by another process, a suite whose results would mix with the
  stored ones, an unreadable study), so `--dry-run` refuses exactly what the run refuses.
- `restore_lost_records` puts back epoch lines a finished trial lost, from its checkpoint;
  when the checkpoint cannot give them back, the trial is retrained from scratch (its old
  lines and checkpoint kept in `superseded/`) instead of standing as complete with a
  shorter history. A searched trial, which the study counts as done, is left for the
  report to mark as incomplete (`results.frames`).
- `stored_progress`: what a rerun would find done and left (`--dry-run` prints it), with
  `revision_lines`: the stored trials a rerun does not reuse because a component they use
  changed revision since (the run prints them too).
- `full_disk_line`: the one line a run ends with when its storage is full.
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from normbench.errors import RunDirError, StorageFullError, UserError
from normbench.results import paths
from normbench.results.lock import RUN_BUSY_HINT, lock_holder
from normbench.results.revisions import n_trials, resolved_trials, superseded, superseded_in
from normbench.results.store import (
    DONE_STATUSES,
    EPOCHS,
    TRIALS,
    RunStore,
    check_suite_fits,
    read_jsonl,
    stored_specs,
)
from normbench.spec import TrialSpec


def check_run_dir(run_dir: Path, suite: Any) -> None:
    """Refuse (RunDirError) what opening `run_dir` for `suite` would refuse; reads only."""
    if not run_dir.is_dir():
        return
    paths.refuse_links(run_dir, inside=f"run directory {run_dir}")
    holder = lock_holder(run_dir)
    if holder is not None:
        raise RunDirError(
            f"run directory {run_dir} is in use by another normbench process (pid {holder[0]}); "
            f"{RUN_BUSY_HINT}"
        )
    check_suite_fits(run_dir, suite)
    if suite.search is not None:
        _refuse_new_revisions(run_dir, suite)
    db = run_dir / "optuna.db"
    if suite.search is not None and not suite.search.storage and db.is_file():
        _check_study_file(db)


def _refuse_new_revisions(run_dir: Path, suite: Any) -> None:
    """A search's study counts its samples done whatever code computed them, so a search
    whose components changed revision cannot go on in the same run directory: neither its
    grid's base trials nor its stored samples (a sampled layer or backbone has its own)."""
    samples = stored_specs(run_dir)
    new = [t.spec.to_dict() for t in suite.trials()] + _restamped(samples.values())
    stored: dict[str, dict[str, Any] | None] = {**resolved_trials(run_dir), **samples}
    found = next(iter(superseded(stored, new).values()), None)
    if found is not None:
        change = ", ".join(
            f"{k} revision {n} then, {found.now[k]} now" for k, n in found.was.items()
        )
        raise RunDirError(
            f"run directory {run_dir} holds a search computed by another revision of the code "
            f"({change}); its study would reuse those samples; use another --output"
        )


def _restamped(specs: Iterable[dict[str, Any] | None]) -> list[dict[str, Any]]:
    """The stored specs at the revisions the code declares now (those it cannot read left
    out: `superseded` leaves them alone too)."""
    from normbench.engine.revisions import stamp

    out = []
    for spec in specs:
        try:
            out.append(stamp(TrialSpec.from_dict(dict(spec or {}))).to_dict())
        except (UserError, TypeError, ValueError):
            continue
    return out


def _check_study_file(db: Path) -> None:
    """The study file opens read-only as an Optuna SQLite storage (the run would refuse it).
    A study whose writer was killed mid-transaction holds a hot journal (`optuna.db-journal`)
    that only a read-write open rolls back (SQLITE_READONLY_ROLLBACK here): that is a study to
    recover, which the run's own open does, not one to refuse."""
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
            conn.execute("SELECT count(*) FROM studies").fetchone()
    except sqlite3.Error as exc:
        if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_READONLY_ROLLBACK:
            return
        raise RunDirError(
            f"{db}: the Optuna study cannot be read (sqlite3: {exc}); move the file away and "
            "rerun to rebuild the study from trials.jsonl"
        ) from None


@dataclass(frozen=True)
class Progress:
    """A suite's trials in an existing run directory, as a rerun sees them: `finished` by
    status (completed, diverged, pruned: skipped), `interrupted` (epochs stored, no summary:
    resumed from their checkpoints), `failed` (run again), out of `total` (a search: its
    samples over every cell)."""

    total: int
    finished: dict[str, int]
    interrupted: int
    failed: int
    done: frozenset[str] = frozenset()  # the finished trials' ids
    stored: dict[str, str] = field(default_factory=dict)  # trial id -> status or "interrupted"
    revisions: tuple[str, ...] = ()  # one line per component whose stored trials are not reused

    @property
    def left(self) -> int:
        return max(0, self.total - sum(self.finished.values()))

    def text(self, run_dir: Path) -> str:
        done = sum(self.finished.values())
        how = ", ".join(f"{n} {s}" for s, n in sorted(self.finished.items()))
        parts = [f"{self.interrupted} resume from their checkpoints"] if self.interrupted else []
        parts += [f"{self.failed} failed, run again"] if self.failed else []
        new = self.left - self.interrupted - self.failed
        parts += [f"{new} not started"] if new and parts else []
        return "\n".join((
            f"resume: {run_dir} holds {done} of the {self.total} trials finished"
            + (f" ({how})" if how else "")
            + f"; {self.left} left"
            + (f" ({', '.join(parts)})" if parts else ""),
            *self.revisions,
        ))  # fmt: skip


def stored_progress(run_dir: Path, suite: Any) -> Progress | None:
    """What `run_dir` holds of `suite`'s trials (None: no run there); reads only. Finished
    means a summary line with a status in DONE_STATUSES, as the run's own skip decides."""
    if not (run_dir / TRIALS).is_file() and not (run_dir / EPOCHS).is_file():
        return None
    status = {r["trial_id"]: str(r.get("status")) for r in read_jsonl(run_dir / TRIALS)}
    started = {r["trial_id"] for r in read_jsonl(run_dir / EPOCHS)}
    trials = suite.trials()
    if suite.search is None:
        ids = {t.trial_id for t in trials}
        total = len(ids)
    else:  # sampled trial ids are unknown beforehand: everything this suite's run stored
        ids = set(status) | started
        total = suite.search.num_samples * len(trials)
    done = {t for t in ids if status.get(t) in DONE_STATUSES}
    failed = sum(status.get(t) == "failed" for t in ids)
    interrupted = len({t for t in ids & started if t not in status})
    stored = {t: status.get(t, "interrupted") for t in ids & (set(status) | started)}
    finished = dict(Counter(status[t] for t in done))
    lines = revision_lines(run_dir, trials, status)
    return Progress(total, finished, interrupted, failed, frozenset(done), stored, lines)


def revision_lines(run_dir: Path, trials: Any, status: dict[str, str]) -> tuple[str, ...]:
    """One line per component revision that keeps stored trials from being reused
    (`normbench.results.revisions` decides which): "evonorm_b0 in resnet20: revision 2
    (reason); 6 finished trials of revision 1 are not reused". `trials`: the suite's
    expanded trials; `status`: trial id -> its summary's status."""
    from normbench.engine.revisions import notes

    specs = {t.trial_id: t.spec for t in trials}
    found = superseded(stored_specs(run_dir), [s.to_dict() for s in specs.values()])
    counts: Counter[tuple[str, int, bool]] = Counter()
    for s in found.values():
        spec, done = specs[s.by], status.get(s.trial_id) in DONE_STATUSES
        lines = notes(spec)
        for kind, now in s.now.items():
            line = lines.get(kind) or f"{getattr(spec, kind)} ({kind}): revision {now}"
            counts[(line, s.was[kind], done)] += 1
    out = []
    for line, was in dict.fromkeys((line, was) for line, was, _ in sorted(counts)):
        n_done, n_started = counts[(line, was, True)], counts[(line, was, False)]
        what = []
        for n, how, verb in ((n_done, "finished", "reused"), (n_started, "unfinished", "resumed")):
            if n:
                are = "is" if n == 1 else "are"
                what.append(f"{n_trials(n, how)} of revision {was} {are} not {verb}")
        out.append(f"{line}; {', '.join(what)}")
    return tuple(out)


def run_summary(store: RunStore) -> str:
    """The run's last line: its stored trials by status, as the report counts them (the
    trials a newer revision superseded apart): "3 completed; 1 superseded by a newer
    revision, kept on disk"."""
    old = superseded_in(store.run_dir)
    counts = Counter(
        (store.summary(tid) or {}).get("status", "interrupted")
        for tid in store.trial_ids()
        if tid not in old
    )
    out = ", ".join(f"{n} {status}" for status, n in sorted(counts.items())) or "no trials"
    newer = sum(s.newer for s in old.values())  # computed by newer code than this
    apart = [f"{len(old) - newer} superseded by a newer revision"] if len(old) > newer else []
    apart += [f"{newer} computed by newer code than this"] if newer else []
    return out + (f"; {', '.join(apart)}, kept on disk" if apart else "")


def restore_lost_records(store: RunStore, suite: Any, stream: TextIO) -> dict[str, list[str]]:
    """Put back epoch records finished trials lost from epochs.jsonl (a torn or corrupt
    line), from their checkpoints; retrain the grid trials whose checkpoint cannot give them
    back. Returns the note each retrained trial's summary line will carry."""
    from normbench.engine.checkpoint import CheckpointError, read_records

    grid = {t.trial_id for t in suite.trials()} if suite.search is None else set()
    lost: dict[str, str] = {}
    old = superseded_in(store.run_dir)  # older revisions: their records stay as they are
    for tid in sorted(store.completed() - set(old)):
        planned = set(range(1, int((store.summary(tid) or {}).get("epochs") or 0) + 1))
        if store.stored_epochs(tid) >= planned:
            continue
        why = "its checkpoint does not hold them"
        try:
            records = read_records(paths.trial_dir(store.run_dir / "checkpoints", tid))
        except CheckpointError as exc:
            records, why = [], str(exc)
        restored = [int(r["epoch"]) for r in records if store.append_epoch(tid, r)]
        if restored:
            print(f"trial {tid}: restored epoch records {restored} from its checkpoint",
                  file=stream)  # fmt: skip
        missing = sorted(planned - store.stored_epochs(tid))
        if missing:
            lost[tid] = f"epoch records {missing} of its {len(planned)} epochs were lost and {why}"
    for tid in sorted(set(lost) - grid):
        print(f"warning: trial {tid}: {lost[tid]}; it is not retrained (a searched trial): "
              "the report marks it incomplete", file=stream)  # fmt: skip
    return _retrain(store, {t: w for t, w in lost.items() if t in grid}, stream)


def _retrain(store: RunStore, lost: dict[str, str], stream: TextIO) -> dict[str, list[str]]:
    if not lost:
        return {}
    archive = store.supersede(set(lost), lost).relative_to(store.run_dir)
    notes: dict[str, list[str]] = {}
    for tid, why in sorted(lost.items()):
        note = (
            f"retrained from scratch: {why}; its earlier records and checkpoint are in {archive}/"
        )
        notes[tid] = [note]
        print(f"trial {tid}: {note}", file=stream)
    return notes


def full_disk_line(exc: StorageFullError, run_dir: Path, stored: str, report: str) -> str:
    """The one line a run ends with when its storage is full: what failed where, what is
    stored, the report, and what to do."""
    return (
        f"normbench: error: storage full: {exc.strerror}; stopped the run, stored results are "
        f"intact ({run_dir}: {stored}; {report}); free space and rerun the same command to "
        "resume"
    )
