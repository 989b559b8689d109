"""The `normbench run` driver: validate the suite, open the run directory, run what is left.

Order matters for "a bad suite leaves nothing on disk": the suite is loaded and validated
first, and the run directory is created only afterwards. The driver is the only writer of the
run directory; Ray workers only write their trial's checkpoint folder.

Resume: trial ids are hashes of resolved specs, so a rerun on the same directory skips trials
whose summary says completed/diverged/pruned, resumes interrupted ones from their checkpoints
(and replays epochs the store missed), and runs the rest, failed trials included (a failure
may be transient; the new summary line supersedes the old one). A trial whose layer, backbone
or task changed revision since it was stored has a new id and runs again; one line per such
component says so, and the old records stay (`normbench.results.revisions`). Each invocation
is a fresh Ray Tune experiment; continuity lives in the store and the checkpoints, not in
Tune's own state.
"""

from __future__ import annotations

import contextlib
import errno
import importlib.metadata as md
import os
import platform
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO, cast

from normbench.contract import EpochRecord
from normbench.errors import RunDirError, RunStopped, StorageFullError, Terminated, UserError
from normbench.provenance import source_commit
from normbench.results import paths
from normbench.results.store import RunStore
from normbench.spec import TrialSpec
from normbench.suite.live import LiveView
from normbench.suite.rundir import (
    check_run_dir,
    full_disk_line,
    restore_lost_records,
    run_summary,
    stored_progress,
)


@dataclass(frozen=True)
class RunRequest:
    """Everything `normbench run` was asked to do."""

    suite: Path
    output: Path | None = None
    address: str | None = None  # None: a local Ray with this machine's CPUs
    resume: bool = False
    dry_run: bool = False
    overrides: tuple[str, ...] = ()
    max_epochs: int | None = None
    limit_batches: int | None = None
    plugins: tuple[str, ...] = ()
    storage: str | None = None  # checkpoint storage URI; None: RUN_DIR itself
    num_cpus: int | None = None  # local Ray only; None: os.cpu_count()
    allow_autoscaling: bool = False  # trials may ask for more than any node has today
    restart_changed: bool = False  # restart trials that ran in another environment


def execute(req: RunRequest, *, stream: TextIO | None = None) -> int:
    """Run (or describe) a suite. Returns 0, or 1 when some trial failed, the report could
    not be written or the storage is full (one line naming the file and its file system),
    or 143 after SIGTERM / 130 after SIGINT (one line on stderr; every finished epoch is
    stored and a rerun resumes). A refused preflight, run-directory or environment check
    raises a UserError before anything is written and before Ray starts (`--dry-run` makes
    the same checks)."""
    with _SigtermGuard() as guard:
        try:
            return _execute(req, stream or sys.stdout, guard)
        except KeyboardInterrupt:
            signal_name, code = ("SIGTERM", 143) if guard.received else ("SIGINT", 130)
        where = guard.run_dir
        if guard.opened and where is not None:
            print(
                f"normbench: stopped by {signal_name}; finished trials are stored in {where}; "
                "rerun the same command to resume",
                file=sys.stderr,
            )
        else:
            print(f"normbench: stopped by {signal_name} before any trial ran; nothing was run",
                  file=sys.stderr)  # fmt: skip
        return code


