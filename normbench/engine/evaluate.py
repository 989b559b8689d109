"""`normbench evaluate RUN_DIR --set ...`: finished checkpoints under inference-time settings,
without retraining.

Two settings, each applied to the final checkpoint of every completed trial it concerns:

- **Inference example weighing** (Summers & Dinneen, "Four Things Everyone Should Know to
  Improve Batch Normalization", ICLR 2020, arXiv 1906.03548, Sec 3.2): every layer with an
  `eval_example_weight` alpha (the batch/group layer `fourthings`) mixes each example's own
  moments into the running ones at inference. alpha is tried over a grid on the validation
  split, the best validation top-1 wins (ties go to the smaller alpha, i.e. toward standard
  inference), and only the chosen alpha is evaluated on the test split.
- **Recalibrated running statistics** (the paper's train/inference discrepancy, Sec 3.1):
  every layer with a `running_mean` buffer recomputes its running statistics with the final
  weights over K training batches, as `torch.optim.swa_utils.update_bn` does: training mode,
  no gradient, `momentum=None` (a cumulative average) from a zeroed counter, so the old
  statistics are replaced by the plain mean over the K batches. Layers that can switch to
  frozen statistics in training (UBN's threshold, `fct`) use batch statistics throughout.
  Only `running_mean`, `running_var`, `running_sq_mean` and `running_std` (Batch Renorm's
  inference pair) change; every other buffer (UBN's
  running similarity, counters) is restored. The weights are untouched.

Each result is one line of `RUN_DIR/evaluations.jsonl`, appended by this process alone under
the run directory's lock with the store's single write + fsync. A rerun skips every
(trial, setting) already stored, so an interrupted evaluation resumes. Models, data and the
evaluation pass are the engine's own (`build_trial`, `loop.evaluate`): one eval path.

Settings (`--set key=value`, YAML-typed):
    example_weights: [0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3]   # the alpha grid; [] skips it
    recalibrate_batches: 100      # K; capped at one epoch of the training loader; 0 skips it
    trials: null                  # a list of trial ids (default: every completed trial)
    dataset_root: null            # where the data set is now, if it moved since training
    device: null                  # e.g. cpu; default: the device each trial asked for
"""

from __future__ import annotations

import contextlib
import inspect
import json
import platform
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import nn

from normbench.contract import CLASSIFICATION, scoring_of
from normbench.engine import checkpoint as ckpt
from normbench.errors import UserError
from normbench.results.paths import refuse_links, trial_dir
from normbench.spec import TrialSpec

# Buffers that hold normalization statistics; recalibration recomputes exactly these.
STAT_BUFFERS = ("running_mean", "running_var", "running_sq_mean", "running_std")
EXAMPLE_WEIGHT = "eval_example_weight"
Echo = Callable[[str], None]


class EvaluateError(UserError, ValueError):
    """A run directory or setting `normbench evaluate` cannot work with."""


class EvaluateSettings(BaseModel):
    """What `normbench evaluate` does; see the module docstring."""

    model_config = ConfigDict(extra="forbid", strict=True)
    example_weights: list[Annotated[float, Field(ge=0.0, le=1.0)]] = [
        0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3,
    ]  # fmt: skip
    recalibrate_batches: int = Field(default=100, ge=0)
    trials: list[str] | None = None
    dataset_root: str | None = None
    device: str | None = None


