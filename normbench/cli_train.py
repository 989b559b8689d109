"""`normbench train` and `normbench evaluate`: one trial in this process, with a live display
and a summary table; finished checkpoints re-scored under inference-time settings.

A command module like `cli_variants`: above the suite (`--suite FILE --trial ID` takes a trial
from a suite) and the engine (`run_trial`, `normbench.engine.evaluate`).

On a terminal it shows an epoch progress bar and a live line (loss, accuracy, images/s); off a
terminal it prints one plain line per epoch. `--json` prints only the records, one JSON object
per line, for scripts. The trial is `run_trial`, the same loop the suite runner uses.
"""

from __future__ import annotations

import inspect
import json
import sys
import typing
from pathlib import Path
from typing import Annotated, Any

import typer

from normbench.contract import EpochRecord, Metric, Scoring, scoring_of
from normbench.errors import UserError, stopped_by
from normbench.spec import (
    IDENTITY,
    DatasetOptions,
    Declared,
    Recipe,
    TrialSpec,
    declared,
    flat_fields,
    input_problems,
    value_rule,
)


class OptionSyntaxError(UserError, ValueError):
    """A `--option`/`--dataset-option` that is not key=value."""


def register(app: typer.Typer) -> None:
    app.command("train")(train_command)
    app.command("evaluate")(evaluate_command)


def evaluate_command(
    run_dir: Annotated[Path, typer.Argument(metavar="RUN_DIR", help="A finished run directory.")],
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            help="key=value: example_weights=[0,0.05,0.1], recalibrate_batches=50, "
            "trials=[ID], dataset_root=PATH, device=cpu (repeatable).",
        ),
    ] = None,
    plugin: Annotated[
        list[Path] | None,
        typer.Option(
            "--plugin",
            help="Plugin file the trials were trained with (repeatable); a plugin path stored "
            "in RUN_DIR is never imported.",
        ),
    ] = None,
) -> int:
    """Evaluate finished checkpoints under inference-time settings (no retraining): the
    example weight alpha chosen on validation, and recalibrated running statistics. Appends
    to RUN_DIR/evaluations.jsonl; `normbench report` shows them as extra rows."""
    from normbench.engine.evaluate import evaluate_run, parse_settings  # imports torch
    from normbench.results.store import read_jsonl

    target = Path(run_dir) / "evaluations.jsonl"
    before = sum(1 for _ in read_jsonl(target))
    settings = parse_settings(parse_key_values(set_, "--set"))
    try:
        written = evaluate_run(run_dir, settings, plugins=tuple(plugin or ()))
    except KeyboardInterrupt as exc:  # SIGINT or SIGTERM: what is appended stays
        kept = sum(1 for _ in read_jsonl(target)) - before
        what, code = stopped_by(exc)
        print(f"normbench: {what}; {kept} evaluation(s) appended to {target} are kept; "
              "rerun the same command to do the rest", file=sys.stderr)  # fmt: skip
        raise SystemExit(code) from None
    print(f"{len(written)} evaluation(s) appended to {target}")
    return 0


def parse_key_values(items: list[str] | None, flag: str) -> dict[str, Any]:
    """['k=v', ...] -> {k: v typed by the suite's YAML rules} ('tau=0.2' and 'eps=1e-5' give
    floats, 'fct=false' a bool; `normbench.suite.yamlmap.parse_value`)."""
    from normbench.suite.yamlmap import parse_value

    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise OptionSyntaxError(f"{flag} {item!r}: expected key=value, e.g. {flag} tau=0.2")
        try:
            out[key.strip()] = parse_value(raw) if raw.strip() else ""
        except ValueError as exc:
            raise OptionSyntaxError(f"{flag} {item!r}: {exc}") from None
    return out


def train_command(
    suite: Annotated[
        Path | None,
        typer.Option(
            help="Take the whole trial from this suite file or run directory (with --trial)."
        ),
    ] = None,
    trial: Annotated[
        str | None, typer.Option(help="Trial id (or unique prefix) of --suite; see --dry-run.")
    ] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Suite override, as for `normbench run`.")
    ] = None,
    checkpoint_dir: Annotated[
        Path | None, typer.Option(help="Save a checkpoint here each epoch; resume from it.")
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the records as JSON lines, nothing else.")
    ] = False,
    **fields: Any,
) -> None:
    """Train one model and print its per-epoch results.

    Either name the trial with flags (every field of the trial declaration, normbench/spec.py;
    an omitted flag means what the omitted `train:` key of a suite means), or take it whole
    from a suite with `--suite FILE --trial ID`: the records then equal the suite trial's in
    the same environment (the suite's thread count included)."""
    if suite is not None or trial is not None:
        plugins = tuple(Path(p) for p in fields.get("plugins") or ())
        spec = suite_trial(suite, trial, set_ or [], plugins=plugins)
    else:
        spec = spec_from_flags(fields)
    if as_json:
        _run_json(spec, checkpoint_dir)
    else:
        _run_display(spec, checkpoint_dir)


