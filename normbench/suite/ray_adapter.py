"""Ray Tune adapter: the only module that imports Ray (its APIs changed often; churn stays here).

The driver hands over plain `Task`s and an `Events` object; Ray runs one function trainable per
trial, which calls `normbench.engine.loop.run_trial` and reports every epoch record. A Tune
`Callback` runs in the driver process and turns Ray's trial events back into plain calls, so
the driver stays the only writer of the run directory and no Ray type leaves this module.

Checkpoints. With the default storage (the run directory, a local or shared folder every node
can reach) a trial's checkpoint dir is RUN_DIR/checkpoints/<trial_id>: `run_trial` writes it in
place and nothing is copied. With an explicit storage URI (any pyarrow file system: s3://,
gs://, file://...) the trial trains in a node-local folder and reports it each epoch through
Ray's `Checkpoint`, which uploads it under the storage path; the driver notes where it landed
(`Events.on_checkpoint`) so a later run can download it and continue.

Records a killed driver never stored are not lost: the checkpoint holds every record yielded
so far, and a resumed trial replays those the store lacks before training on.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from normbench.results.lock import Lease
from normbench.spec import TrialSpec

os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # the old reporter honours verbose=0
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")  # no CSV/TBX per trial
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
# Ctrl-C stops the whole run (KeyboardInterrupt; the store keeps what finished, a rerun
# resumes) instead of Tune's soft stop, after which the driver would start the next search.
os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")

import ray  # noqa: E402  (after the environment above: Tune reads it at import)
from ray import tune  # noqa: E402
from ray.tune.search import Searcher  # noqa: E402

# Record key set on the first record a trial yields after its invalid checkpoint was moved
# aside; the driver turns it into a note on the trial's summary line instead of storing it.
CHECKPOINT_NOTE = "checkpoint_note"
# Tune result key (not a record key): the Ray Train placement group of a DDP trial's ranks,
# which the driver removes when Tune ends the trial (`_Relay._release`).
PLACEMENT_GROUP = "nb_placement_group"


@dataclass(frozen=True)
class Task:
    """One grid trial (spec) or one search (base spec + `params` sampled per trial)."""

    spec: TrialSpec
    checkpoint_root: str | None  # RUN_DIR/checkpoints; None: remote storage via Ray
    stored_epochs: dict[str, int] = field(default_factory=dict)  # trial_id -> epochs stored
    remote_refs: dict[str, str] = field(default_factory=dict)  # trial_id -> checkpoint path
    # The driver's hold on the run directory, checked before each checkpoint write: a worker
    # that outlives its driver (SIGKILL, SIGTERM) never writes again. None: remote storage.
    lease: Lease | None = None

    def to_config(self) -> dict[str, Any]:
        return {
            "spec": self.spec.to_dict(),
            "checkpoint_root": self.checkpoint_root,
            "stored_epochs": self.stored_epochs,
            "remote_refs": self.remote_refs,
            "lease": dataclasses.asdict(self.lease) if self.lease else None,
        }


class Events(Protocol):
    """What the driver hears, in the driver process, as trials run."""

    def on_start(self, spec: TrialSpec) -> None: ...
    def on_record(self, spec: TrialSpec, record: dict[str, Any]) -> None: ...
    def on_checkpoint(self, spec: TrialSpec, epoch: int, ref: str) -> None: ...
    def on_notes(self, spec: TrialSpec, notes: list[str]) -> None: ...
    def on_end(
        self, spec: TrialSpec, reason: str | None, *, error: dict[str, Any] | None = None
    ) -> None: ...


@dataclass(frozen=True)
class Plan:
    """How to run: resources per trial, caps, retries, storage, optional search."""

    cpus: float
    gpus: float
    max_concurrent: int | None
    retries: int
    storage_path: str  # Tune's experiment folder (a local path or a URI)
    name: str
    searcher: Any = None  # a normbench.suite.search.SearchSession (ask/tell on the study)
    num_samples: int = 1
    scheduler: Any = None
    metric: str | None = None
    mode: str | None = None


def spec_of(config: dict[str, Any]) -> TrialSpec:
    """The trial a Ray config stands for: the task's spec with sampled values applied."""
    from normbench.suite.matrix import searched_spec

    spec = TrialSpec.from_dict(config["task"]["spec"])
    params = config.get("params")
    return searched_spec(spec, params) if params else spec