def _execute(req: RunRequest, stream: TextIO, guard: _SigtermGuard) -> int:
    from normbench.suite.loader import load_suite
    from normbench.suite.preflight import run_preflight

    overrides = tuple(req.overrides) + _plugin_overrides(req.suite, req.plugins)
    suite = load_suite(
        req.suite, overrides=overrides, max_epochs=req.max_epochs, limit_batches=req.limit_batches
    )
    run_dir = Path(req.output) if req.output else Path("runs") / suite.name
    guard.run_dir = run_dir
    if req.resume and not (run_dir / "suite.resolved.json").exists():
        raise RunDirError(f"--resume: {run_dir} holds no run to resume (no suite.resolved.json)")
    # Reads only: a refused rerun leaves the run directory byte for byte as it was.
    check_run_dir(run_dir, suite)
    changed = check_environments(suite, run_dir, restart=req.restart_changed)
    found = run_preflight(
        suite,
        run_dir,
        address=req.address,
        num_cpus=req.num_cpus,
        allow_autoscaling=req.allow_autoscaling,
        fetch=not req.dry_run,
        storage=req.storage,
    )
    ray = _RayOnDemand(req.address, req.num_cpus, found.shutdown)
    if req.dry_run:
        ray.stop()
        from normbench.suite.describe import describe

        text = describe(suite, fits=found.fits, where=found.where, run_dir=run_dir)
        print(text + "\n\n" + found.text(), file=stream)
        return 0
    progress = stored_progress(run_dir, suite)
    for line in progress.revisions if progress is not None else ():
        print(line, file=stream)  # the stored trials a component's new revision runs again
    stopped: RunStopped | None = None
    full: StorageFullError | None = None
    try:
        with RunStore(run_dir) as store:
            guard.opened = True
            driver = Driver(store, suite, req.storage, stream, ray.start)
            try:
                store.write_suite(suite)
                store.write_environment(environment())
                if changed:
                    driver.notes.update(_restart(store, changed, stream))
                driver.notes.update(restore_lost_records(store, suite, stream))
                ray.store = store
                failed = driver.run()
            except RunStopped as exc:  # stored results stay; the report shows them
                stopped, failed = exc, True
            except Exception as exc:  # a full disk anywhere (the store, Tune's state files)
                where = getattr(exc, "filename", None) or run_dir
                full = driver.full or paths.storage_full(exc, where)
                if full is None:
                    raise
                failed = True
            summary = run_summary(store)
    finally:
        with guard.deferred():  # a SIGTERM now must not cut Ray's shutdown short
            ray.stop()
    if guard.received:
        raise Terminated()
    print(f"run directory {run_dir}: {summary}", file=stream)
    if full is not None:
        report = _build_report(run_dir, stream, quiet=True)
        print(full_disk_line(full, run_dir, summary, report or "report not written"),
              file=sys.stderr)  # fmt: skip
        return 1
    reported = _build_report(run_dir, stream)
    if stopped is not None:
        print(
            f"normbench: Ray Tune stopped the run ({stopped}); finished trials are stored in "
            f"{run_dir}; trials that were running resume when you rerun the same command",
            file=sys.stderr,
        )
    return 1 if failed or reported is None else 0


class _SigtermGuard:
    """SIGTERM ends `normbench run` with one line and exit status 143 (128 + 15).

    The handler raises `Terminated` (a KeyboardInterrupt: see its docstring) wherever the main
    thread is, then ignores further SIGTERMs, so Ray's shutdown runs to its end; inside
    `deferred()` it only takes note. Nothing else is needed for the results: every store line
    is written whole, checkpoints are replaced atomically, and a rerun resumes. `ray.init`
    installs its own handler, which `ray_adapter.init_ray` undoes. Only the main thread may
    install a handler, so a driver run from another thread keeps Python's.
    """

    def __init__(self) -> None:
        self.received = False
        self.run_dir: Path | None = None
        self.opened = False  # the run directory was opened (something may be stored)
        self._defer = False
        self._previous: Any = None
        self._installed = False

    def __enter__(self) -> _SigtermGuard:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
            self._installed = True
        return self

    def __exit__(self, *exc: object) -> None:
        if self._installed:
            signal.signal(signal.SIGTERM, self._previous)

    def _handle(self, signum: int, frame: Any) -> None:
        first = not self.received
        self.received = True
        if first and not self._defer:
            raise Terminated()

    @contextmanager
    def deferred(self) -> Iterator[None]:
        self._defer = True
        try:
            yield
        finally:
            self._defer = False