def _flag(d: Declared) -> str:
    return d.param.flag or "--" + d.name.replace("_", "-")


def _flag_parameter(d: Declared) -> inspect.Parameter:
    """A `normbench train` option for one declared field: same help, the spec's default
    (shown, never repeated: an unset flag passes nothing, so the spec's default applies)."""
    origin, args = typing.get_origin(d.type), typing.get_args(d.type)
    tp: Any = d.type
    if _is_mapping(d):  # dict, or dict | None (init_from): key=value, repeatable
        tp, extra = list[str], " (repeatable)"
    elif origin is tuple:
        tp, extra = list[args[0]], " (repeatable)"  # type: ignore[valid-type]
    elif origin is typing.Literal or (origin is not None and str in args):
        tp, extra = str, ""
    else:
        tp, extra = next((a for a in args if a is not type(None)), d.type), ""
    rule = value_rule(d.type, d.param) if tp in (int, float, str) else None
    shown = "required" if d.required else f"default: {_shown(d.default)}"
    text = f"{d.param.help}{extra} [{shown}" + (f"; {rule}]" if rule else "]")
    panel = "Recipe" if d.owner is Recipe else "Trial" if d.param.role == IDENTITY else "Where"
    flag = _flag(d) + (f"/--no-{_flag(d)[2:]}" if tp is bool else "")
    option = typer.Option(flag, help=text, show_default=False, rich_help_panel=panel)
    return inspect.Parameter(
        d.name,
        inspect.Parameter.KEYWORD_ONLY,
        default=None,
        annotation=Annotated[tp | None, option],
    )


def _is_mapping(d: Declared) -> bool:
    """A dict field, or a dict-or-None one (`init_from`)."""
    return any(typing.get_origin(t) is dict for t in (d.type, *typing.get_args(d.type)))


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return "none" if value is None or value in ((), {}) else str(value)


def spec_from_flags(given: dict[str, Any]) -> Any:
    """The TrialSpec named by `normbench train` flags (unset ones: None)."""
    by_name = {d.name: d for d in flat_fields()}
    missing = [_flag(by_name[k]) for k in by_name if by_name[k].required and given.get(k) is None]
    if missing:
        raise TrainArgumentError(
            f"normbench train needs {', '.join(missing)} (or --suite FILE --trial ID)"
        )
    values: dict[str, Any] = {}
    for name, value in given.items():
        d = by_name[name]
        if value is None or value == []:
            continue
        if _is_mapping(d):
            value = parse_key_values(value, _flag(d))
        elif name == "plugins":
            value = tuple(str(Path(p).expanduser().resolve()) for p in value)
        elif typing.get_origin(d.type) is tuple:
            value = tuple(value)
        values[name] = value
    problems = input_problems({**{k: d.default for k, d in by_name.items()}, **values})
    if problems:
        raise TrainArgumentError("; ".join(problems))
    # As a suite does: the data set's common options written out, the variant's own placement.
    values["dataset_options"] = {
        **{d.name: d.default for d in declared(DatasetOptions)},
        **values.get("dataset_options", {}),
    }
    if "placement" not in values:
        from normbench.variants_api import default_placement

        values["placement"] = default_placement(values["variant"])
    recipe = {k: v for k, v in values.items() if by_name[k].owner is Recipe}
    rest = {k: v for k, v in values.items() if k not in recipe}
    spec = TrialSpec(**rest, recipe=Recipe(**recipe))
    problems = _option_problems(spec, {k: given[k] for k in given if _is_mapping(by_name[k])})
    if problems:
        raise TrainArgumentError("; ".join(problems))
    from normbench.engine.revisions import stamp

    return stamp(spec)  # at the code's revisions (plugins loaded above), as a suite's trial is


def _option_problems(spec: TrialSpec, items: dict[str, list[str] | None]) -> list[str]:
    """The registries' check of each `--<kind>-option` flag's options (the check the trial's
    build makes, here before it starts), each problem named at the flag item it is about
    (`--option eps=abc: ...`). An unknown name or plugin is left to the build to report."""
    from normbench.data import DATASETS
    from normbench.engine.build import load_plugins
    from normbench.models import BACKBONES
    from normbench.tasks import TASKS
    from normbench.variants_api import VARIANTS

    load_plugins(spec)
    registries = {"variant": VARIANTS, "backbone": BACKBONES, "dataset": DATASETS, "task": TASKS}
    by_name = {d.name: d for d in flat_fields()}
    out = []
    for field, given in items.items():
        kind, flag = field.removesuffix("_options"), _flag(by_name[field])
        reg, name = registries.get(kind), str(getattr(spec, kind, ""))
        if not given or reg is None or name not in reg:
            continue
        context = _variant_context(spec) if kind == "variant" else {}
        for p in reg.check_options(name, getattr(spec, field), **context):
            said = [i for i in given if p.option and i.partition("=")[0].strip() == p.option]
            out.append(f"{flag} {said[-1] if said else ' '.join(given)}: {p.message}")
    return out