def run(tasks: list[Task], plan: Plan, events: Events) -> None:
    """Run grid tasks (one Ray trial each) or one search task (`plan.searcher` set)."""
    workers = (plan.cpus, plan.gpus)  # per device: what each Ray Train worker asks for
    trainable = tune.with_resources(
        tune.with_parameters(_trainable, worker_resources=workers), _trial_resources(plan)
    )
    searcher = None
    if plan.searcher is None:
        space = {"task": tune.grid_search([t.to_config() for t in tasks])}
    else:
        space = {"task": tasks[0].to_config()}
        searcher = _StudySearcher(plan.searcher)
    tuner = tune.Tuner(
        trainable,
        param_space=space,
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            scheduler=plan.scheduler,
            metric=plan.metric if plan.searcher or plan.scheduler else None,
            mode=plan.mode if plan.searcher or plan.scheduler else None,
            num_samples=plan.num_samples if plan.searcher is not None else 1,
            max_concurrent_trials=plan.max_concurrent,
            reuse_actors=_reuse_actors(tasks, plan),
            trial_dirname_creator=_short_dirname,
        ),
        run_config=tune.RunConfig(
            name=plan.name,
            storage_path=plan.storage_path,
            failure_config=tune.FailureConfig(max_failures=plan.retries),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            callbacks=[_Relay(events)],
            verbose=0,
            progress_reporter=_Silent(),
            log_to_file=False,
        ),
    )
    # Trial errors reach the store and the live view through the relay; Tune's own log lines
    # about them (tracebacks, "Trials did not complete") would only repeat them.
    tune_logger = logging.getLogger("ray.tune")
    level = tune_logger.level
    tune_logger.setLevel(logging.CRITICAL)
    try:
        fit(tuner)
    finally:
        tune_logger.setLevel(level)


def _reuse_actors(tasks: list[Task], plan: Plan) -> bool:
    """Whether Tune may hand a finished trial's actor to the next trial (which skips a worker
    start, a torch import, per trial): not when a trial may run DDP. Tune reuses the actor of a
    trial a scheduler stopped (ASHA stops every trial at its last epoch) while that trial's
    `TorchTrainer.fit()` has not returned; the reset fails, the next trial is dropped without
    the searcher hearing of it, and its `max_concurrent` slot is never freed (Ray issue 54305:
    1 of 6 samples, then nothing). Without reuse the stopped actor is killed, and the driver
    removes its ranks' placement group (`_Relay._release`)."""
    searched = plan.searcher is not None and "devices" in plan.searcher.search.space
    return not searched and not any(_is_ddp(t.spec) for t in tasks)


def fit(tuner: Any) -> None:
    """`tuner.fit()`; Tune's own crash on a Ray error it does not handle (its actor manager
    raises RuntimeError for a worker killed by Ray's memory monitor) becomes `RunStopped` with
    Ray's first line, so the driver can report it in one line and keep what is stored."""
    from normbench.errors import RunStopped

    try:
        tuner.fit()
    except RuntimeError as exc:
        cause = exc.__cause__
        if not isinstance(cause, ray.exceptions.RayError):
            raise
        first = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
        raise RunStopped(f"{type(cause).__name__}: {first}") from exc


class _StudySearcher(Searcher):
    """Ray Tune searcher over a `SearchSession`: each new Ray trial is one asked (or resumed)
    study trial. Results reach the study through the driver (`Events.on_end`), after the
    store has them, so this class only proposes."""

    def __init__(self, session: Any) -> None:
        super().__init__()
        self.session = session

    def set_search_properties(self, metric: Any, mode: Any, config: dict, **spec: Any) -> bool:
        self._metric, self._mode = metric, mode
        return True

    def suggest(self, trial_id: str) -> dict[Any, Any] | None:
        config = self.session.suggest()
        return Searcher.FINISHED if config is None else config  # type: ignore[return-value]

    def on_trial_complete(self, trial_id: str, result: Any = None, error: bool = False) -> None:
        return None

    def save(self, checkpoint_path: str) -> None:
        return None  # the Optuna study is the searcher's state

    def restore(self, checkpoint_path: str) -> None:
        return None