def check_environments(suite: Any, run_dir: Path, *, restart: bool) -> dict[str, str]:
    """{trial_id: difference} of the unfinished trials of `run_dir` that ran in another
    execution environment than this run gives them (threads, device). Without `restart` the
    first one is refused (RunDirError); reads the run directory only, so a refusal changes
    nothing on disk, and comes before Ray starts."""
    from normbench.results.store import started_trials
    from normbench.spec import environment_conflict

    if not (run_dir / "epochs.jsonl").is_file():
        return {}
    trials = suite.trials()
    specs = {t.trial_id: t.spec for t in trials}
    base = trials[0].spec if suite.search is not None and trials else None
    changed: dict[str, str] = {}
    for tid, first in sorted(started_trials(run_dir).items()):
        spec = specs.get(tid) or base
        diff = spec and environment_conflict(spec, first.get("environment"))
        if not diff:
            continue
        if not restart:
            raise RunDirError(
                f"trial {tid} in {run_dir} ran in another environment ({diff}); it cannot "
                "resume there: rerun with the original resources.cpus / train.num_threads / "
                "train.device, or pass --restart-changed to restart such trials from scratch "
                "(their old records are kept aside), or use another --output"
            )
        changed[tid] = diff
    return changed


def _restart(store: RunStore, changed: dict[str, str], stream: TextIO) -> dict[str, list[str]]:
    """Supersede the records and checkpoints of trials restarted with --restart-changed;
    returns the note each one's summary line will carry."""
    why = {tid: f"environment changed ({diff})" for tid, diff in changed.items()}
    archive = store.supersede(set(changed), why)
    shown = archive.relative_to(store.run_dir)
    notes: dict[str, list[str]] = {}
    for tid, diff in sorted(changed.items()):
        note = (
            f"restarted from scratch (--restart-changed): it had run in another environment "
            f"({diff}); its earlier records and checkpoint are in {shown}/"
        )
        notes[tid] = [note]
        print(f"trial {tid}: {note}", file=stream)
    return notes


class _RayOnDemand:
    """Starts (or joins) Ray the first time a trial must run: a finished run never starts it.
    A cluster the preflight already joined (`shutdown` given) is used as it is."""

    def __init__(
        self, address: str | None, num_cpus: int | None, shutdown: Callable[[], None] | None
    ) -> None:
        self.address, self.num_cpus, self.shutdown = address, num_cpus, shutdown
        self.store: RunStore | None = None
        self._noted = False

    def start(self) -> None:
        from normbench.suite import ray_adapter

        if self.shutdown is None:
            self.shutdown = ray_adapter.init_ray(self.address, num_cpus=self.num_cpus)
        if self.store is not None and not self._noted:
            self.store.write_environment(environment(ray_adapter.cluster_resources()))
            self._noted = True

    def stop(self) -> None:
        if self.shutdown is not None:
            self.shutdown()
            self.shutdown = None


