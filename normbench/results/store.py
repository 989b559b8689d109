"""The run directory: an append-only store written by one driver, read by anyone.

Layout (see ARCHITECTURE.md): `suite.yaml`, `suite.resolved.json`, `environment.json`,
`epochs.jsonl` (one line per trial-epoch), `trials.jsonl` (one line per finished trial),
`checkpoints/<trial_id>/`, `optuna.db`, `.lock`, with remote checkpoint storage
`remote_checkpoints.jsonl` (where Ray uploaded each trial's latest checkpoint), and after
`normbench evaluate` `evaluations.jsonl` (post-hoc evaluations of finished checkpoints), and
after `normbench run --restart-changed` `superseded/<time>/` (the records and checkpoints of
trials restarted from scratch, see `RunStore.supersede`).

Why append-only JSONL: a driver killed with SIGKILL leaves at worst one torn last line.
Each line goes out in a single `os.write` followed by `fsync`, so every line before it is
complete and durable; readers skip a torn last line and the next writer cuts it off.

Suite changes on an existing run directory: a rerun with the *same* resolved suite resumes;
a suite that only *adds* trials (every trial already stored is still one of its trials, e.g.
more seeds or variants) is accepted and `suite.resolved.json` is replaced. So is a change of
length only (`--max-epochs`, `--limit-batches`, `epochs`): those are part of each trial id,
so smoke, truncated and full trials sit side by side and never resume as one another.
Anything else (recipe, options, data set, the search space ...) would mix incompatible
results under one suite and is refused with RunDirError; a search may change num_samples.
Fields that only change how fast trials run (resources, concurrency, retries) are ignored.
Plugin files are part of every trial's identity (by file name): adding one to a suite changes
the id of every trial, so the rerun is refused, and its message says that this is the cause.

This module never imports torch: reports read results through it.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from normbench.errors import RunDirError, RunDirWarning
from normbench.results import paths
from normbench.results.lock import LOCK, RUN_BUSY_HINT, Lease, acquire_lock, release_lock
from normbench.spec import family_hash

EPOCHS = "epochs.jsonl"
TRIALS = "trials.jsonl"
REMOTE_CHECKPOINTS = "remote_checkpoints.jsonl"
# `normbench evaluate`: one line per (trial, inference-time setting) of a finished checkpoint.
EVALUATIONS = "evaluations.jsonl"
# Records of trials restarted from scratch (`normbench run --restart-changed`), kept aside.
SUPERSEDED = "superseded"
# Statuses of a finished trial; "pruned" is a search trial stopped early by ASHA.
DONE_STATUSES = ("completed", "diverged", "pruned")
# Keys a line of each file must hold to be read at all (see `read_jsonl`).
_REQUIRED = {
    EPOCHS: ("trial_id", "epoch"),
    TRIALS: ("trial_id", "status"),
    REMOTE_CHECKPOINTS: ("trial_id", "ref"),
}
# Top-level keys of the resolved suite that do not change any result.
_EXECUTION_KEYS = ("resources", "max_concurrent", "retries", "plugins", "path", "overrides")


class RunStore:
    """Exclusive writer of one run directory. Use as a context manager (releases the lock).

    Opening refuses a run directory holding a symbolic link (`paths.refuse_links`) before
    anything is written; `busy_hint` ends the message when another process holds the lock;
    `role` ("run", "evaluate") is what readers see holding it.
    """

    def __init__(
        self, run_dir: str | os.PathLike[str], *, busy_hint: str = RUN_BUSY_HINT, role: str = "run"
    ) -> None:
        self.run_dir = Path(run_dir)
        if self.run_dir.exists():
            paths.refuse_links(self.run_dir, inside=f"run directory {self.run_dir}")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._lock_fd: int | None = acquire_lock(self.run_dir, busy_hint, role)
        self._fds: dict[str, int] = {}
        self._seen: set[tuple[str, int]] = set()
        self._trials: dict[str, dict[str, Any]] = {}
        for name in (EPOCHS, TRIALS, REMOTE_CHECKPOINTS, EVALUATIONS):
            _cut_torn_tail(self.run_dir / name)
        for rec in read_jsonl(self.run_dir / EPOCHS):
            self._seen.add((rec["trial_id"], int(rec["epoch"])))
        for rec in read_jsonl(self.run_dir / TRIALS):
            self._trials[rec["trial_id"]] = rec  # a later line (a rerun) wins

    # -- lifecycle ------------------------------------------------------------------------
    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        if self._lock_fd is not None:
            release_lock(self._lock_fd)
            self._lock_fd = None

    def lease(self) -> Lease:
        """What this driver's trial workers check before each checkpoint write."""
        assert self._lock_fd is not None, "a closed store holds no lease"
        token = os.pread(self._lock_fd, 128, 0).decode().split()[1]
        return Lease(str(self.run_dir.resolve() / LOCK), token)

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- suite and environment ------------------------------------------------------------
    def write_suite(self, suite: Any) -> None:
        """Write `suite.yaml` and `suite.resolved.json`; refuse an incompatible suite."""
        resolved = check_suite_fits(self.run_dir, suite)
        _atomic_write(self.run_dir / "suite.yaml", suite.text)
        _atomic_write(
            self.run_dir / "suite.resolved.json",
            json.dumps(resolved, indent=2, sort_keys=True, default=str) + "\n",
        )

    def write_environment(self, info: dict[str, Any]) -> None:
        _atomic_write(self.run_dir / "environment.json", json.dumps(info, indent=2) + "\n")

    # -- appends --------------------------------------------------------------------------
    def append_epoch(
        self, trial_id: str, record: dict[str, Any], *, extra: dict[str, Any] | None = None
    ) -> bool:
        """Append one epoch record unless (trial_id, epoch) is stored already.

        `extra` (e.g. the spec) is written only on a trial's first stored line, so a trial
        interrupted before its summary can still be described. Returns True when written.
        """
        paths.trial_dir(self.run_dir, trial_id)  # only ids are stored: readers skip anything else
        key = (trial_id, int(record["epoch"]))
        if key in self._seen:
            return False
        first = not any(t == trial_id for t, _ in self._seen)
        line = {"trial_id": trial_id, **record, **((extra or {}) if first else {})}
        self._append(EPOCHS, line)
        self._seen.add(key)
        return True

    def finish_trial(
        self,
        trial_id: str,
        spec: dict[str, Any],
        cell: dict[str, Any],
        status: str,
        reason: str | None = None,
        **extra: Any,
    ) -> None:
        paths.trial_dir(self.run_dir, trial_id)
        epochs = self.last_epoch(trial_id)
        source = extra.pop("variant_source", None)
        line = {
            "trial_id": trial_id,
            "spec": spec,
            "cell": cell,
            "status": status,
            "reason": reason,
            "epochs": epochs,
            "variant_source": source,
            **extra,
        }
        self._append(TRIALS, line)
        self._trials[trial_id] = line

    def note_checkpoint(self, trial_id: str, epoch: int, ref: str) -> None:
        """Where Ray uploaded a trial's latest checkpoint (remote storage only)."""
        self._append(REMOTE_CHECKPOINTS, {"trial_id": trial_id, "epoch": epoch, "ref": ref})

    def append_evaluation(self, line: dict[str, Any]) -> None:
        """One post-hoc evaluation of a finished checkpoint (`normbench evaluate`)."""
        self._append(EVALUATIONS, line)

    def evaluations(self) -> list[dict[str, Any]]:
        return list(read_jsonl(self.run_dir / EVALUATIONS))

    def checkpoint_refs(self) -> dict[str, str]:
        """Latest uploaded checkpoint per trial (a later line wins)."""
        return {r["trial_id"]: r["ref"] for r in read_jsonl(self.run_dir / REMOTE_CHECKPOINTS)}

    def _append(self, name: str, obj: dict[str, Any]) -> None:
        """One line in one write + fsync. A write that fails or lands short (a full disk) is
        cut off again, so the file keeps only whole lines, and raises StorageFullError."""
        path = self.run_dir / name
        fd = self._fds.get(name)
        if fd is None:
            flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT
            fd = self._fds[name] = paths.open_nofollow(path, flags)
        data = (json.dumps(obj, separators=(",", ":"), default=_json_default) + "\n").encode()
        size = os.fstat(fd).st_size  # the driver is the only writer (it holds the lock)
        try:
            written = os.write(fd, data)  # one write: whole or torn at the end, never interleaved
            if written != len(data):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
            os.fsync(fd)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, size)  # no torn line for the next append to follow
            full = paths.storage_full(exc, path)
            if full is not None:
                raise full from None
            raise

    # -- queries --------------------------------------------------------------------------
    def completed(self) -> set[str]:
        """Ids of trials that need no more work (completed, diverged or pruned)."""
        return {t for t, rec in self._trials.items() if rec["status"] in DONE_STATUSES}

    def started(self) -> dict[str, dict[str, Any]]:
        """First epoch line of each trial with epochs but no finished summary (interrupted or
        failed): it carries the trial's spec, cell and, in a search, its parameters."""
        return _first_lines(self.run_dir, self.completed())

    # -- restarts -------------------------------------------------------------------------
    def supersede(self, trial_ids: set[str], why: dict[str, str]) -> Path:
        """Set unfinished trials back to "never ran", keeping what they had on disk.

        Their lines of `epochs.jsonl`, `trials.jsonl` (a failed attempt's summary) and
        `remote_checkpoints.jsonl` move to `RUN_DIR/superseded/<time>/` (same names), their
        checkpoint folders to its `checkpoints/`, and `why` ({trial_id: reason}) to its
        `reason.json`; so readers (`load_results`, reports, resume) see only what the trials
        record from now on. Nothing is deleted. Returns the archive folder.

        Crash-safe in this order: the archive is written in full before any file of the run
        is replaced (each atomically); a kill half-way leaves the old lines in both places,
        and the next restart archives them again (into a new folder).
        """
        stamp = time.strftime("%Y%m%d-%H%M%S")
        archive = self.run_dir / SUPERSEDED / stamp
        n = 1
        while archive.exists():
            n += 1
            archive = self.run_dir / SUPERSEDED / f"{stamp}-{n}"
        checkpoints = [paths.trial_dir(self.run_dir / "checkpoints", t) for t in sorted(trial_ids)]
        paths.make_dirs(archive, self.run_dir)
        _atomic_write(archive / "reason.json", json.dumps(why, indent=2, sort_keys=True) + "\n")
        kept: dict[str, bytes] = {}
        for name in (EPOCHS, TRIALS, REMOTE_CHECKPOINTS):
            keep, moved = _split_lines(self.run_dir / name, trial_ids)
            if moved:
                _atomic_write(archive / name, moved.decode())
                kept[name] = keep
        for ckpt in checkpoints:
            if ckpt.exists():
                paths.make_dirs(archive / "checkpoints", self.run_dir)
                os.replace(ckpt, archive / "checkpoints" / ckpt.name)
        for name, keep in kept.items():
            fd = self._fds.pop(name, None)  # an O_APPEND fd would keep writing the old file
            if fd is not None:
                os.close(fd)
            _atomic_write(self.run_dir / name, keep.decode())
        self._seen = {(t, e) for t, e in self._seen if t not in trial_ids}
        self._trials = {t: r for t, r in self._trials.items() if t not in trial_ids}
        return archive

    def summary(self, trial_id: str) -> dict[str, Any] | None:
        return self._trials.get(trial_id)

    def stored_epochs(self, trial_id: str) -> set[int]:
        return {e for t, e in self._seen if t == trial_id}

    def last_epoch(self, trial_id: str) -> int:
        return max((e for t, e in self._seen if t == trial_id), default=0)

    def trial_ids(self) -> set[str]:
        return {t for t, _ in self._seen} | set(self._trials)

    def last_record(self, trial_id: str) -> dict[str, Any] | None:
        last = None
        for rec in read_jsonl(self.run_dir / EPOCHS):
            if rec["trial_id"] == trial_id and (last is None or rec["epoch"] >= last["epoch"]):
                last = rec
        return last


