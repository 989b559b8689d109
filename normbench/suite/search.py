"""Optuna searches: the study in persistent storage, and the Ray Tune searcher around it.

One search runs per grid cell (grid axes stay outside Optuna); each cell's study is named
`<study_name or suite name>-<base trial id>` (just `study_name` for a one-cell grid). The study
lives in RUN_DIR/optuna.db unless the suite names an Optuna storage URL, so `optuna-dashboard
sqlite:///RUN_DIR/optuna.db` opens it and a restarted run continues the same study
(`load_if_exists`): trials left RUNNING by a killed driver are marked FAIL and their parameters
enqueued again, so they resume from their checkpoints under the same trial id.

Ray's `OptunaSearch` (2.60) takes `storage` only as an `optuna.storages.BaseStorage` instance
(not a URL) and always creates its study with `load_if_exists=True`; we build the storage here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from normbench.engine.spec import TrialSpec
from normbench.suite.matrix import apply_params


@dataclass(frozen=True)
class StudyPlan:
    """What is left of one cell's search after looking at the study and the store."""

    name: str
    storage_url: str
    remaining: int  # trials still to run (re-enqueued ones included)
    resumed: int  # stale trials enqueued again


def storage_url(search: Any, run_dir: Path) -> str:
    return search.storage or f"sqlite:///{(Path(run_dir) / 'optuna.db').resolve()}"


def study_name(search: Any, suite_name: str, base: TrialSpec, single: bool) -> str:
    """The suite's study name for a one-cell grid; else the name plus the cell's base id."""
    if search.study_name and single:
        return search.study_name
    return f"{search.study_name or suite_name}-{base.trial_id}"


def optuna_space(space: dict[str, Any]) -> dict[str, Any]:
    """Suite search space ({dotted path: param}) as Optuna distributions."""
    import optuna.distributions as d

    out: dict[str, Any] = {}
    for path, p in space.items():
        p = p if isinstance(p, dict) else dataclasses.asdict(p)
        log = bool(p.get("log")) or p["type"] == "loguniform"
        step = p.get("step")
        lo, hi = p["low"], p["high"]
        if p["type"] == "categorical":
            out[path] = d.CategoricalDistribution(list(p["choices"]))
        elif p["type"] == "int":
            out[path] = d.IntDistribution(int(lo), int(hi), log=log, step=int(step or 1))
        else:
            out[path] = d.FloatDistribution(lo, hi, log=log, step=None if log else step)
    return out


def prepare_study(
    search: Any, url: str, name: str, base: TrialSpec, done: dict[str, dict[str, Any]]
) -> StudyPlan:
    """Open (or create) the study; settle trials a killed driver left RUNNING.

    `done` maps trial ids the store has finished to their summary line. A stale trial whose id
    is finished is told COMPLETE with the stored value; any other is failed and enqueued again.
    """
    import optuna
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    direction: Literal["maximize", "minimize"] = "maximize" if search.mode == "max" else "minimize"
    study = optuna.create_study(
        storage=url, study_name=name, direction=direction, load_if_exists=True
    )
    # An enqueued trial keeps its parameters in system_attrs until it is asked for.
    waiting = [
        t.system_attrs.get("fixed_params", t.params)
        for t in study.get_trials(states=(TrialState.WAITING,))
    ]
    resumed = 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        tid = apply_params(base, t.params).trial_id
        value = (done.get(tid) or {}).get("value")
        if value is not None:
            study.tell(t.number, value)
            continue
        study.tell(t.number, state=TrialState.FAIL)
        if t.params not in waiting:
            study.enqueue_trial(t.params)
            resumed += 1
    finished = sum(1 for s in done.values() if s.get("study") == name)
    return StudyPlan(name, url, max(search.num_samples - finished, 0), resumed)


def build_searcher(search: Any, plan: StudyPlan) -> Any:
    """Ray Tune's OptunaSearch over the persistent study (a Ray object; passed on opaquely)."""
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    sampler = (
        optuna.samplers.RandomSampler(seed=search.seed)
        if search.sampler == "random"
        else optuna.samplers.TPESampler(seed=search.seed)
    )
    return OptunaSearch(
        space=optuna_space(search.space),
        metric=search.metric,
        mode=search.mode,
        sampler=sampler,
        study_name=plan.name,
        storage=optuna.storages.get_storage(plan.storage_url),
    )


def build_scheduler(search: Any, max_epochs: int) -> Any:
    """ASHA early stopping on the epoch counter (not Tune's iteration, which restarts on a
    resumed trial), or None."""
    if search.scheduler != "asha":
        return None
    from ray.tune.schedulers import ASHAScheduler

    return ASHAScheduler(
        time_attr="epoch",
        max_t=max_epochs,
        grace_period=min(search.grace_period, max_epochs),
        reduction_factor=search.reduction_factor,
    )
