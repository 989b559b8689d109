"""`load_suite`: YAML file -> validated, frozen `Suite` -> list of `Trial`s. The public API.

Loading never touches the disk beyond reading the file and importing its plugins. Every
problem in a file is collected before anything is raised, and each is reported as
`FILE:LINE: key.path: message` (or `FILE: --set k=v: key.path: message` for an override) in one
`SuiteError`, which the CLI prints as is.

`max_epochs` and `limit_batches` are written into every spec, so they change trial ids. A smoke
or truncated run therefore never resumes as, or is mistaken for, a full run: rerunning the full
suite in the same run directory starts its own trials and leaves the smoke results beside them
(reports group by trial id and label smoke specs by their `limit_batches`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from normbench.contract import CLASSIFICATION, Scoring
from normbench.errors import SuiteError
from normbench.spec import TrialSpec
from normbench.suite.matrix import Trial, build_trials, expand, searched_spec
from normbench.suite.overrides import apply_overrides
from normbench.suite.schema import SuiteModel
from normbench.suite.yamlmap import Path as KeyPath
from normbench.suite.yamlmap import SourceMap, parse, read_text

__all__ = ["Resources", "SearchConfig", "Suite", "Trial", "load_suite"]


@dataclass(frozen=True)
class Resources:
    cpus: float  # per trial; fractional values share a core
    gpus: float  # per trial; 0.5 runs two trials per GPU


@dataclass(frozen=True)
class SearchConfig:
    """An Optuna search run once per grid cell; grid axes never enter the search space."""

    metric: str
    mode: str
    num_samples: int
    # dotted TrialSpec path -> {type, low, high, step, log, choices}; int bounds are ints
    space: dict[str, dict[str, Any]]
    sampler: str = "tpe"
    scheduler: str = "none"  # "asha": Ray's ASHA with grace_period/reduction_factor, max_t epochs
    grace_period: int = 1
    reduction_factor: int = 4
    storage: str | None = None  # None: SQLite RUN_DIR/optuna.db
    study_name: str | None = None  # None: the suite name plus the cell's base trial id
    seed: int = 0

    def apply(self, spec: TrialSpec, params: dict[str, Any]) -> TrialSpec:
        """The spec of one sampled trial (params keyed by the dotted paths of `space`)."""
        return searched_spec(spec, params)


@dataclass(frozen=True)
class Suite:
    name: str
    version: int
    path: Path
    text: str  # the YAML as run: the file, or its re-dump after --set overrides
    description: str
    dataset: dict[str, Any]
    resources: Resources
    max_concurrent: int | None
    retries: int
    plugins: tuple[str, ...]
    search: SearchConfig | None
    reference: tuple[dict[str, Any], ...]
    target_accuracy: float | None
    baseline: str | None  # the variant (label or name) the leaderboards compare with; None: bn
    # what the trials train and how they are scored: {"name", "options"} and the task's
    # `Scoring` (normbench.contract), which suite.resolved.json stores for the reports
    task: dict[str, Any] = field(default_factory=lambda: {"name": "classification"})
    scoring: Scoring = CLASSIFICATION
    overrides: tuple[str, ...] = ()
    max_epochs: int | None = None
    limit_batches: int | None = None
    _trials: tuple[Trial, ...] = field(default=(), repr=False)

    def trials(self) -> list[Trial]:
        """Trials in run order; for a search, one per grid cell (the base spec searched)."""
        return list(self._trials)

    @property
    def ddp_devices(self) -> int:
        """The most devices a trial runs as DDP ranks (1: none; virtual devices share one
        process and its resources). `resources` are per rank when this is above 1."""
        return max((t.spec.devices for t in self._trials if t.spec.parallel == "ddp"), default=1)

    def to_json(self) -> dict[str, Any]:
        """The resolved suite for RUN_DIR/suite.resolved.json."""
        d = {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name not in ("_trials", "text")
        }
        d["path"] = str(self.path)
        d["scoring"] = self.scoring.to_dict()
        d["resources"] = dataclasses.asdict(self.resources)
        d["search"] = dataclasses.asdict(self.search) if self.search else None
        d["reference"] = [dict(r) for r in self.reference]
        d["plugins"], d["overrides"] = list(self.plugins), list(self.overrides)
        d["trials"] = [
            {"trial_id": t.trial_id, "cell": t.cell, "spec": t.spec.to_dict()} for t in self._trials
        ]
        return d


def load_suite(
    path: str | Path,
    *,
    overrides: list[str] | tuple[str, ...] = (),
    max_epochs: int | None = None,
    limit_batches: int | None = None,
) -> Suite:
    """Read, override, validate and expand a suite file. Raises SuiteError with every problem."""
    file = Path(path).expanduser()
    _check_caps(max_epochs, limit_batches)
    original = read_text(file)
    data, smap = parse(original, str(file))
    if not isinstance(data, dict):
        raise SuiteError([smap.problem((), "the suite must be a mapping of keys to values")])
    problems = apply_overrides(data, list(overrides), smap)
    root_moved = _resolve_root(data, file, smap)
    root_moved = _resolve_init_from(data, file, smap) or root_moved
    model, trials, found = _validate(data, file, smap, max_epochs, limit_batches)
    problems += _format(found, smap)
    if problems or model is None:
        raise SuiteError(problems)
    plugins = _resolve_plugins(data.get("plugins"), file)
    text = original
    if overrides or root_moved or list(plugins) != data.get("plugins", []):
        # a copy of the suite elsewhere (RUN_DIR/suite.yaml) must find the same files
        text = _redump({**data, "plugins": list(plugins)} if plugins else data, file, overrides)
    return _make_suite(
        model, file, text, tuple(overrides), (max_epochs, limit_batches), plugins, trials
    )


def _check_caps(max_epochs: int | None, limit_batches: int | None) -> None:
    for name, v in (("max_epochs", max_epochs), ("limit_batches", limit_batches)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            flag = "--" + name.replace("_", "-")
            raise SuiteError([f"{flag}: must be a positive integer, but got {v!r}"])


def _validate(
    data: dict[str, Any],
    file: Path,
    smap: SourceMap,
    max_epochs: int | None,
    limit_batches: int | None,
) -> tuple[SuiteModel | None, list[Trial], list]:
    """Schema, then plugins, then names and cross-field rules: all problems, in one list.

    The registries (and with them torch) are imported here, once the file has parsed: a
    malformed file is refused without loading any layer, model or data set."""
    from normbench.suite import checks
    from normbench.suite.pydantic_errors import fallback_name_checks, pydantic_problems

    plugins = _resolve_plugins(data.get("plugins"), file)
    found: list[tuple[KeyPath, str]] = checks.load_plugins(plugins)
    if found:  # a broken plugin first and alone: its names would read as unknown ones below
        return None, [], found
    try:
        model = SuiteModel.model_validate(data)
    except ValidationError as exc:
        found += pydantic_problems(exc)
        found += fallback_name_checks(data)  # names in the parts that did validate
        return None, [], found
    cells, matrix_problems = expand(model)
    found += matrix_problems
    if not cells:
        found.append((("exclude",), "exclude removes every cell: the suite has no trial"))
    names = checks.check_names(model, cells)
    found += names + checks.check_cells(model, cells, names)
    found += checks.check_search(model, cells)
    found += checks.check_task(model, cells)
    found += checks.check_baseline(model, cells)
    found += checks.check_parallel(model, cells)
    if not found:
        found += _search_space_problems(model)
    if found:
        return model, [], found
    trials = build_trials(
        model, cells, plugins=plugins, max_epochs=max_epochs, limit_batches=limit_batches
    )
    found += _spec_refusals(trials)
    return model, trials, found


def _search_space_problems(model: SuiteModel) -> list[tuple[KeyPath, str]]:
    """Build the Optuna space with the function the run uses (`suite.search.optuna_space`,
    owned by the search adapter), so a dimension it refuses is reported at its line now."""
    if model.search is None:
        return []
    from normbench.suite.search import optuna_space

    found: list[tuple[KeyPath, str]] = []
    for path, param in model.search.space.items():
        try:
            optuna_space({path: _param_dict(param)})
        except (ValueError, TypeError) as exc:
            found.append((("search", "space", path), f"Optuna refuses this dimension: {exc}"))
    return found


def _spec_refusals(trials: list[Trial]) -> list[tuple[KeyPath, str]]:
    """What `build_trial` refuses from the spec alone, at the `train:` key that set it."""
    from normbench.engine.build import spec_refusals

    found: dict[tuple[KeyPath, str], None] = {}
    for t in trials:
        for key, message in spec_refusals(t.spec).items():
            found[(("train", key), message)] = None
    return list(found)


def _resolve_plugins(raw: Any, file: Path) -> tuple[str, ...]:
    """Plugin paths resolved relative to the suite file (absolute, so Ray workers find them)."""
    if not isinstance(raw, list):
        return ()
    base = file.resolve().parent
    return tuple(_absolute(base, p) for p in raw if isinstance(p, str))


def _absolute(base: Path, path: str) -> str:
    """`path` (`~` expanded) made absolute against `base` when relative, as every path a
    suite names is: Ray workers run in their own directories."""
    return str((base / Path(path).expanduser()).resolve())


def _resolve_root(data: dict[str, Any], file: Path, smap: SourceMap) -> bool:
    """Make a relative `dataset.root` absolute, in place: relative to the suite file's folder
    when the file says it (as plugin paths are), to the current directory when `--set` does.
    Trials run in Ray's own working directories, so only an absolute root names the same
    folder there. Returns whether the value changed."""
    dataset = data.get("dataset")
    root = dataset.get("root") if isinstance(dataset, dict) else None
    if not isinstance(root, str) or not root:
        return False
    base = Path.cwd() if smap.given_by_flag(("dataset", "root")) else file.resolve().parent
    resolved = _absolute(base, root)
    dataset["root"] = resolved  # type: ignore[index]
    return resolved != root


def _resolve_init_from(data: dict[str, Any], file: Path, smap: SourceMap) -> bool:
    """Make a relative `train.init_from.run` absolute, in place, as `dataset.root` is."""
    train = data.get("train")
    init = train.get("init_from") if isinstance(train, dict) else None
    run = init.get("run") if isinstance(init, dict) else None
    if not isinstance(run, str) or not run:
        return False
    set_here = smap.given_by_flag(("train", "init_from", "run"))
    resolved = _absolute(Path.cwd() if set_here else file.resolve().parent, run)
    init["run"] = resolved  # type: ignore[index]
    return resolved != run


def _format(found: list[tuple[KeyPath, str]], smap: SourceMap) -> list[str]:
    """Problems as text, ordered by line, duplicates dropped."""

    def line(item: tuple[KeyPath, str]) -> int:
        where = smap.locate(item[0]).rpartition(":")[2]
        return int(where) if where.isdigit() else 10**9

    out: list[str] = []
    for item in sorted(found, key=line):
        text = smap.problem(*item)
        if text not in out:
            out.append(text)
    return out


def _redump(data: dict[str, Any], file: Path, overrides: tuple[str, ...] | list[str]) -> str:
    head = [f"# normbench: {file.name}, plugin and data paths made absolute, overrides applied:"]
    head += [f"#   --set {o}" for o in overrides]
    return "\n".join(head) + "\n" + yaml.safe_dump(data, sort_keys=False)


def _make_suite(
    model: SuiteModel,
    file: Path,
    text: str,
    overrides: tuple[str, ...],
    caps: tuple[int | None, int | None],
    plugins: tuple[str, ...],
    trials: list[Trial],
) -> Suite:
    from normbench.suite.checks import search_objective, task_scoring

    scoring = task_scoring(model)
    s = model.search
    search = None
    if s is not None:
        space = {k: _param_dict(p) for k, p in s.space.items()}
        search = SearchConfig(
            *search_objective(s.metric, s.mode, scoring),
            s.num_samples,
            space,
            s.sampler,
            s.scheduler,
            s.grace_period,
            s.reduction_factor,
            s.storage,
            s.study_name,
            s.seed,
        )
    return Suite(
        name=model.name,
        version=model.version,
        path=file.resolve(),
        text=text,
        description=model.description,
        dataset=model.dataset.model_dump(),
        resources=Resources(model.resources.cpus, model.resources.gpus),
        max_concurrent=model.max_concurrent,
        retries=model.retries,
        plugins=plugins,
        search=search,
        reference=tuple(r.model_dump() for r in model.reference),
        target_accuracy=model.target_accuracy,
        baseline=model.baseline,
        task={"name": model.task.name.lower(), "options": dict(model.task.options)},
        scoring=scoring,
        overrides=overrides,
        max_epochs=caps[0],
        limit_batches=caps[1],
        _trials=tuple(trials),
    )


def _param_dict(p: Any) -> dict[str, Any]:
    d = p.model_dump()
    if p.type == "int":
        d["low"], d["high"] = int(p.low), int(p.high)
        d["step"] = int(p.step) if p.step else None
    if d["choices"] is not None:
        d["choices"] = list(d["choices"])
    return d