def _variant_context(spec: TrialSpec) -> dict[str, Any]:
    """What a suite's check tells the variant's option hook about this trial: the batch its
    statistics see, where L2 pulls its parameters, and every width the backbone and the task
    build it at (so `--variant gn --option num_groups=5` on resnet20 is refused here as in a
    suite, instead of falling back to gcd(5, C) groups)."""
    from normbench.models import BACKBONES
    from normbench.models.registry import backbone_conditioning, norm_widths
    from normbench.options import freeze
    from normbench.tasks import TASKS, task_norm_widths

    devices = spec.devices if spec.stats_scope == "global" else 1
    context: dict[str, Any] = {"batch_size": spec.batch_size * devices}
    backbone, last = spec.backbone.lower(), spec.placement == "last-in-block"
    if (
        backbone not in BACKBONES
        or spec.task.lower() not in TASKS
        or BACKBONES.check_options(backbone, spec.backbone_options, build=True, last_in_block=last)
        or TASKS.check_options(spec.task, spec.task_options)
    ):
        return context  # no widths to check at: the build names the backbone's or task's problem
    widths = set(norm_widths(backbone, freeze(spec.backbone_options), last))
    for found in task_norm_widths(spec.task, spec.task_options).values():
        widths |= found
    return {
        **context,
        "widths": frozenset(widths),
        "decay_toward": spec.recipe.decay_toward,
        "_slot": backbone_conditioning(backbone),
        "_where": f" of {spec.backbone} (norm widths {sorted(widths)})",
    }


def _generated_signature() -> None:
    """Give `train_command` one option per declared field (typer reads `__signature__`)."""
    fixed = [p for p in inspect.signature(train_command).parameters.values()
             if p.kind is not inspect.Parameter.VAR_KEYWORD]  # fmt: skip
    hints = typing.get_type_hints(train_command, include_extras=True)
    fixed = [p.replace(annotation=hints[p.name]) for p in fixed]
    params = fixed + [_flag_parameter(d) for d in flat_fields()]
    train_command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    train_command.__annotations__ = {p.name: p.annotation for p in params}


_generated_signature()


class TrainArgumentError(UserError, ValueError):
    """`normbench train` flags that do not name one trial."""


def suite_trial(
    suite: Path | None, trial: str | None, overrides: list[str], *, plugins: tuple[Path, ...] = ()
) -> Any:
    """The spec of trial `trial` (id or unique prefix) of a suite file (after overrides), or
    of a run directory (any stored trial, searched ones included; its plugin files must be
    among `plugins`, as a run directory never names code to run)."""
    if suite is None or not trial:
        raise TrainArgumentError("--suite FILE (or RUN_DIR) and --trial ID go together")
    if suite.is_dir():
        specs = _stored_specs(suite)
    else:
        from normbench.suite.loader import load_suite

        loaded = load_suite(suite, overrides=overrides)
        if loaded.search is not None:
            raise TrainArgumentError(
                f"{suite}: a search suite's trials are sampled; pass its run directory as "
                "--suite to train one of them"
            )
        specs = {t.trial_id: t.spec for t in loaded.trials()}
    matches = [tid for tid in specs if tid.startswith(trial)]
    if len(matches) != 1:
        ids = ", ".join(list(specs)[:8])
        what = "matches no trial" if not matches else "matches several trials"
        hint = ""
        if not matches and not suite.is_dir():
            # --max-epochs, --limit-batches and --set change a trial's id: the run knows it.
            hint = (
                "; for a trial of a run made with --set, --max-epochs or --limit-batches, "
                "pass its run directory as --suite"
            )
        raise TrainArgumentError(f"--trial {trial!r} {what} of {suite} (trials: {ids}, ...){hint}")
    if suite.is_dir():
        from normbench.engine.stored import spec_from_run

        return spec_from_run(specs[matches[0]], plugins, trial_id=matches[0], where=suite)
    return specs[matches[0]]


def _stored_specs(run_dir: Path) -> dict[str, Any]:
    """Trial id -> stored spec dict of every trial of a run directory (summary or first
    epoch); turned into a TrialSpec only once picked (`engine.stored.spec_from_run`)."""
    from normbench.results.store import stored_specs

    specs = {tid: spec for tid, spec in stored_specs(run_dir).items() if spec}
    if not specs:
        raise TrainArgumentError(f"{run_dir}: not a run directory with stored trials")
    return specs