class Driver:
    """Turns adapter events into store lines and live-view updates (the `Events` protocol)."""

    def __init__(
        self, store: RunStore, suite: Any, storage: str | None, stream: TextIO, start_ray: Any
    ) -> None:
        self.store, self.suite, self.storage, self.stream = store, suite, storage, stream
        self.start_ray = start_ray
        self.cells = {t.trial_id: t.cell for t in suite.trials()}
        self.context: dict[str, Any] = {}  # the search being run: cell, study name
        self.failed = 0
        self.finished: set[str] = set()
        self.last: dict[str, dict[str, Any]] = {}
        self.notes: dict[str, list[str]] = {}  # trial_id -> what happened to it on the way
        self.full: StorageFullError | None = None  # the storage filled up: the run stops
        self._view: LiveView | None = None

    @property
    def view(self) -> LiveView:
        """The live view; open only while `run` runs, which is when the adapter sends events."""
        if self._view is None:
            raise RuntimeError("Driver events arrive only while Driver.run() is running")
        return self._view

    def run(self) -> int:
        """Run every unfinished trial; returns how many failed."""
        trials = self.suite.trials()
        done = self.store.completed()
        if self.suite.search is None:
            total, already = len(trials), sum(t.trial_id in done for t in trials)
        else:
            total, already = self.suite.search.num_samples * len(trials), None
        with LiveView(total, already, stream=self.stream) as self._view:
            if self.suite.search is None:
                self._run_grid([t for t in trials if t.trial_id not in done])
            else:
                for trial in trials:
                    self._run_search(trial, single=len(trials) == 1)
        return self.failed

    def _plan(self, **search: Any) -> Any:
        from normbench.suite import ray_adapter

        res = self.suite.resources
        storage = self.storage or str((self.store.run_dir / "ray").resolve())
        return ray_adapter.Plan(
            cpus=res.cpus, gpus=res.gpus, max_concurrent=self.suite.max_concurrent,
            retries=self.suite.retries, storage_path=storage,
            name=f"{self.suite.name}-{time.strftime('%Y%m%d-%H%M%S')}",
            **search,
        )  # fmt: skip

    def _task(self, spec: TrialSpec, *, searched: bool = False) -> Any:
        """A grid task carries its own trial's resume facts; a search task everyone's (its
        trial ids are only known once sampled)."""
        from normbench.suite import ray_adapter

        # The run directory itself is resolved, never a link planted below it.
        root = None if self.storage else str(self.store.run_dir.resolve() / "checkpoints")
        if root is not None:
            paths.make_dirs(Path(root), self.store.run_dir.resolve())
        ids = self.store.trial_ids() if searched else {spec.trial_id}
        stored = {t: self.store.last_epoch(t) for t in ids if self.store.last_epoch(t)}
        refs = self.store.checkpoint_refs() if self.storage else {}
        refs = {t: r for t, r in refs.items() if t in ids}
        lease = self.store.lease() if root is not None else None  # workers reach the lock
        return ray_adapter.Task(spec, root, stored_epochs=stored, remote_refs=refs, lease=lease)

    def _run_grid(self, todo: list[Any]) -> None:
        from normbench.suite import ray_adapter

        if todo:
            self.start_ray()
            ray_adapter.run([self._task(t.spec) for t in todo], self._plan(), self)

    def _run_search(self, trial: Any, *, single: bool) -> None:
        from normbench.suite import ray_adapter, search

        cfg = self.suite.search
        url = search.storage_url(cfg, self.store.run_dir)
        name = search.study_name(cfg, self.suite.name, trial.spec, single)
        done = {t: self.store.summary(t) or {} for t in self.store.completed()}
        session = search.SearchSession(cfg, url, name, trial.spec, done, self.store.started())
        for note in session.notes:
            self.view.note(note)
        self.view.add_done(min(session.finished, cfg.num_samples))
        self.context = {"cell": trial.cell, "study": name, "session": session}
        self.view.note(
            f"search {name}: {session.finished} of {cfg.num_samples} samples finished earlier, "
            f"{session.total} to run ({len(session.resume)} resumed)"
        )
        if session.total == 0:
            return
        self.start_ray()
        plan = self._plan(
            searcher=session,
            num_samples=session.total,
            scheduler=search.build_scheduler(cfg, trial.spec.epochs),
            metric=cfg.metric,
            mode=cfg.mode,
        )
        try:
            ray_adapter.run([self._task(trial.spec, searched=True)], plan, self)
        finally:
            session.close()
        self._note_best(name)

    def _note_best(self, study: str) -> None:
        """One line with the best finished sample per variant (and so overall)."""
        from normbench.suite.search import best_per_variant

        rows = [self.store.summary(t) or {} for t in self.store.completed()]
        mine = [r for r in rows if r.get("study") == study]
        best = best_per_variant(mine, self.suite.search.mode)
        if best:
            parts = [f"{v}: {b['value']:.2f} {b.get('params')}" for v, b in sorted(best.items())]
            self.view.note(f"search {study}: best {self.suite.search.metric} per variant: "
                           + "; ".join(parts))  # fmt: skip

    # -- Events ---------------------------------------------------------------------------
    def _cell(self, tid: str, spec: TrialSpec | None = None) -> dict[str, Any]:
        """A grid trial's cell; a searched trial's is its cell's with the searched axes."""
        if tid in self.cells:
            return self.cells[tid]
        cell = dict(self.context.get("cell", {}))
        if spec is not None:
            for axis in ("variant", "backbone"):
                if cell.get(f"{axis}_name") != getattr(spec, axis):
                    cell[axis] = cell[f"{axis}_name"] = getattr(spec, axis)
            cell["batch_size"] = spec.batch_size
        return cell

    def _search_fields(self, tid: str, spec: TrialSpec) -> dict[str, Any]:
        """What a searched trial's lines carry: its study, trial number and parameters."""
        session = self.context.get("session")
        if session is None:
            return {}
        return {
            "study": self.context["study"],
            "study_trial": session.active.get(tid),
            "params": session.params_of(spec),
        }

    def on_start(self, spec: TrialSpec) -> None:
        tid = spec.trial_id
        cell = self._cell(tid, spec)
        label = " ".join(str(cell[k]) for k in ("variant", "backbone") if k in cell) or tid
        if self.context:
            label += f" #{tid[:6]}"
        self.view.start(tid, label, spec.epochs, seed=spec.seed)

    def on_record(self, spec: TrialSpec, record: dict[str, Any]) -> None:
        from normbench.suite.ray_adapter import CHECKPOINT_NOTE

        tid = spec.trial_id
        if CHECKPOINT_NOTE in record:
            record = dict(record)
            note = record.pop(CHECKPOINT_NOTE)
            self.notes.setdefault(tid, []).append(note)
            self.view.note(f"warning: {note}")
        extra = {"spec": spec.to_dict(), "cell": self._cell(tid, spec)}
        searched = self._search_fields(tid, spec)
        if searched:  # on epoch lines "params" is the parameter count
            searched["search_params"] = searched.pop("params")
        try:
            self.store.append_epoch(tid, record, extra={**extra, **searched})
        except StorageFullError as exc:
            self._stop_full(spec, exc)
        if self.context.get("session") is not None:
            self.context["session"].report(tid, record)
        self.last[tid] = record
        self.view.record(tid, cast(EpochRecord, record))  # Ray hands results over as dicts

    def on_checkpoint(self, spec: TrialSpec, epoch: int, ref: str) -> None:
        try:
            self.store.note_checkpoint(spec.trial_id, epoch, ref)
        except StorageFullError as exc:
            self._stop_full(spec, exc)

    def _stop_full(self, spec: TrialSpec, exc: StorageFullError) -> None:
        """The store could not write (full storage): store the trial's failure if a short
        line still fits, then stop the run (`execute` ends it in one line)."""
        self.full = exc
        reason = f"StorageFullError: {exc.strerror}"
        with contextlib.suppress(OSError):
            self.on_end(spec, reason, error={"type": "StorageFullError", "message": exc.strerror})
        raise exc

    def on_notes(self, spec: TrialSpec, notes: list[str]) -> None:
        """Notes a trial's failure carried (a checkpoint moved aside before the trial failed,
        maybe before its first record), for its summary line."""
        kept = self.notes.setdefault(spec.trial_id, [])
        for note in notes:
            if note not in kept:  # a record may have carried it already
                kept.append(note)
                self.view.note(f"warning: {note}")
        if not kept:
            del self.notes[spec.trial_id]

    def on_end(
        self, spec: TrialSpec, reason: str | None, *, error: dict[str, Any] | None = None
    ) -> None:
        tid = spec.trial_id
        if tid in self.finished:
            return
        last = self.last.get(tid) or self.store.last_record(tid)
        status, reason = _status(spec, last, reason, searched=bool(self.context))
        extra: dict[str, Any] = {"variant_source": (last or {}).get("variant_source")}
        if tid in self.notes:
            extra["notes"] = self.notes[tid]
        if error is not None:
            extra["error"] = error  # type, message, last traceback lines
        if self.context:
            extra.update(self._search_fields(tid, spec))
            extra["value"] = (last or {}).get(self.suite.search.metric)
        cell = self._cell(tid, spec)
        try:
            self.store.finish_trial(tid, spec.to_dict(), cell, status, reason, **extra)
        except StorageFullError as exc:
            self.full = self.full or exc
            raise
        if self.context.get("session") is not None:  # store first, then the study
            self.context["session"].finish(tid, {**extra, "status": status})
        self.finished.add(tid)
        self.failed += status == "failed"
        self.view.end(tid, status, reason)
        if (error or {}).get("type") == "StorageFullError" and self.full is None:
            # A trial's checkpoint did not fit: every other trial would fail the same way.
            self.full = StorageFullError(errno.ENOSPC, str((error or {}).get("message")))
            raise self.full