def _short_dirname(trial: Any) -> str:
    return f"trial_{trial.trial_id}"


def _trial_resources(plan: Plan) -> Callable[[dict[str, Any]], Any]:
    """Resources per Tune trial: the plan's, or for a DDP trial next to nothing for the
    function that drives Ray Train (its workers ask for the plan's resources each)."""

    def request(config: dict[str, Any]) -> Any:
        spec = spec_of(config)
        if _is_ddp(spec):
            return tune.PlacementGroupFactory([DRIVER_BUNDLE])
        return tune.PlacementGroupFactory([{"CPU": plan.cpus, "GPU": plan.gpus}])

    return request


# The Tune trial of a DDP trial only waits on its Ray Train run, so it asks for no CPU: N
# workers of `cpus` each fit on N * cpus CPUs. Tune refuses an empty bundle, hence one byte.
DRIVER_BUNDLE: dict[str, float] = {"memory": 1}


def _is_ddp(spec: TrialSpec) -> bool:
    return spec.devices > 1 and spec.parallel == "ddp"


# ---------------------------------------------------------------- inside the Ray worker
def _trainable(config: dict[str, Any], worker_resources: tuple[float, float] = (1, 0)) -> None:
    """Ray function trainable. Any exception leaves with its reason attached (see `_Reason`),
    so the driver can store it however Ray reports the failure. `worker_resources` (cpus,
    gpus) are what each Ray Train worker of a multi-device trial asks for."""
    try:
        _train(config, worker_resources)
    except Exception as exc:
        exc.add_note(REASON_MARK + json.dumps(_Reason.of(exc).to_dict()))
        raise


def _train(config: dict[str, Any], worker_resources: tuple[float, float]) -> None:
    """Replay unstored records, then train and report each epoch. The note of a checkpoint
    moved aside reaches the driver on the first record, or with the failure (`NOTE_MARK`)."""
    from normbench.engine.checkpoint import load_or_quarantine

    task = config["task"]
    spec = spec_of(config)  # a DDP trial's workers fit it to their own grants
    ckpt_dir = _checkpoint_dir(task, spec.trial_id)
    payload, note = load_or_quarantine(ckpt_dir, trial_id=spec.trial_id)
    try:
        _replay_and_run(task, spec, ckpt_dir, payload, note, worker_resources)
    except Exception as exc:
        if note is not None:  # failed, maybe before the record that carries it: keep it
            exc.add_note(NOTE_MARK + json.dumps(note))
        raise


def _replay_and_run(
    task: dict[str, Any],
    spec: TrialSpec,
    ckpt_dir: str,
    payload: dict[str, Any] | None,
    note: str | None,
    worker_resources: tuple[float, float],
) -> None:
    """Report the checkpoint's records the driver has not stored, then train on."""
    from normbench.engine.loop import run_trial

    tid = spec.trial_id
    stored = int(task["stored_epochs"].get(tid, 0))
    records = list((payload or {}).get("records", []))
    del payload
    reported = False
    for rec in records:
        if int(rec["epoch"]) > stored:  # records a killed driver never stored
            tune.report(_result(tid, rec))
            reported = True
    if _is_ddp(spec):
        _run_data_parallel(task, spec, ckpt_dir, worker_resources, note)
        return
    with _leased(task.get("lease")):
        for record in run_trial(_fit_to_worker(spec), checkpoint_dir=ckpt_dir):
            placed = {**record, **_placement()}
            if note is not None:  # an invalid checkpoint was moved aside: tell the driver once
                placed[CHECKPOINT_NOTE], note = note, None
            ckpt = None if task["checkpoint_root"] else tune.Checkpoint.from_directory(ckpt_dir)
            tune.report(_result(tid, placed), checkpoint=ckpt)  # uploads before returning
            reported = True
    if not reported:
        # Finished and fully stored, but its summary line was lost with a killed driver: report
        # the last record again (the store ignores the repeat) so searchers and schedulers get
        # their metric and the driver writes the summary.
        for rec in records[-1:]:
            tune.report(_result(tid, rec))
    if not task["checkpoint_root"]:
        shutil.rmtree(ckpt_dir, ignore_errors=True)  # the node-local copy; storage keeps it