def check_suite_fits(run_dir: Path, suite: Any) -> dict[str, Any]:
    """The suite's resolved form, after refusing (RunDirError) a suite whose results would mix
    with those `run_dir` stores (see the module docstring). Reads only: `normbench run
    --dry-run` makes the same refusal as the run."""
    resolved = suite.to_json()
    resolved = json.loads(resolved) if isinstance(resolved, str) else resolved
    raw = paths.read_bytes(run_dir / "suite.resolved.json")
    if raw is None:
        return resolved
    try:
        old = json.loads(raw)
    except ValueError:
        raise RunDirError(
            f"{run_dir / 'suite.resolved.json'} is damaged (not JSON), so this run directory "
            "cannot be checked against the suite; use another --output"
        ) from None
    if fingerprint(old) != fingerprint(resolved):
        _check_compatible(run_dir, old, resolved)
    return resolved


def _check_compatible(run_dir: Path, old: dict[str, Any], new: dict[str, Any]) -> None:
    """Every stored trial must still be a trial of the new suite, up to epochs and
    limit_batches (smoke or truncated runs, told apart by trial id); a search may only
    change num_samples. Raises RunDirError naming the first stored trial that would not fit."""
    where = f"run directory {run_dir} holds results of a different suite"
    if _search_key(old) != _search_key(new):
        raise RunDirError(
            f"{where} (its search section changed; only num_samples may); use another --output"
        )
    new_ids = {t["trial_id"] for t in new.get("trials", [])}
    families = {family_hash(t["spec"]) for t in new.get("trials", [])}
    stored = stored_specs(run_dir)
    if new.get("search"):  # searched trials are variations of the old base specs
        stored = {t["trial_id"]: t["spec"] for t in old.get("trials", [])}
    for tid, spec in sorted(stored.items()):
        if tid not in new_ids and (spec is None or family_hash(spec) not in families):
            plugins = spec and _plugin_change(spec, new.get("trials", []), families)
            if plugins:
                keep = (
                    "run the built-ins with the plugin listed from the start"
                    if plugins.startswith("adding")
                    else "list the plugin files the stored trials were run with"
                )
                raise RunDirError(
                    f"{where}: the plugin files are part of every trial's identity: {plugins} "
                    f"changes the ids of all trials (stored trial {tid} among them); {keep}, "
                    "or use another --output"
                )
            raise RunDirError(
                f"{where}: stored trial {tid} is not a trial of the new suite, so results "
                "would mix; use another --output, or only add trials to the suite"
            )


