"""Optuna searches driven by ask/tell: the study in the run directory is the source of truth.

One search runs per grid cell (grid axes stay outside Optuna, unless `variant`, `backbone` or
`batch_size` are themselves searched); each cell's study is named `<study_name or suite
name>-<base trial id>` (just `study_name` for a one-cell grid). The study lives in
RUN_DIR/optuna.db unless the suite names an Optuna storage URL, so `optuna-dashboard
sqlite:///RUN_DIR/optuna.db` opens it.

How a run continues a study (`SearchSession`):
* finished samples (COMPLETE, PRUNED, or FAIL for a diverged trial; `nb_status` user attribute)
  are neither proposed again nor run again;
* a RUNNING trial left by a killed driver is resumed under its own number with its own
  parameters (its trial id is a hash of them, so it continues from its checkpoint), or told
  its result when the store finished it before the driver died;
* exactly `num_samples` minus finished minus resumed new trials are asked for;
* a sampler that proposes an already-run configuration gets that trial's result told back
  (user attributes `nb_status=duplicate`, `duplicate_of`) and is asked again; in a discrete
  space an unused configuration is enqueued first, so it never loops;
* a lost study (optuna.db deleted) is rebuilt from trials.jsonl, which holds every sample's
  parameters, value and study trial number; an unreadable one is refused in one line.

Samplers are re-seeded per trial from `(seed, trial number)`, so a resumed search asks for the
same points an uninterrupted one would (exactly so with `max_concurrent: 1`).

The space is define-by-run: `variant_options.X` is sampled only when the trial's variant (the
cell's, or the searched `variant`) has option X; `backbone_options.X` likewise. `space_problems`
builds it during validation, so what runs is exactly what was written, or it is refused.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from normbench.errors import UserError
from normbench.spec import TrialSpec
from normbench.suite.matrix import apply_params, searched_spec

# Where a problem is, as a key path into the suite (rendered file:line by the loader).
KeyPath = tuple[str | int, ...]
Problems = list[tuple[KeyPath, str]]
# Statuses of a study trial that count as a finished sample.
FINISHED = ("completed", "pruned", "diverged")
# Largest discrete space enumerated to offer unused configurations after a duplicate.
_ENUMERATE_LIMIT = 100_000
# Top-level fields searchable besides the option and recipe paths; searched first, since
# the options sampled depend on the variant and backbone chosen.
OWNERS = {"variant": "variant_options", "backbone": "backbone_options"}


class StudyError(UserError):
    """An Optuna study storage that cannot be opened or does not match the run directory."""


# ---------------------------------------------------------------- the space, at validation
def _param(p: Any) -> dict[str, Any]:
    if isinstance(p, dict):
        return p
    if hasattr(p, "model_dump"):
        return dict(p.model_dump())
    import dataclasses

    return dataclasses.asdict(p)


def distribution(p: Any) -> tuple[Any, list[tuple[str, str]]]:
    """One suite parameter as an Optuna distribution, exactly as written, or problems.

    Returns (distribution or None, [(sub-key, message)]). Refused rather than silently
    changed: a step with a log scale, a fractional int step, a range that is not a whole
    number of steps, choices Optuna cannot store.
    """
    import optuna.distributions as d

    p = _param(p)
    kind, step, lo, hi = p["type"], p.get("step"), p.get("low"), p.get("high")
    log = bool(p.get("log")) or kind == "loguniform"
    if kind == "categorical":
        choices = list(p["choices"])
        bad = [c for c in choices if not isinstance(c, None | bool | int | float | str)]
        if bad:
            why = f"choices must be numbers, strings, booleans or null, got {bad[0]!r}"
            return None, [("choices", why)]
        if len(set(map(repr, choices))) != len(choices):
            return None, [("choices", f"choices must be distinct, got {choices}")]
        return d.CategoricalDistribution(choices), []
    if log and step is not None:
        return None, [("step", f"a log-scale parameter cannot have a step (step={step:g}); "
                               "drop `step` or `log`")]  # fmt: skip
    if kind == "int" and step is not None and not float(step).is_integer():
        return None, [("step", f"an int parameter needs an integer step, but got step={step:g}")]
    if step is not None:
        n = (hi - lo) / step
        if abs(n - round(n)) > 1e-9:
            return None, [("step", f"high - low = {hi - lo:g} is not a whole number of steps "
                                   f"of {step:g} (Optuna would lower high to "
                                   f"{lo + math.floor(n) * step:g})")]  # fmt: skip
    try:
        if kind == "int":
            return d.IntDistribution(int(lo), int(hi), log=log, step=int(step or 1)), []
        return d.FloatDistribution(float(lo), float(hi), log=log, step=step), []
    except ValueError as exc:
        return None, [("type", str(exc))]


def optuna_space(space: dict[str, Any]) -> dict[str, Any]:
    """{path: Optuna distribution} for a suite space; ValueError naming what `distribution`
    refuses (the suite checks report the same problems with file:line first)."""
    out: dict[str, Any] = {}
    for path, p in space.items():
        dist, found = distribution(p)
        if dist is None:
            raise ValueError(f"{path}.{found[0][0]}: {found[0][1]}")
        out[path] = dist
    return out


@dataclass(frozen=True)
class Space:
    """A define-by-run search space over TrialSpec paths.

    `applies[path]`, for a `variant_options.X`/`backbone_options.X` path, is the set of layer
    (or backbone) names that have option X: the path is sampled only for those.
    """

    dims: dict[str, Any]  # path -> optuna distribution, in sampling order
    applies: dict[str, frozenset[str]] = field(default_factory=dict)

    def sample(self, trial: Any, base: TrialSpec) -> dict[str, Any]:
        """Sample one configuration with an Optuna trial (define-by-run)."""
        return self._walk(base, lambda path, dist: _suggest(trial, path, dist))

    def _walk(self, base: TrialSpec, pick: Callable[[str, Any], Any]) -> dict[str, Any]:
        params: dict[str, Any] = {}
        for path, dist in self.dims.items():
            owner = _owner(path)
            if owner and getattr(apply_params(base, params), owner) not in self.applies[path]:
                continue
            params[path] = pick(path, dist)
        return params

    def configurations(self, base: TrialSpec) -> Iterator[dict[str, Any]] | None:
        """Every configuration of a discrete space (None when a dimension is continuous)."""
        import optuna.distributions as d

        values: dict[str, list[Any]] = {}
        for path, dist in self.dims.items():
            if isinstance(dist, d.CategoricalDistribution):
                values[path] = list(dist.choices)
            elif isinstance(dist, d.IntDistribution) and not dist.log:
                values[path] = list(range(dist.low, dist.high + 1, dist.step))
            elif isinstance(dist, d.FloatDistribution) and dist.step is not None:
                n = round((dist.high - dist.low) / dist.step)
                values[path] = [dist.low + i * dist.step for i in range(n + 1)]
            elif isinstance(dist, d.IntDistribution):  # log-scale int: every integer
                values[path] = list(range(dist.low, dist.high + 1))
            else:
                return None
        return self._expand(base, values, 0, {})

    def _expand(
        self, base: TrialSpec, values: dict[str, list[Any]], i: int, params: dict[str, Any]
    ) -> Iterator[dict[str, Any]]:
        paths = list(self.dims)
        if i == len(paths):
            yield dict(params)
            return
        path = paths[i]
        owner = _owner(path)
        if owner and getattr(apply_params(base, params), owner) not in self.applies[path]:
            yield from self._expand(base, values, i + 1, params)
            return
        for v in values[path]:
            yield from self._expand(base, values, i + 1, {**params, path: v})

    def size(self, base: TrialSpec) -> int | None:
        """Number of distinct configurations (None: continuous, or too many to count)."""
        configs = self.configurations(base)
        if configs is None:
            return None
        n = sum(1 for _ in itertools.islice(configs, _ENUMERATE_LIMIT + 1))
        return None if n > _ENUMERATE_LIMIT else n


def _owner(path: str) -> str | None:
    head = path.partition(".")[0]
    return next((o for o, opts in OWNERS.items() if head == opts), None)


def _suggest(trial: Any, path: str, dist: Any) -> Any:
    import optuna.distributions as d

    if isinstance(dist, d.CategoricalDistribution):
        return trial.suggest_categorical(path, list(dist.choices))
    if isinstance(dist, d.IntDistribution):
        return trial.suggest_int(path, dist.low, dist.high, step=dist.step, log=dist.log)
    return trial.suggest_float(path, dist.low, dist.high, step=dist.step, log=dist.log)


def build_space(
    space: dict[str, Any], option_owners: Callable[[str, str], frozenset[str]]
) -> tuple[Space | None, Problems]:
    """The suite's `search.space` as a define-by-run `Space`, or every problem in it.

    `option_owners(owner, option)` names the layers (owner "variant") or backbones that have
    an option; the loader passes the registries' view, after plugins are loaded.
    """
    dims: dict[str, Any] = {}
    applies: dict[str, frozenset[str]] = {}
    problems: Problems = []
    order = sorted(space, key=lambda path: (path not in OWNERS, _owner(path) is not None))
    for path in order:
        dist, found = distribution(space[path])
        problems += [(("search", "space", path, key), msg) for key, msg in found]
        if dist is None:
            continue
        dims[path] = dist
        owner = _owner(path)
        if owner:
            applies[path] = option_owners(owner, path.partition(".")[2])
    for top in OWNERS:
        if top in dims and not _is_categorical(dims[top]):
            problems.append((("search", "space", top, "type"), f"{top} is searched over "
                             "names: use type: categorical with choices"))  # fmt: skip
    return (Space(dims, applies) if not problems else None), problems


def _is_categorical(dist: Any) -> bool:
    import optuna.distributions as d

    return isinstance(dist, d.CategoricalDistribution)


def space_problems(search: Any, bases: list[TrialSpec]) -> Problems:
    """Validation of a suite's search (called by the suite checks): the space builds exactly
    as written, every conditional option belongs to some searched layer, and `num_samples`
    fits a discrete space."""
    space, problems = build_space(search.space, registry_option_owners)
    if space is None:
        return problems
    for path, names in space.applies.items():
        owner = _owner(path) or ""
        choices = _owner_choices(space, owner, bases)
        if not names & choices:
            option = path.partition(".")[2]
            problems.append((("search", "space", path), f"no {owner} searched here has option "
                             f"{option!r} (searched: {', '.join(sorted(choices))})"))  # fmt: skip
    if problems:
        return problems
    for base in bases[:1]:  # cells differ in grid axes only: one size for all
        size = space.size(base)
        if size is not None and search.num_samples > size:
            problems.append((("search", "num_samples"), f"num_samples={search.num_samples} "
                             f"exceeds the {size} distinct configurations of the search space; "
                             f"use num_samples: {size} to run each once"))  # fmt: skip
    return problems


def _owner_choices(space: Space, owner: str, bases: list[TrialSpec]) -> set[str]:
    if owner in space.dims:
        return {str(c) for c in space.dims[owner].choices}
    return {getattr(b, owner) for b in bases}


def registry_option_owners(owner: str, option: str) -> frozenset[str]:
    """Names of the registered layers (owner "variant") or backbones that take `option`."""
    from normbench.models import BACKBONES
    from normbench.variants_api import VARIANTS

    registry = VARIANTS if owner == "variant" else BACKBONES
    return frozenset(n.lower() for n in registry.names() if option in (registry.options(n) or {}))


def session_space(search: Any) -> Space:
    space, problems = build_space(search.space, registry_option_owners)
    if space is None:  # validation refused it already; a stored suite edited by hand
        raise StudyError(f"search space: {problems[0][1]}")
    return space


# ---------------------------------------------------------------- the study, in the driver
def storage_url(search: Any, run_dir: Path) -> str:
    return search.storage or f"sqlite:///{(Path(run_dir) / 'optuna.db').resolve()}"


def study_name(search: Any, suite_name: str, base: TrialSpec, single: bool) -> str:
    """The suite's study name for a one-cell grid; else the name plus the cell's base id."""
    if search.study_name and single:
        return search.study_name
    return f"{search.study_name or suite_name}-{base.trial_id}"


def make_sampler(search: Any, number: int) -> Any:
    """The suite's sampler, seeded for the study trial `number` (same point after a resume)."""
    import optuna

    seed = (search.seed * 1_000_003 + number) % 2**32
    if search.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def open_study(search: Any, url: str, name: str) -> tuple[Any, bool]:
    """(study, created): the stored study, or a new empty one. Refuses unreadable storage."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    direction: Literal["maximize", "minimize"] = "maximize" if search.mode == "max" else "minimize"
    try:
        storage = optuna.storages.get_storage(url)
        try:
            return optuna.load_study(study_name=name, storage=storage), False
        except KeyError:
            return optuna.create_study(storage=storage, study_name=name, direction=direction), True
    except Exception as exc:  # sqlite/sqlalchemy errors of a corrupt or foreign file
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:160]
        where = url.removeprefix("sqlite:///")
        raise StudyError(
            f"{where}: the Optuna study {name!r} cannot be read ({type(exc).__name__}: {first}); "
            "move the file away and rerun to rebuild the study from trials.jsonl"
        ) from None


@dataclass
class _Sample:
    number: int
    params: dict[str, Any]
    trial_id: str


class SearchSession:
    """One cell's search over its persistent study: what to resume, what to ask, what to tell.

    `done` maps finished trial ids of the run directory to their summary line (status, value,
    params, study, study_trial); `started` maps interrupted trial ids to their first epoch
    line. The driver calls `suggest` for each Ray trial to start, `report` for each epoch
    record and `finish` once the store holds a trial's summary (store first, then study: a
    kill in between is settled by the next session).
    """

    def __init__(
        self,
        search: Any,
        url: str,
        name: str,
        base: TrialSpec,
        done: dict[str, dict[str, Any]],
        started: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        from optuna.trial import TrialState

        self.search, self.name, self.base = search, name, base
        self.space = session_space(search)
        self.done = dict(done)
        self.notes: list[str] = []
        self.study, created = open_study(search, url, name)
        mine = {t: s for t, s in done.items() if s.get("study") == name}
        if created and (mine or started):
            self._rebuild(mine, started or {})
        self.resume: list[_Sample] = []
        self.active: dict[str, int] = {}  # trial id -> study trial number (this run)
        self.waiters: dict[str, list[int]] = {}  # duplicates of an active trial
        self.params: dict[str, dict[str, Any]] = {}  # trial id -> sampled parameters
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            self._settle(t.number, dict(t.params))
        self.finished = sum(
            t.user_attrs.get("nb_status") in FINISHED for t in self.study.get_trials(deepcopy=False)
        )
        finished = self.finished
        self.new = max(search.num_samples - finished - len(self.resume), 0)
        self.asked = 0
        self._unused: Iterator[dict[str, Any]] | None = None

    # -- settling the stored study --------------------------------------------------------
    def _rebuild(self, mine: dict[str, dict[str, Any]], started: dict[str, dict[str, Any]]) -> None:
        """Re-create a lost study from trials.jsonl (finished) and epochs.jsonl (interrupted)."""
        import optuna

        rows = sorted(mine.items(), key=lambda kv: kv[1].get("study_trial") or 0)
        for tid, s in rows:
            params = s.get("params") or {}
            dists = self._distributions(params)
            status = s.get("status")
            state, value = _state_of(status, s.get("value"))
            self.study.add_trial(optuna.trial.create_trial(
                params=params, distributions=dists, value=value, state=state,
                user_attrs={"nb_status": status, "nb_trial_id": tid},
            ))  # fmt: skip
        for tid, first in started.items():
            if first.get("study") == self.name and tid not in mine:
                self.study.enqueue_trial(first.get("search_params") or {})
                self.notes.append(f"trial {tid} will resume from its checkpoint")
        self.notes.insert(0, f"study {self.name} rebuilt from trials.jsonl ({len(rows)} finished)")

    def _distributions(self, params: dict[str, Any]) -> dict[str, Any]:
        return {p: self.space.dims[p] for p in params if p in self.space.dims}

    def _settle(self, number: int, params: dict[str, Any]) -> None:
        """A RUNNING trial of a killed driver: tell what the store finished, else resume it."""
        tid = self.trial_id(params)
        summary = self.done.get(tid)
        if summary is not None and summary.get("status") in FINISHED:
            dup = summary.get("study_trial") not in (None, number)
            self._tell(number, summary, duplicate_of=summary.get("study_trial") if dup else None)
        elif tid in {s.trial_id for s in self.resume}:
            self.waiters.setdefault(tid, []).append(number)
        else:
            self.resume.append(_Sample(number, params, tid))

    # -- asking ---------------------------------------------------------------------------
    def trial_id(self, params: dict[str, Any]) -> str:
        return searched_spec(self.base, params).trial_id

    def params_of(self, spec: TrialSpec) -> dict[str, Any] | None:
        return self.params.get(spec.trial_id)

    @property
    def total(self) -> int:
        """Ray trials this session will start at most."""
        return len(self.resume) + self.new

    def suggest(self) -> dict[str, Any] | None:
        """The next trial to run: {"params", "study_trial"}; None when nothing is left."""
        if self.resume:
            s = self.resume.pop(0)
            self.active[s.trial_id], self.params[s.trial_id] = s.number, s.params
            return {"params": s.params, "study_trial": s.number}
        for _ in range(20):
            if self.asked >= self.new:
                return None
            number = len(self.study.get_trials(deepcopy=False))  # the trial about to be asked
            self.study.sampler = make_sampler(self.search, number)
            trial = self.study.ask()
            params = self.space.sample(trial, self.base)
            tid = self.trial_id(params)
            summary = self.done.get(tid)
            if summary is not None and summary.get("status") in FINISHED:
                self._tell(trial.number, summary, duplicate_of=summary.get("study_trial"))
                self._offer_unused()
                continue
            if tid in self.active:
                self.waiters.setdefault(tid, []).append(trial.number)
                self._offer_unused()
                continue
            self.asked += 1
            self.active[tid], self.params[tid] = trial.number, params
            return {"params": params, "study_trial": trial.number}
        self.notes.append(f"search {self.name}: the sampler kept proposing finished "
                          "configurations; stopped asking")  # fmt: skip
        return None

    def _offer_unused(self) -> None:
        """After a duplicate in a discrete space, enqueue a configuration not run yet."""
        if self._unused is None:
            configs = self.space.configurations(self.base)
            if configs is None:
                self._unused = iter(())
                return
            listed = list(itertools.islice(configs, _ENUMERATE_LIMIT))
            random.Random(self.search.seed).shuffle(listed)
            self._unused = iter(listed)
        busy = set(self.active) | {t for t, s in self.done.items() if s.get("status") in FINISHED}
        for params in self._unused:
            if self.trial_id(params) not in busy:
                self.study.enqueue_trial(params)
                return

    # -- telling --------------------------------------------------------------------------
    def report(self, trial_id: str, record: dict[str, Any]) -> None:
        """An epoch's metric as the trial's intermediate value (Optuna's pruning history)."""
        number = self.active.get(trial_id)
        value = record.get(self.search.metric)
        if number is None or value is None or record.get("status") != "ok":
            return
        self._trial(number).report(float(value), int(record["epoch"]))

    def finish(self, trial_id: str, summary: dict[str, Any]) -> None:
        """Tell the study how a trial ended (its summary line, as stored), and its duplicates."""
        number = self.active.pop(trial_id, None)
        if number is None:
            return
        self.done[trial_id] = {**summary, "study_trial": number}
        self._tell(number, summary)
        for dup in self.waiters.pop(trial_id, []):
            self._tell(dup, summary, duplicate_of=number)

    def close(self) -> None:
        """Trials asked but never finished in this run stay RUNNING: the next run resumes them.
        Duplicates still waiting on them are failed (their original will answer next time)."""
        from optuna.trial import TrialState

        for numbers in self.waiters.values():
            for n in numbers:
                self.study.tell(n, state=TrialState.FAIL)
        self.waiters.clear()

    def _tell(
        self, number: int, summary: dict[str, Any], *, duplicate_of: int | None = None
    ) -> None:
        from optuna.trial import TrialState

        status = summary.get("status")
        attrs = {"nb_status": "duplicate" if duplicate_of is not None else status}
        if duplicate_of is not None:
            attrs["duplicate_of"] = duplicate_of
        trial = self._trial(number)
        for k, v in attrs.items():
            trial.set_user_attr(k, v)
        if duplicate_of is not None:
            # A repeat of a configuration the study holds already: FAIL (with duplicate_of),
            # so COMPLETE trials are the distinct points (optuna-dashboard's count) and the
            # sampler does not weigh one point twice.
            self.study.tell(number, state=TrialState.FAIL, skip_if_finished=True)
            return
        state, value = _state_of(status, summary.get("value"))
        self.study.tell(number, value, state=state, skip_if_finished=True)

    def _trial(self, number: int) -> Any:
        """A live handle on the study trial `number` (ask/tell's `optuna.Trial`)."""
        import optuna

        frozen = self.study.get_trials(deepcopy=False)[number]
        return optuna.trial.Trial(self.study, frozen._trial_id)


def _state_of(status: Any, value: Any) -> tuple[Any, float | None]:
    """Optuna state and value for a stored trial status (diverged/failed: FAIL, no value)."""
    from optuna.trial import TrialState

    if status == "completed" and value is not None:
        return TrialState.COMPLETE, float(value)
    if status == "pruned":
        return TrialState.PRUNED, None
    return TrialState.FAIL, None


def best_per_variant(summaries: list[dict[str, Any]], mode: str) -> dict[str, dict[str, Any]]:
    """The best finished sample per variant (summary lines of a search), by their value."""
    best: dict[str, dict[str, Any]] = {}
    sign = 1 if mode == "max" else -1
    for s in summaries:
        if s.get("status") != "completed" or s.get("value") is None:
            continue
        v = (s.get("spec") or {}).get("variant", "?")
        if v not in best or sign * s["value"] > sign * best[v]["value"]:
            best[v] = s
    return best


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