def _run_data_parallel(
    task: dict[str, Any],
    spec: TrialSpec,
    ckpt_dir: str,
    resources: tuple[float, float],
    note: str | None = None,
) -> None:
    """Ray's Train-inside-Tune pattern: a TorchTrainer of `spec.devices` workers, each running
    `run_trial`; rank 0's records reach Tune through `TuneReportCallback` (the first one
    carrying `note`, a quarantined checkpoint, as on the one-device path).

    The plan's resources are per worker (per device); DDP uses NCCL on GPUs, gloo on CPUs.
    """
    from ray import train
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    if not task["checkpoint_root"]:
        raise RuntimeError(
            "a multi-device trial needs the run directory on storage every node reaches "
            "(--output on a shared folder); --storage URI is not supported for devices > 1"
        )
    cpus, gpus = resources
    callbacks: list[Any] = [TuneReportCallback()]  # Ray types it as a Tune callback
    trainer = TorchTrainer(
        _train_worker,
        train_loop_config={
            "spec": spec.to_dict(),
            "checkpoint_dir": ckpt_dir,
            "note": note,
            "lease": task.get("lease"),
        },
        torch_config=TorchConfig(backend="nccl" if gpus > 0 and spec.device != "cpu" else "gloo"),
        scaling_config=train.ScalingConfig(
            num_workers=spec.devices,
            use_gpu=gpus > 0,
            resources_per_worker={"CPU": cpus, "GPU": gpus} if gpus > 0 else {"CPU": cpus},
        ),
        run_config=train.RunConfig(
            name=f"train_{spec.trial_id}",
            storage_path=str(Path(task["checkpoint_root"]).parent / "ray" / "train"),
            failure_config=train.FailureConfig(max_failures=0),  # Tune's retries own restarts
            callbacks=callbacks,
        ),
    )
    trainer.fit()


def _train_worker(config: dict[str, Any]) -> None:
    """One Ray Train worker (one device): `run_trial` on this rank, one report per epoch."""
    from ray import train

    from normbench.engine.loop import run_trial

    spec = _fit_to_worker(TrialSpec.from_dict(config["spec"]), rank_device=True)
    rank = train.get_context().get_world_rank()
    note = config.get("note")
    with _leased(config.get("lease")):
        for rec in run_trial(spec, checkpoint_dir=config["checkpoint_dir"]):
            placed = {**rec, **_placement()}
            if note is not None:  # an invalid checkpoint was moved aside: tell the driver once
                placed[CHECKPOINT_NOTE], note = note, None
            # every rank reports (a barrier); Tune gets rank 0's
            train.report({**_result(spec.trial_id, placed), **_group()} if rank == 0 else {})


@contextlib.contextmanager
def _leased(lease: dict[str, str] | None) -> Iterator[None]:
    """Checkpoint writes of this block check the driver's lease first (see `Task.lease`)."""
    if lease is None:
        yield
        return
    from normbench.engine.checkpoint import lease as checkpoint_lease

    with checkpoint_lease(Lease(**lease).check):
        yield


def _group() -> dict[str, str]:
    """The placement group of this Ray Train rank, for the driver to remove (see `_Relay`)."""
    group = ray.util.get_current_placement_group()
    return {} if group is None else {PLACEMENT_GROUP: group.id.hex()}


