"""The tasks' registry: `TASKS`, its built-ins, `register_task`, `create_task`, and the check
every task (built-in or plugin) passes on registration.

A task is a class following `normbench.contract.TaskClass`: keyword-only options with
defaults, a `scoring` class attribute (`normbench.contract.Scoring`) and the methods
`build_model`, `training_step` and `evaluate`; optionally a classmethod `check_options(options,
*, dataset=None, backbone=None) -> {option: why}` that suite validation and trial building
call through the one option door (`normbench.options`), and a method `norm_widths()` naming
the widths of the norms it builds besides the backbone's (`task_norm_widths`). Plugins
register through the entry-point group `normbench.tasks` or `@register_task("name")` in a
plugin file.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from normbench.contract import Scoring, TaskCost
from normbench.options import OptionDoor
from normbench.registry import kind_registry
from normbench.tasks.adversarial.task import AdversarialTraining
from normbench.tasks.classification import Classification
from normbench.tasks.detection.task import Detection, InstanceSegmentation
from normbench.tasks.generation.task import Generation
from normbench.tasks.nas.task import Darts
from normbench.tasks.slots import task_rules
from normbench.tasks.style_transfer.task import StyleTransfer

BUILTIN_TASKS: dict[str, type] = {
    "classification": Classification,
    "darts": Darts,
    "detection": Detection,
    "generation": Generation,
    "instance_segmentation": InstanceSegmentation,
    "style_transfer": StyleTransfer,
    "adversarial": AdversarialTraining,
}
METHODS = ("build_model", "training_step", "evaluate")


def task_problem(cls: Any) -> str | None:
    """How `cls` breaks the task contract, or None."""
    if not inspect.isclass(cls):
        return f"is not a class (got {type(cls).__name__})"
    scoring = getattr(cls, "scoring", None)
    if not isinstance(scoring, Scoring):
        return "has no `scoring` class attribute (a normbench.contract.Scoring)"
    missing = [m for m in METHODS if not callable(getattr(cls, m, None))]
    if missing:
        return f"lacks the method(s) {', '.join(missing)} (docs/tasks.md)"
    if hasattr(cls, "cost") and not callable(cls.cost):
        return "has a `cost` that is not a classmethod `cost(options) -> TaskCost | str`"
    try:
        params = list(inspect.signature(cls).parameters.values())
    except (TypeError, ValueError):
        return None
    bad = [
        p.name
        for p in params
        if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        and (p.kind is not p.KEYWORD_ONLY or p.default is p.empty)
    ]
    if bad:
        return (
            f"takes {', '.join(bad)} without a default or not keyword-only; a task's options "
            "are keyword-only with defaults (`def __init__(self, *, option=default)`)"
        )
    return None


TASKS = kind_registry(
    "task",
    "normbench.tasks",
    lambda: BUILTIN_TASKS,
    check=task_problem,
    door=OptionDoor("task", rules=task_rules),
)


def register_task(name: str | None = None) -> Callable[[Any], Any]:
    """Decorator: register a task class under `name` (default: the class name)."""
    return TASKS.decorator(name)


def create_task(name: str, options: dict[str, Any], **context: Any) -> Any:
    """Task `name` built with `options`, after the option check suite validation runs
    (`context`: the trial's `dataset` and `backbone` names, for the task's own rules)."""
    TASKS.require_options(name, options, **context)
    return TASKS.get(name).obj(**options)


def task_norm_widths(name: str, options: dict[str, Any]) -> dict[str, frozenset[int]]:
    """{where: widths} of the norms task `name` with `options` builds itself, besides the
    backbone's (a detector's FPN and heads; its optional `norm_widths()` method, docs/tasks.md),
    for suite validation to check the variant's options at. Empty when it declares none;
    raises what the task raises."""
    cls = TASKS.get(name).obj
    if not callable(getattr(cls, "norm_widths", None)):
        return {}
    return {str(k): frozenset(int(w) for w in v) for k, v in cls(**options).norm_widths().items()}


def task_cost(name: str, options: dict[str, Any], **context: Any) -> TaskCost | str:
    """Task `name`'s cost per image in backbone forwards (`TaskCost`), or a sentence saying
    why there is none: its classmethod `cost(options)`, given the trial's context keywords
    (`variant`, `variant_options`, `backbone`, `dataset`) it declares, as `check_options` is;
    a task without the hook, or one that answers with something else, gets a sentence."""
    hook = getattr(TASKS.get(name).obj, "cost", None)
    if not callable(hook):
        return "declares no cost (classmethod cost(options) -> TaskCost; docs/tasks.md)"
    params = inspect.signature(hook).parameters
    cost = hook(dict(options), **{k: v for k, v in context.items() if k in params})
    if isinstance(cost, str) and cost.strip():
        return cost
    if isinstance(cost, TaskCost) and min(cost.train, cost.evaluate) >= 0:
        return cost
    return f"gave no TaskCost with train, evaluate >= 0 and no reason ({cost!r})"
