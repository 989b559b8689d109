"""`normbench tasks`: list every registered task (built-ins and plugins): its options, its
headline metric with its direction, its other metrics with unit and splits, and where it came
from. `--plugin FILE` (repeatable) loads plugin files first; `--json` prints a list for
scripts. A task is what a trial trains and how it is scored (docs/tasks.md).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer


def register(app: typer.Typer) -> None:
    app.command("tasks")(tasks_command)


def tasks_command(
    as_json: Annotated[
        bool, typer.Option("--json", help="Print a JSON list for scripts instead of a table.")
    ] = False,
    plugin: Annotated[
        list[Path] | None,
        typer.Option("--plugin", help="Python file that registers tasks (repeatable)."),
    ] = None,
) -> None:
    """List every task: options, headline metric and direction, metrics, source."""
    from normbench.registry import load_plugin
    from normbench.tasks import TASKS

    for path in plugin or []:
        load_plugin(path)
    for message in TASKS.broken().values():
        print(f"normbench: warning: {message}", file=sys.stderr)
    infos = [task_info(e.name, e.obj, e.source, TASKS.options(e.name)) for e in TASKS.entries()]
    if as_json:
        print(json.dumps(infos, indent=2))
        return
    from normbench.tables import print_table

    rows = [
        (
            i["name"],
            ", ".join(f"{k}={v!r}" for k, v in (i["options"] or {}).items()) or "-",
            f"{i['headline']} ({'higher' if i['higher_is_better'] else 'lower'} is better)",
            ", ".join(
                f"{m['name']}{' [' + m['unit'] + ']' if m['unit'] else ''} "
                f"({'/'.join(m['splits'])})"
                for m in i["scoring"]["metrics"]
            ),
            i["source"],
        )
        for i in infos
    ]
    print_table(("name", "options", "headline", "metrics (splits)", "source"), rows)


def task_info(name: str, cls: Any, source: str, options: dict[str, Any] | None) -> dict[str, Any]:
    """One task's listing: name, options with defaults, scoring, headline and its direction."""
    scoring = cls.scoring
    return {
        "name": name,
        "options": options,
        "headline": scoring.headline,
        "higher_is_better": scoring.best.higher_is_better,
        "scoring": scoring.to_dict(),
        "source": source,
        "doc": (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else "",
    }