def _status(
    spec: TrialSpec, last: dict[str, Any] | None, error: str | None, *, searched: bool
) -> tuple[str, str | None]:
    """A finished trial's status and reason, from how it ended and its last record."""
    if error is not None:
        return "failed", error
    if last is None:
        return "failed", "the trial ended without reporting an epoch"
    if last.get("status") == "diverged":
        why = last.get("diverged_reason")
        return "diverged", f"diverged at epoch {last['epoch']}" + (f": {why}" if why else "")
    if int(last["epoch"]) < spec.epochs:
        if searched:
            return "pruned", f"stopped early by ASHA at epoch {last['epoch']} of {spec.epochs}"
        return "failed", f"stopped at epoch {last['epoch']} of {spec.epochs}"
    return "completed", None


def environment(cluster: dict[str, float] | None = None) -> dict[str, Any]:
    """Versions, device and host: stored with every run (benchmark hygiene)."""
    import torch

    versions: dict[str, str | None] = {}
    for pkg in ("torch", "torchvision", "ray", "optuna", "numpy", "pandas", "normbench"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = None
    cuda = torch.cuda.is_available()
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions,
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "cuda": torch.version.cuda if cuda else None,
        "git_commit": source_commit(),
        "hostname": socket.gethostname(),
        "cpu_count": os.cpu_count(),
        "ray_cluster": cluster,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _plugin_overrides(suite_path: Path, plugins: tuple[str, ...]) -> tuple[str, ...]:
    """`--plugin FILE` as a `plugins=[...]` override that keeps the suite's own plugins."""
    if not plugins:
        return ()
    import json

    from normbench.suite.yamlmap import parse, read_text

    try:  # the suite loader's own reader: bounded, UTF-8, no tags
        data, _ = parse(read_text(Path(suite_path)), str(suite_path))
        own = list(data.get("plugins") or []) if isinstance(data, dict) else []
    except UserError:
        own = []  # the loader reports the file's problem itself
    extra = [str(Path(p).expanduser().resolve()) for p in plugins]
    return (f"plugins={json.dumps(own + extra)}",)


def _build_report(run_dir: Path, stream: TextIO, *, quiet: bool = False) -> str | None:
    """Write the run's report; returns "report: PATH", or None (and unless `quiet`, a line on
    stderr) when it could not be written. Results are stored either way, and `normbench
    report RUN_DIR` can retry."""
    try:
        from normbench.reports import build_report

        out = build_report([run_dir], run_dir / "report")
    except Exception as exc:  # a report bug must not hide finished results
        why = " ".join(f"{type(exc).__name__}: {exc}".split())
        if not quiet:
            print(
                f"normbench: error: report not written ({why}); the results are stored in "
                f"{run_dir}: retry with `normbench report {run_dir}`",
                file=sys.stderr,
            )
        return None
    print(f"report: {out}", file=stream)
    return f"report: {out}"