def _fit_to_worker(spec: TrialSpec, *, rank_device: bool = False) -> TrialSpec:
    """The spec as this Ray worker runs it: threads from the CPUs Ray granted it (unless the
    spec sets them), the device from the GPUs it granted (`granted_device`: a zero-GPU worker
    trains on the CPU even where CUDA is visible). Every process decides for itself: the Tune
    trial that drives a DDP run asks for no GPU and may see none, its Ray Train workers do.
    `rank_device`: a DDP rank, whose GPU is Ray Train's `get_device()` (its local rank's)."""
    from normbench.engine.device import granted_device

    grant = ray.get_runtime_context().get_assigned_resources()
    gpus = len(ray.get_gpu_ids())
    device = granted_device(spec.device, gpus)
    if rank_device and device.startswith("cuda"):
        from ray.train.torch import get_device

        device = str(get_device())
    threads = spec.num_threads or max(int(math.floor(grant.get("CPU", 1))), 1)
    return spec.replace(device=device, num_threads=threads)


def _checkpoint_dir(task: dict[str, Any], tid: str) -> str:
    """The trial's checkpoint folder; for remote storage, a node-local copy of the latest one
    (Tune's own on a retry within this run, else the one the store noted), never a leftover."""
    if task["checkpoint_root"]:
        return str(Path(task["checkpoint_root"]) / tid)
    local = Path(tempfile.gettempdir()) / "normbench-checkpoints" / tid
    shutil.rmtree(local, ignore_errors=True)
    local.mkdir(parents=True)
    latest = tune.get_checkpoint()
    ref = task["remote_refs"].get(tid)
    if latest is not None:
        latest.to_directory(str(local))
    elif ref:
        tune.Checkpoint(ref).to_directory(str(local))
    return str(local)


def _placement() -> dict[str, Any]:
    """Where and when the epoch ran: Ray node, logical GPU ids, wall-clock end (unix time)."""
    return {
        "ray_node_id": ray.get_runtime_context().get_node_id(),
        "ray_gpu_ids": [str(g) for g in ray.get_gpu_ids()],
        "finished_at": time.time(),
    }


def _result(tid: str, rec: dict[str, Any]) -> dict[str, Any]:
    """Scalars at the top level (for schedulers and searchers) plus the full record as JSON."""
    flat = {k: v for k, v in rec.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    return {**flat, "nb_trial_id": tid, "nb_record": json.dumps(rec, default=str)}


# ---------------------------------------------------------------- in the driver process
class _Relay(tune.Callback):
    """Tune callback (runs in the driver): Ray trial events -> plain `Events` calls."""

    def __init__(self, events: Events) -> None:
        self.events = events
        self.epoch: dict[str, int] = {}
        self.groups: dict[str, str] = {}  # Tune trial id -> its DDP ranks' placement group

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles its config into the experiment folder (for Tuner.restore, unused here);
        # the driver-side events object (store, live view) stays out of that file.
        return {"epoch": self.epoch}

    def _spec(self, trial: Any) -> TrialSpec:
        return spec_of(trial.config)

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.events.on_start(self._spec(trial))

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info):
        if PLACEMENT_GROUP in result:
            self.groups[trial.trial_id] = result[PLACEMENT_GROUP]
        if "nb_record" not in result:
            return
        record = json.loads(result["nb_record"])
        self.epoch[trial.trial_id] = int(record["epoch"])
        self.events.on_record(self._spec(trial), record)

    def on_checkpoint(self, iteration: int, trials: list, trial: Any, checkpoint: Any, **info):
        ref = _uri(checkpoint)
        self.events.on_checkpoint(self._spec(trial), self.epoch.get(trial.trial_id, 0), ref)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._release(trial)
        self.events.on_end(self._spec(trial), None)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._release(trial)
        reason = _Reason.of_trial(trial)
        error = reason.to_dict()
        self.events.on_notes(self._spec(trial), error.pop("notes"))  # the summary line's
        self.events.on_end(self._spec(trial), reason.line(), error=error)

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        """A failed attempt Tune retries: keep the notes its failure carried (the retry
        starts without the checkpoint that was moved aside, so it cannot say it again)."""
        self.events.on_notes(self._spec(trial), list(_Reason.of_trial(trial).notes))

    def _release(self, trial: Any) -> None:
        """Remove the placement group of a DDP trial Tune has ended (its ranks die with it).

        A scheduler's stop kills the Tune trial before `TorchTrainer.fit()` returns (at the
        last epoch, or when pruning); Ray Train's own clean-up of its placement group then
        needs Ray's state API, which a local Ray without dashboard lacks, so the ranks' CPUs
        and GPUs stayed reserved and the next DDP trial waited forever. The group of a trial
        that ended on its own is gone already; removing it again does nothing."""
        group = self.groups.pop(trial.trial_id, None)
        if group is None:
            return
        from ray._raylet import PlacementGroupID
        from ray.util.placement_group import PlacementGroup, remove_placement_group

        try:
            remove_placement_group(PlacementGroup(PlacementGroupID(bytes.fromhex(group))))
        except Exception:  # already removed, or Ray is shutting down: nothing left to free
            pass