def _plugin_change(spec: dict[str, Any], trials: list[dict[str, Any]], families: set[str]) -> str:
    """'adding a.py' (or 'removing b.py', both joined by 'and') when `spec` would be a trial
    of the new suite under one of its trials' plugin lists; '' when plugins are not the cause."""
    names = sorted({tuple(Path(p).name for p in t["spec"].get("plugins", ())) for t in trials})
    had = {Path(p).name for p in spec.get("plugins", ())}
    for now in names:
        if set(now) != had and family_hash({**spec, "plugins": list(now)}) in families:
            added, removed = sorted(set(now) - had), sorted(had - set(now))
            change = [f"adding {', '.join(added)}"] if added else []
            return " and ".join(change + ([f"removing {', '.join(removed)}"] if removed else []))
    return ""


def stored_specs(run_dir: Path) -> dict[str, dict[str, Any] | None]:
    """Trial id -> its stored spec (a summary line's wins), None when no line has one."""
    specs: dict[str, dict[str, Any] | None] = {}
    for name in (EPOCHS, TRIALS):
        for rec in read_jsonl(run_dir / name):
            specs[rec["trial_id"]] = rec.get("spec") or specs.get(rec["trial_id"])
    return specs


def started_trials(run_dir: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """`RunStore.started` without opening the store: reads only (no lock, no torn-tail cut),
    so a check that refuses a rerun leaves the run directory as it was."""
    run_dir = Path(run_dir)
    summaries: dict[str, dict[str, Any]] = {}
    for rec in read_jsonl(run_dir / TRIALS):
        summaries[rec["trial_id"]] = rec
    done = {t for t, rec in summaries.items() if rec["status"] in DONE_STATUSES}
    return _first_lines(run_dir, done)


def _first_lines(run_dir: Path, done: set[str]) -> dict[str, dict[str, Any]]:
    first: dict[str, dict[str, Any]] = {}
    for rec in read_jsonl(run_dir / EPOCHS):
        if rec["trial_id"] not in done:
            first.setdefault(rec["trial_id"], rec)
    return first


def _split_lines(path: Path, trial_ids: set[str]) -> tuple[bytes, bytes]:
    """(lines to keep, lines of `trial_ids`) of a JSONL file, each line byte for byte;
    a damaged line stays where it is."""
    if not path.exists():
        return b"", b""
    keep: list[bytes] = []
    moved: list[bytes] = []
    for raw in path.read_bytes().splitlines(keepends=True):
        try:
            obj = json.loads(raw)
        except ValueError:
            obj = None
        mine = isinstance(obj, dict) and obj.get("trial_id") in trial_ids
        (moved if mine else keep).append(raw)
    return b"".join(keep), b"".join(moved)


def fingerprint(resolved: dict[str, Any]) -> str:
    """Hash of the resolved suite without the keys that only change execution speed."""
    d = {k: v for k, v in resolved.items() if k not in _EXECUTION_KEYS}
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _search_key(resolved: dict[str, Any]) -> Any:
    """The search section without num_samples (a search may be extended)."""
    search = resolved.get("search")
    return {k: v for k, v in search.items() if k != "num_samples"} if search else search


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """The JSON objects of a JSONL file, one per line; damaged lines are skipped.

    A torn last line (the writer died mid-line) is skipped silently: it is expected after a
    kill and the next writer cuts it off. Any other line that is not a JSON object (a corrupt
    disk block, a hand edit) is skipped with a `RunDirWarning` naming the file and the line,
    so one bad line never hides the rest of a run.
    """
    try:
        data = paths.read_bytes(path)
    except RunDirError as exc:  # a planted link: never read through
        warnings.warn(f"{exc}; not read", RunDirWarning, stacklevel=2)
        return
    if data is None:
        return
    lines = data.split(b"\n")
    if not data.endswith(b"\n"):
        lines = lines[:-1]  # torn tail: the writer died mid-line
    for lineno, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except ValueError as exc:  # UnicodeDecodeError is a ValueError too
            _warn_skipped(path, lineno, f"not JSON: {exc}")
            continue
        missing = _missing_keys(obj, _REQUIRED.get(path.name, ("trial_id",)))
        if missing:
            _warn_skipped(path, lineno, f"not a record: no valid {', '.join(missing)}")
            continue
        yield obj


def _missing_keys(obj: Any, keys: tuple[str, ...]) -> list[str]:
    """Required keys absent or of the wrong type; a `trial_id` must have the id's form
    (`paths.TRIAL_ID`), as paths are built from it."""
    if not isinstance(obj, dict):
        return list(keys)
    types = {"trial_id": str, "epoch": int, "status": str, "ref": str}
    bad = [k for k in keys if not isinstance(obj.get(k), types[k]) or obj.get(k) is True]
    if "trial_id" in keys and "trial_id" not in bad and not paths.is_trial_id(obj["trial_id"]):
        bad.append("trial_id")
    return bad


def _warn_skipped(path: Path, lineno: int, why: str) -> None:
    warnings.warn(f"{path}:{lineno}: skipped a damaged line ({why})", RunDirWarning, stacklevel=3)


def _cut_torn_tail(path: Path) -> None:
    """Truncate a torn last line so the next append starts on a fresh line."""
    data = paths.read_bytes(path)
    if data and not data.endswith(b"\n"):
        keep = data.rfind(b"\n") + 1
        fd = paths.open_nofollow(path, os.O_RDWR)
        try:
            os.ftruncate(fd, keep)
            os.fsync(fd)
        finally:
            os.close(fd)


def _atomic_write(path: Path, text: str) -> None:
    paths.atomic_write(path, text)


def _json_default(x: Any) -> Any:
    if hasattr(x, "item"):  # numpy scalars
        return x.item()
    if isinstance(x, set | tuple):
        return list(x)
    return str(x)


__all__ = [
    "RunStore", "check_suite_fits", "fingerprint", "read_jsonl", "started_trials", "stored_specs",
]  # fmt: skip