def parse_settings(values: dict[str, Any]) -> EvaluateSettings:
    """`{'recalibrate_batches': 20, ...}` (from `--set k=v`) -> settings; one EvaluateError
    naming each bad key."""
    try:
        return EvaluateSettings(**values)
    except ValidationError as exc:
        problems = [f"--set {'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
        raise EvaluateError("evaluate: " + "; ".join(problems)) from None


# -- the command's driver -------------------------------------------------------------------
def evaluate_run(
    run_dir: str | Path,
    settings: EvaluateSettings,
    *,
    plugins: tuple[str | Path, ...] = (),
    echo: Echo = print,
) -> list[dict[str, Any]]:
    """Evaluate every completed trial of `run_dir` under `settings`; return the new lines.

    `plugins`: the plugin files the user names (`--plugin`); a plugin path stored in the run
    directory is never imported (`normbench.engine.stored`)."""
    from normbench.registry import load_plugin
    from normbench.results.store import RunStore

    run_dir = Path(run_dir)
    refuse_links(run_dir, inside=f"run directory {run_dir}")  # before reading checkpoints
    for path in plugins:
        load_plugin(path)
    todo = _trials(run_dir, settings, plugins, echo)
    written: list[dict[str, Any]] = []
    hint = "wait for it to finish, then evaluate"
    with RunStore(run_dir, busy_hint=hint, role="evaluate") as store:
        done = {(e["trial_id"], e["setting"], _key(e["params"])) for e in store.evaluations()}
        for summary, spec in todo:
            jobs = [
                (name, params, fn)
                for name, params, fn in _jobs(spec, settings)
                if (summary["trial_id"], name, _key(params)) not in done
            ]
            if not jobs:
                continue
            trial, epoch = _load(run_dir, spec)
            for name, params, fn in jobs:
                result = fn(trial, params)
                if result is None:
                    echo(f"trial {summary['trial_id']}: {name} does not apply (nothing to change)")
                    continue
                line = _line(summary, trial, epoch, name, params, result)
                store.append_evaluation(line)
                written.append(line)
                echo(_describe(line))
    return written


def _trials(
    run_dir: Path, settings: EvaluateSettings, plugins: tuple[str | Path, ...], echo: Echo
) -> list[tuple[dict[str, Any], TrialSpec]]:
    """Completed trials to evaluate, with the specs to rebuild them; refuses bad input.
    Without `--set trials`, the trials a newer revision superseded are skipped, in one line
    (`normbench.results.revisions`, as the report leaves them out)."""
    from normbench.results.revisions import left_out_line, superseded_in
    from normbench.results.store import TRIALS, read_jsonl

    if not (run_dir / TRIALS).is_file():
        raise EvaluateError(
            f"evaluate: {run_dir} is not a run directory with finished trials (no {TRIALS})"
        )
    latest = {r["trial_id"]: r for r in read_jsonl(run_dir / TRIALS)}  # a rerun's line wins
    completed = {t: r for t, r in latest.items() if r["status"] == "completed"}
    old = {t: s for t, s in superseded_in(run_dir).items() if t in completed}
    wanted = settings.trials
    if wanted is None:
        wanted = sorted(set(completed) - set(old))
        if old:
            specs = {t: completed[t]["spec"] for t in old}
            echo(f"evaluate: skipped {left_out_line(old, specs)}")
    unknown = [t for t in wanted if t not in completed]
    if unknown:
        raise EvaluateError(
            f"evaluate: --set trials names {', '.join(unknown)}, which are not completed trials "
            f"of {run_dir}"
        )
    named_old = [f"{t} (by {old[t].by})" for t in wanted if t in old]
    if named_old:
        raise EvaluateError(
            f"evaluate: --set trials names {', '.join(named_old)}, superseded by a newer "
            f"revision of a component in {run_dir}: name the new trial instead"
        )
    out = []
    for tid in wanted:
        spec = _spec(completed[tid]["spec"], settings, plugins, tid, run_dir)
        if not ckpt.checkpoint_path(trial_dir(run_dir / "checkpoints", tid)).is_file():
            raise EvaluateError(
                f"evaluate: trial {tid} has no checkpoint at "
                f"{run_dir / 'checkpoints' / tid / 'checkpoint.pt'} (runs with --storage keep "
                "them there only when it is the run directory)"
            )
        if settings.example_weights and _has_example_weight(spec) and not _has_val(spec):
            raise EvaluateError(
                f"evaluate: trial {tid} has no validation split (dataset val_fraction 0), so "
                "the example weight cannot be chosen on validation; use --set example_weights=[]"
            )
        out.append((completed[tid], spec))
    if not out:
        raise EvaluateError(f"evaluate: {run_dir} has no completed trial to evaluate")
    return out


def _spec(
    stored: dict[str, Any],
    settings: EvaluateSettings,
    plugins: tuple[str | Path, ...],
    tid: str,
    run_dir: Path,
) -> TrialSpec:
    from normbench.engine.stored import spec_from_run

    spec = spec_from_run(
        stored, plugins, trial_id=tid, where=run_dir, or_else="or leave it out with --set "
        "'trials=[...]' (the trial ids to evaluate)",
    )  # fmt: skip
    if settings.dataset_root is not None:
        options = {**spec.dataset_options, "root": settings.dataset_root}
        spec = spec.replace(dataset_options=options)
    if settings.device is not None:
        spec = spec.replace(device=settings.device)
    return spec


def _has_example_weight(spec: TrialSpec) -> bool:
    from normbench.variants_api import VARIANTS

    try:
        params = inspect.signature(VARIANTS.get(spec.variant).obj).parameters
    except (TypeError, ValueError):
        return False
    return EXAMPLE_WEIGHT in params


def _has_val(spec: TrialSpec) -> bool:
    return float(spec.dataset_options.get("val_fraction", 0.1)) > 0


Job = Callable[[Any, dict[str, Any]], "dict[str, Any] | None"]


def _jobs(spec: TrialSpec, s: EvaluateSettings) -> list[tuple[str, dict[str, Any], Job]]:
    jobs: list[tuple[str, dict[str, Any], Job]] = []
    if s.example_weights and _has_example_weight(spec):
        jobs.append(("example_weight", {"grid": sorted(s.example_weights)}, choose_example_weight))
    if s.recalibrate_batches > 0:
        jobs.append(("recalibrated_stats", {"batches": s.recalibrate_batches}, recalibrate))
    return jobs


def _key(params: dict[str, Any]) -> str:
    return json.dumps(params, sort_keys=True)


def _load(run_dir: Path, spec: TrialSpec) -> tuple[Any, int]:
    """The trial rebuilt by the engine, with its final weights and buffers loaded."""
    from normbench.engine.build import build_trial

    where = trial_dir(run_dir / "checkpoints", spec.trial_id)
    payload = ckpt.load_checkpoint(where, trial_id=spec.trial_id)
    assert payload is not None  # _trials checked the file
    trial = build_trial(spec)
    trial.model.load_state_dict(payload["model"])
    return trial, int(payload["epoch"])


def _line(
    summary: dict[str, Any],
    trial: Any,
    epoch: int,
    name: str,
    params: dict[str, Any],
    result: dict[str, Any],
) -> dict[str, Any]:
    scoring = trial.task.scoring
    return {
        "trial_id": summary["trial_id"],
        "cell": summary.get("cell"),
        "setting": name,
        "params": params,
        "checkpoint_epoch": epoch,
        **result,
        **({} if scoring == CLASSIFICATION else {"scoring": scoring.to_dict()}),
        # what can change these numbers without changing the experiment
        "device": str(trial.runtime.device),
        "num_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def _describe(line: dict[str, Any]) -> str:
    best = scoring_of(line).best
    test = line.get(f"test_{best.name}")
    test_txt = "no test split" if test is None else f"test {best.label} {test:.4g}{best.unit}"
    return f"trial {line['trial_id']}: {line['label']}: {test_txt}"


# -- the two settings -----------------------------------------------------------------------
def _metrics(trial: Any, split: str) -> dict[str, float | None]:
    """The task's metrics of `split` as record keys (`val_top1`, ...)."""
    from normbench.engine.loop import evaluate

    values = evaluate(trial, getattr(trial.data, split, None), split=split)
    return {f"{split}_{m.name}": values.get(m.name) for m in trial.task.scoring.on(split)}


def choose_example_weight(trial: Any, params: dict[str, Any]) -> dict[str, Any] | None:
    """alpha chosen on validation over `params["grid"]` by the task's headline metric (in
    its direction); test metrics at that alpha only.

    Returns None when no layer of the model has an example weight.
    """
    layers = [m for m in trial.model.modules() if hasattr(m, EXAMPLE_WEIGHT)]
    if not layers:
        return None
    trained = [getattr(m, EXAMPLE_WEIGHT) for m in layers]
    headline = trial.task.scoring.best
    key, sign = f"val_{headline.name}", 1.0 if headline.higher_is_better else -1.0
    by_alpha: dict[str, float | None] = {}
    best: tuple[float, dict[str, Any]] | None = None
    try:
        for alpha in params["grid"]:  # ascending: a tie keeps the smaller alpha
            for m in layers:
                setattr(m, EXAMPLE_WEIGHT, float(alpha))
            val = _metrics(trial, "val")
            score = val[key]
            by_alpha[repr(float(alpha))] = score
            if score is not None and (best is None or sign * score > sign * best[1][key]):
                best = (float(alpha), val)
        if best is None:
            return None
        for m in layers:
            setattr(m, EXAMPLE_WEIGHT, best[0])
        test = _metrics(trial, "test")
    finally:
        for m, a in zip(layers, trained, strict=True):
            setattr(m, EXAMPLE_WEIGHT, a)
    return {
        "label": f"alpha={best[0]:g} chosen on val",
        "value": best[0],
        "trained_value": trained[0],
        f"{key}_by_value": by_alpha,
        **best[1],
        **test,
    }


def recalibrate(trial: Any, params: dict[str, Any]) -> dict[str, Any] | None:
    """Running statistics recomputed over K training batches, then val and test metrics.

    Returns None when no layer has running statistics. The model keeps the recalibrated
    statistics afterwards (the trial object is discarded by the caller).
    """
    layers = [m for m in trial.model.modules() if _stat_names(m)]
    if not layers:
        return None
    batches = min(int(params["batches"]), trial.batches_per_epoch)
    with _recalibration_mode(trial.model, layers):
        trial.data.train.set_epoch(0)
        seen = 0
        with torch.no_grad():
            for i, (x, y) in enumerate(trial.data.train):
                if i >= batches:
                    break
                x = trial.runtime.to_input(x) if isinstance(x, torch.Tensor) else x
                with trial.runtime.autocast():  # the task's training forward, no gradient
                    trial.task.training_step(trial.forward, (x, y))
                seen += 1
    return {
        "label": f"running statistics recalibrated on {seen} training batches",
        "value": seen,
        **_metrics(trial, "val"),
        **_metrics(trial, "test"),
    }


def _stat_names(module: nn.Module) -> list[str]:
    own = dict(module.named_buffers(recurse=False))
    return [n for n in STAT_BUFFERS if n in own] if "running_mean" in own else []


@contextlib.contextmanager
def _recalibration_mode(model: nn.Module, layers: list[nn.Module]) -> Iterator[None]:
    """Training mode, cumulative averages from a zeroed counter, batch statistics always; on
    exit every buffer but the statistics, every switch and the train flag are restored."""
    saved = {n: b.detach().clone() for n, b in model.named_buffers()}
    switches = [(m, getattr(m, "momentum", None), getattr(m, "fct", None)) for m in layers]
    stats = {f"{n}.{b}".lstrip(".") for n, m in model.named_modules() for b in _stat_names(m)}
    was_training = model.training
    for m in layers:
        setattr(m, "momentum", None)  # noqa: B010  f = 1 / num_batches_tracked: the plain mean over the batches
        counter = getattr(m, "num_batches_tracked", None)
        if isinstance(counter, torch.Tensor):
            counter.zero_()
        if isinstance(getattr(m, "fct", None), bool):
            setattr(m, "fct", False)  # noqa: B010  UBN: batch statistics (and updates) at every step
    model.train()
    try:
        yield
    finally:
        model.train(was_training)
        for m, momentum, fct in switches:
            setattr(m, "momentum", momentum)  # noqa: B010
            if fct is not None:
                setattr(m, "fct", fct)  # noqa: B010
        with torch.no_grad():
            for n, b in model.named_buffers():
                if n not in stats:
                    b.copy_(saved[n])