class _Silent(tune.ProgressReporter):
    """A progress reporter that prints nothing: the live view shows progress instead."""

    def should_report(self, trials: list, done: bool = False) -> bool:
        return False

    def report(self, trials: list, done: bool, *sys_info: Any) -> None:
        return None


def _uri(checkpoint: Any) -> str:
    """A URI `tune.Checkpoint(uri)` can open again from any node."""
    fs, path = checkpoint.filesystem, checkpoint.path
    scheme = getattr(fs, "type_name", "local")
    if scheme == "local":
        return path
    return f"{ {'gcs': 'gs'}.get(scheme, scheme) }://{path}"


REASON_MARK = "normbench-trial-error: "
NOTE_MARK = "normbench-trial-note: "  # + JSON string: a note the failure carries (`_Reason`)
TRACEBACK_LINES = 8


@dataclass(frozen=True)
class _Reason:
    """Why a trial failed: exception type, message, and the last lines of its traceback.

    Ray 2.60 writes a trial's error to a text file before it calls `on_trial_error`, but
    `trial.get_error()` reads the copy in the experiment storage, which may not be synced yet
    (it returns None then). So the trainable attaches the reason to the exception as a note
    (`REASON_MARK` + JSON), which Ray's traceback text carries, and the driver reads the
    local error file itself; failures outside the trainable (a dead worker, a placement
    error) fall back to the last line of Ray's own text.
    """

    type: str
    message: str
    traceback: tuple[str, ...] = ()
    where: str | None = None  # "file.py:LINE in function" of the innermost frame
    notes: tuple[str, ...] = ()  # for the trial's summary line (a checkpoint moved aside)

    @classmethod
    def of(cls, exc: BaseException) -> _Reason:
        import traceback as tb

        frames = tb.extract_tb(exc.__traceback__)
        where = None
        if frames:
            last = frames[-1]
            where = f"{Path(last.filename).name}:{last.lineno} in {last.name}"
        lines = [
            ln.rstrip()
            for chunk in tb.format_exception(type(exc), exc, exc.__traceback__)
            for ln in chunk.splitlines()
            if ln.strip() and not ln.startswith((REASON_MARK, NOTE_MARK))
        ]
        notes = tuple(
            json.loads(n[len(NOTE_MARK) :])
            for n in getattr(exc, "__notes__", ())
            if isinstance(n, str) and n.startswith(NOTE_MARK)
        )
        return cls(type(exc).__name__, str(exc), tuple(lines[-TRACEBACK_LINES:]), where, notes)

    @classmethod
    def of_trial(cls, trial: Any) -> _Reason:
        text = ""
        path = getattr(trial, "error_file", None)
        if path and os.path.isfile(path):
            with open(path, errors="replace") as f:
                text = f.read()
        if not text:
            error = trial.get_error()
            text = "" if error is None else str(error)
        return cls.parse(text)

    @classmethod
    def parse(cls, text: str) -> _Reason:
        """The last attempt's reason from Ray's error text (notes first, else its last line)."""
        marked = [ln for ln in text.splitlines() if ln.startswith(REASON_MARK)]
        if marked:
            d = json.loads(marked[-1][len(REASON_MARK) :])
            notes = tuple(d.get("notes") or ())
            return cls(d["type"], d["message"], tuple(d["traceback"]), d.get("where"), notes)
        lines = [ln.rstrip() for ln in text.splitlines() if ln.strip()]
        if not lines:
            return cls("RayError", "the trial failed and Ray recorded no error text")
        kind, sep, msg = lines[-1].strip().partition(": ")
        if not sep or " " in kind:
            kind, msg = "RayError", lines[-1].strip()
        return cls(kind, msg, tuple(lines[-TRACEBACK_LINES:]))

    def line(self) -> str:
        """One line for trials.jsonl's `reason`, the live view and the report."""
        msg = " ".join(self.message.split()) or "(no message)"
        return f"{self.type}: {msg}" + (f" [at {self.where}]" if self.where else "")

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "message": self.message,
            "traceback": list(self.traceback),
            "where": self.where,
            "notes": list(self.notes),
        }


