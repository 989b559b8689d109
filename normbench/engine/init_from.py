"""`init_from`: a trial's backbone starts from the weights of a finished classification trial
of another normbench run (a detector from an ImageNet classifier, as detection papers start
theirs; UBN Tables 5-6).

`init_from: {run: DIR, cell: {...}}` names the run directory and the spec fields that pick one
trial of it. The trial's own variant, variant options, backbone, backbone options and placement
are matched unless `cell` gives them (the norm layers' weights and statistics must fit the
model they are loaded into), and the trial must be a completed classification trial with its
checkpoint. Suite validation checks all of this (`init_problem`, at `train.init_from`'s line,
exit status 2 before Ray starts); `build_trial` loads the weights into the module
`ModelContext.backbone` returns (`load_init`), every tensor but the classifier's last layer,
whose shape follows the classes (a detector never runs it).

Nothing read from the run directory runs: `trials.jsonl` is JSON and the checkpoint is read
with `torch.load(weights_only=True)` (`normbench.engine.checkpoint`); a plugin it names is
never imported.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from normbench.engine import checkpoint as ckpt
from normbench.spec import SpecError, TrialSpec

MATCHED = ("variant", "variant_options", "backbone", "backbone_options", "placement")
TRIALS = "trials.jsonl"


def init_problem(spec: TrialSpec) -> str | None:
    """Why `spec.init_from` names no usable trial, in one line, or None."""
    try:
        source_checkpoint(spec)
    except SpecError as exc:
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
    latest = _latest(run)
    found = [t for t in latest.values() if _matches(t.get("spec") or {}, want)]
    if len(found) != 1:
        shown = ", ".join(f"{k}={v}" for k, v in want.items())
        raise SpecError(
            f"init_from: {len(found)} trials of {run} have {shown}; give init_from.cell "
            "fields (seed, batch_size, dataset, ...) that pick exactly one"
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


def _matches(stored: dict[str, Any], want: dict[str, Any]) -> bool:
    return all(stored.get(k) == _plain(v) for k, v in want.items())


def _plain(value: Any) -> Any:
    return json.loads(json.dumps(value, default=list))


def load_init(model: nn.Module, spec: TrialSpec) -> None:
    """Load the picked trial's weights into `model` (the backbone as built for `spec`): every
    tensor of the same name and shape; the classifier's last layer may differ in shape (other
    classes). SpecError naming the first tensor that does not fit."""
    tid, folder = source_checkpoint(spec)
    payload = ckpt.load_checkpoint(folder, trial_id=tid)
    if payload is None:
        raise SpecError(f"init_from: the checkpoint of trial {tid} in {folder} is gone")
    source: dict[str, torch.Tensor] = payload["model"]
    own = model.state_dict()
    last = _last_linear(model)
    take = {}
    for name, tensor in own.items():
        theirs = source.get(name)
        if theirs is not None and theirs.shape == tensor.shape:
            take[name] = theirs
        elif not name.startswith(f"{last}."):
            why = "missing" if theirs is None else f"of shape {tuple(theirs.shape)}"
            raise SpecError(
                f"init_from: trial {tid}'s checkpoint does not fit this backbone: {name} "
                f"{tuple(tensor.shape)} is {why} there"
            )
    model.load_state_dict(take, strict=False)


def _last_linear(model: nn.Module) -> str:
    """The name of the model's last nn.Linear (the classifier whose shape follows classes)."""
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    return names[-1] if names else ""
