"""`init_from`: a trial's backbone starts from the weights of a finished classification trial
of another normbench run (a detector from an ImageNet classifier, as detection papers start
theirs; UBN Tables 5-6).

`init_from: {run: DIR, cell: {...}}` names the run directory and the spec fields that pick one
trial of it. The trial's own variant, variant options, backbone, backbone options and placement
are matched unless `cell` gives them (the norm layers' weights and statistics must fit the
model they are loaded into), and the trial must be a completed classification trial with its
checkpoint, whose tensors fit the trial's backbone (in name and shape: the data's channels,
the backbone's width and depth). Suite validation checks all of this (`init_problem`, at
`train.init_from`'s line, exit status 2 before Ray starts), the fit against the backbone built
on the meta device; `build_trial` loads the weights into the module `ModelContext.backbone`
returns (`load_init`). Both take the tensors `loaded_names` picks: every tensor but the
classifier's last layer, whose shape follows the classes (a detector never runs it).

Nothing read from the run directory runs: `trials.jsonl` is JSON and the checkpoint is read
with `torch.load(weights_only=True)` (`normbench.engine.checkpoint`); a plugin it names is
never imported.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from normbench.engine import checkpoint as ckpt
from normbench.results.revisions import superseded_in
from normbench.spec import SpecError, TrialSpec

MATCHED = ("variant", "variant_options", "backbone", "backbone_options", "placement")
TRIALS = "trials.jsonl"
SHOWN = 6  # values listed per spec field when no trial or several match (a run may hold 100s)


def init_problem(spec: TrialSpec, backbone: Callable[[], nn.Module | None]) -> str | None:
    """Why `spec.init_from` cannot start this trial, in one line, or None: no usable trial, or
    a checkpoint whose tensors do not fit `backbone()`, the trial's backbone as the task
    builds it, on the meta device (None: it cannot be known here; the trial checks)."""
    try:
        tid, folder = source_checkpoint(spec)
        target = backbone()
        if target is not None:  # the checkpoint memory-mapped: its shapes, no tensor read
            loaded_names(target, _source_model(folder, tid, mmap=True), _source(spec, tid))
    except (SpecError, ckpt.CheckpointError) as exc:
        return str(exc)
    return None


def source_checkpoint(spec: TrialSpec) -> tuple[str, Path]:
    """(trial id, checkpoint folder) of the trial `spec.init_from` picks; SpecError else."""
    given = spec.init_from
    if not isinstance(given, dict) or set(given) - {"run", "cell"} or "run" not in given:
        raise SpecError(
            f"init_from must be {{run: DIR, cell: {{field: value}}}}, but got {given!r}"
        )
    run, cell = Path(str(given["run"])).expanduser(), given.get("cell") or {}
    if not isinstance(cell, dict):
        raise SpecError(f"init_from.cell must be a mapping of spec fields, but got {cell!r}")
    if not (run / TRIALS).is_file():
        raise SpecError(f"init_from.run {run} is not a normbench run directory (no {TRIALS})")
    want = {k: getattr(spec, k) for k in MATCHED} | cell
    latest, old = _latest(run), superseded_in(run)  # never a trial of an older revision
    found = [t for i, t in latest.items() if i not in old and _matches(t.get("spec") or {}, want)]
    if len(found) != 1:
        shown = ", ".join(f"{k}={v}" for k, v in want.items())
        raise SpecError(
            f"init_from: {len(found)} trials of {run} have {shown}; "
            f"{_holds(found or list(latest.values()), want, differ=bool(found))}; give "
            "init_from.cell fields (seed, batch_size, dataset, ...) that pick exactly one"
        )
    trial = found[0]
    tid, task = str(trial["trial_id"]), (trial.get("spec") or {}).get("task", "classification")
    if task != "classification" or trial.get("status") != "completed":
        raise SpecError(
            f"init_from: trial {tid} of {run} is a {task} trial with status "
            f"{trial.get('status')!r}; it must be a completed classification trial"
        )
    folder = run / "checkpoints" / tid
    if not ckpt.checkpoint_path(folder).is_file():
        raise SpecError(f"init_from: trial {tid} of {run} has no checkpoint at {folder}")
    return tid, folder


def _latest(run: Path) -> dict[str, dict[str, Any]]:
    """Each trial's last line in trials.jsonl (a rerun's line wins)."""
    out: dict[str, dict[str, Any]] = {}
    for line in (run / TRIALS).read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a crash
        if isinstance(record, dict) and "trial_id" in record:
            out[str(record["trial_id"])] = record
    return out


def _holds(trials: list[dict[str, Any]], want: dict[str, Any], differ: bool) -> str:
    """What `trials` hold, in words: their values of the `want` fields none of them has (of
    every `want` field when each value occurs but not together), or, `differ`, of the spec
    fields the (several matching) trials differ in; at most `SHOWN` values a field."""
    specs = [t.get("spec") or {} for t in trials]
    values = {
        k: list(dict.fromkeys(_text(s.get(k)) for s in specs))
        for k in (sorted({k for s in specs for k in s}) if differ else want)
    }
    if differ:
        keys = [k for k, v in values.items() if len(v) > 1]
        return f"they differ in {_fields(values, keys)}"
    absent = [k for k in want if _text(_plain(want[k])) not in values[k]]
    return f"its {len(trials)} trials have {_fields(values, absent or list(want))}"


def _fields(values: dict[str, list[str]], keys: list[str]) -> str:
    def one(k: str) -> str:
        more = len(values[k]) - SHOWN
        return f"{k} " + ", ".join(values[k][:SHOWN]) + (f" (+{more} more)" if more > 0 else "")

    return "; ".join(one(k) for k in keys) or "no field"


def _text(value: Any) -> str:
    """A stored spec value as the message shows it, JSON beyond a string, at most 60 chars."""
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return text if len(text) <= 60 else text[:57] + "..."


def _matches(stored: dict[str, Any], want: dict[str, Any]) -> bool:
    return all(stored.get(k) == _plain(v) for k, v in want.items())


def _plain(value: Any) -> Any:
    return json.loads(json.dumps(value, default=list))


def load_init(model: nn.Module, spec: TrialSpec) -> None:
    """Load the picked trial's weights into `model` (the backbone as built for `spec`): the
    tensors `loaded_names` picks. SpecError naming the first tensor that does not fit."""
    tid, folder = source_checkpoint(spec)
    source = _source_model(folder, tid)
    names = loaded_names(model, source, _source(spec, tid))
    model.load_state_dict({n: source[n] for n in names}, strict=False)


def loaded_names(model: nn.Module, source: dict[str, torch.Tensor], where: str) -> list[str]:
    """The names of the tensors init_from loads into `model` from `source` (the checkpoint's
    model state): every tensor of the model's state dict, each of the same shape there, but
    the classifier's last layer, whose shape follows the classes (a detector never runs it).
    SpecError naming the first other tensor that is missing or of another shape, with both
    shapes. Suite validation asks it of the backbone built on the meta device; the trial, of
    the real one."""
    last = _last_linear(model)
    names = []
    for name, tensor in model.state_dict().items():
        theirs = source.get(name)
        if theirs is not None and theirs.shape == tensor.shape:
            names.append(name)
        elif not name.startswith(f"{last}."):
            mine = tuple(tensor.shape)
            why = (
                f"is missing from its checkpoint ({mine} here)"
                if theirs is None
                else f"is {tuple(theirs.shape)} in its checkpoint and {mine} here"
            )
            raise SpecError(f"init_from: {where} does not fit this trial's backbone: {name} {why}")
    return names


def _source(spec: TrialSpec, tid: str) -> str:
    """'trial ID of RUN' (what a message names)."""
    run = (spec.init_from or {}).get("run")
    return f"trial {tid} of {Path(str(run)).expanduser()}"


def _source_model(folder: Path, tid: str, *, mmap: bool = False) -> dict[str, torch.Tensor]:
    """The model state of the source trial's checkpoint (`mmap`: memory-mapped, nothing read
    until used)."""
    payload = ckpt.load_checkpoint(folder, trial_id=tid, mmap=mmap)
    if payload is None:
        raise SpecError(f"init_from: the checkpoint of trial {tid} in {folder} is gone")
    model: dict[str, torch.Tensor] = payload["model"]
    return model


def _last_linear(model: nn.Module) -> str:
    """The name of the model's last nn.Linear (the classifier whose shape follows classes)."""
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    return names[-1] if names else ""