def init_ray(address: str | None, *, num_cpus: int | None = None) -> Callable[[], None]:
    """Start a local Ray (no address) or join a cluster; returns the matching shutdown.

    A local Ray listens on the loopback interface only: a harness run on a laptop or a shared
    login node must not open ports to the network. Ray binds its servers to the node address,
    which it takes from the machine's network unless clusters are disabled (its macOS/Windows
    mode); that mode is switched on for the driver (the constant Ray reads) and for the
    processes it starts (the environment they inherit), and undone at shutdown.
    """
    common: dict[str, Any] = {
        "log_to_driver": False,
        "logging_level": logging.ERROR,
        "include_dashboard": False,
    }
    if address:
        common.pop("include_dashboard")
        with _keep_sigterm_handler():
            ray.init(address=address, **common)
        return ray.shutdown
    # Workers Ray pre-starts import torch and the engine while Tune sets up, so the first
    # trial does not pay for it (seconds on a small machine).
    env = {"worker_process_setup_hook": f"{__name__}.warm_worker"}
    undo = _loopback_only()
    try:
        with _keep_sigterm_handler():
            ray.init(num_cpus=num_cpus or os.cpu_count(), runtime_env=env, **common)
    except BaseException:
        undo()
        raise

    def shutdown() -> None:
        try:
            ray.shutdown()
        finally:
            undo()

    return shutdown


@contextlib.contextmanager
def _keep_sigterm_handler() -> Iterator[None]:
    """`ray.init` installs its own SIGTERM handler (`sys.exit(15)`: no message, and a
    SystemExit raised inside Ray's C++ calls); the driver's own one stays in place instead."""
    main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGTERM) if main else None
    try:
        yield
    finally:
        if main and previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _loopback_only() -> Callable[[], None]:
    """Make the next local Ray bind to 127.0.0.1; returns what undoes it."""
    from ray._private import ray_constants

    key = ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR
    old_env, old_flag = os.environ.get(key), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[key] = "0"  # read by the GCS, the raylet and the workers it starts
    ray_constants.ENABLE_RAY_CLUSTER = False  # read by this driver (services.get_node_ip_address)

    def undo() -> None:
        ray_constants.ENABLE_RAY_CLUSTER = old_flag
        if old_env is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = old_env

    return undo


def warm_worker() -> None:
    """Ray worker set-up hook: import what every trial needs."""
    import normbench.engine.loop  # noqa: F401  (pulls in torch, models, data)


def node_resources() -> list[dict[str, float]]:
    """CPUs and GPUs of every alive node of the joined cluster."""
    return [
        {"CPU": float(n["Resources"].get("CPU", 0)), "GPU": float(n["Resources"].get("GPU", 0))}
        for n in ray.nodes()
        if n.get("Alive")
    ]


def cluster_resources() -> dict[str, float]:
    res = ray.cluster_resources()
    return {"cpus": float(res.get("CPU", 0)), "gpus": float(res.get("GPU", 0))}