def _run_json(spec: Any, checkpoint_dir: Path | None) -> None:
    from normbench.engine.loop import run_trial

    for record in run_trial(spec, checkpoint_dir=checkpoint_dir):
        print(json.dumps(record, allow_nan=False), flush=True)


def _run_display(spec: Any, checkpoint_dir: Path | None) -> None:
    from rich.console import Console

    from normbench.engine.loop import run_trial

    console = Console()
    records: list[EpochRecord] = []
    if console.is_terminal:
        records = _run_live(spec, checkpoint_dir, console)
    else:
        for record in run_trial(spec, checkpoint_dir=checkpoint_dir):
            records.append(record)
            print(_epoch_line(record, spec.epochs), flush=True)
    _print_summary(console, spec, records)


def _run_live(spec: Any, checkpoint_dir: Path | None, console: Any) -> list[EpochRecord]:
    """Progress bars for epochs and batches, with a live loss/accuracy/speed line."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from normbench.engine.loop import run_trial

    columns = (
        TextColumn("{task.description}"),
        BarColumn(bar_width=20),
        MofNCompleteColumn(),
        TextColumn("{task.fields[line]}"),
    )
    records: list[EpochRecord] = []
    with Progress(*columns, console=console, transient=False) as progress:
        epochs = progress.add_task("epochs", total=spec.epochs, line="")
        batches = progress.add_task("batches", total=None, line="")

        train = _scoring(spec).on("train")[1:]  # the train metrics but the loss

        def on_batch(p: dict[str, Any]) -> None:
            shown = "".join(f"{m.label} {_value(m, p.get(m.name))}  " for m in train)
            line = f"epoch {p['epoch']}  loss {p['loss']:.4f}  {shown}{p['images_per_s']:.0f} img/s"
            progress.update(batches, completed=p["batch"], total=p["batches"], line=line)

        for record in run_trial(spec, checkpoint_dir=checkpoint_dir, on_batch=on_batch):
            records.append(record)
            progress.update(epochs, completed=record["epoch"], line=_epoch_line(record, None))
    return records


def _fmt(value: Any, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def _scoring(spec: Any) -> Scoring:
    from normbench.tasks import TASKS

    scoring: Scoring = TASKS.get(spec.task).obj.scoring
    return scoring


def _value(metric: Metric, value: Any, unit: bool = True) -> str:
    """A metric's value as the tables show it: percent with 2 decimals, else 4 digits."""
    if metric.unit == "%":
        return _fmt(value) + ("%" if unit else "")
    return _fmt(value, ".4g")


def _epoch_line(record: EpochRecord, epochs: int | None) -> str:
    head = f"epoch {record['epoch']}" + (f"/{epochs}" if epochs else "")
    if record["status"] != "ok":
        return f"{head}  DIVERGED: {record.get('diverged_reason', '')}"
    best = scoring_of(record).best
    val, test = record.get(f"val_{best.name}"), record.get(f"test_{best.name}")
    return (
        f"{head}  train loss {_fmt(record['train_loss'], '.4f')}  "
        f"val {best.label} {_value(best, val)}  test {best.label} {_value(best, test)}  "
        f"{_fmt(record['images_per_s'], '.0f')} img/s"
    )


def _print_summary(console: Any, spec: Any, records: list[EpochRecord]) -> None:
    from normbench.tables import print_table

    if not records:
        print("nothing to do: the checkpoint already holds the finished trial", file=sys.stderr)
        return
    title = f"{spec.variant} / {spec.backbone} / {spec.dataset} (seed {spec.seed})"
    scoring = scoring_of(records[0])
    best = scoring.best
    shown = (
        [("train", m) for m in scoring.on("train")[1:]]
        + [("val", best), ("test", best)]
        + [("test", scoring.metric(n)) for n in scoring.shown]
    )
    cols = (
        "epoch",
        "status",
        "train loss",
        *(f"{split} {m.label}" for split, m in shown),
        "lr",
        "time s",
        "img/s",
    )
    rows = [
        (
            str(r["epoch"]),
            r["status"],
            _fmt(r["train_loss"], ".4f"),
            *(_value(m, r.get(f"{split}_{m.name}"), unit=False) for split, m in shown),
            _fmt(r["lr"], ".4g"),
            _fmt(r["epoch_time_s"], ".1f"),
            _fmt(r["images_per_s"], ".0f"),
        )
        for r in records
    ]
    print_table(cols, rows, title=title, right=cols, console=console)
    last = records[-1]
    console.print(
        f"final epoch {last['epoch']}: test {best.label} "
        f"{_value(best, last.get(f'test_{best.name}'))} "
        f"(final-epoch, not best-on-test); params {last['params']:,}; device {last['device']}; "
        f"variant from {last['variant_source']}",
        highlight=False,
    )
