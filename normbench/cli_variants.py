"""`normbench variants`: list every registered variant (built-ins and plugins).

Shows name, paper, options with defaults, learnable parameters per channel, whether the layer
depends on the batch, what its forward takes (x; x and a branch index, which defaults; x and the
style features, not a plain norm_layer(C)), its computation revision (the latest its code
declares, docs/reproducibility.md#computation-revisions; `--json` lists each change) and where
it came from: a rich table on a terminal, plain aligned columns (one line per variant, never
wrapped) when piped, `--json` for scripts.
`--plugin FILE` (repeatable) loads plugin files first; a broken file is a user error (one
line, exit 2). Installed entry-point plugins that fail to load are listed as warnings on
stderr and do not hide the others.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

_DEFAULTS_HIDDEN = {"eps": 1e-5, "momentum": 0.1}  # the contract defaults, shown only if changed


def register(app: typer.Typer) -> None:
    app.command("variants")(variants_command)


def variants_command(
    as_json: Annotated[
        bool, typer.Option("--json", help="Print a JSON list for scripts instead of a table.")
    ] = False,
    plugin: Annotated[
        list[Path] | None,
        typer.Option("--plugin", help="Python file that registers variants (repeatable)."),
    ] = None,
) -> None:
    """List every normalization variant: paper, options, parameters per channel, source."""
    from normbench.registry import load_plugin
    from normbench.variants_api import VARIANTS, list_variants, variant_info

    for path in plugin or []:
        load_plugin(path)
    infos = [variant_info(name) for name in list_variants()]
    for message in VARIANTS.broken().values():
        print(f"normbench: warning: {message}", file=sys.stderr)
    if as_json:
        print(json.dumps(infos, indent=2))
    else:
        _print_table(infos)
        print(
            "eps=1e-05 and momentum=0.1 are options of every variant (shown only when different)."
        )


_COLUMNS = ("name", "options", "params/ch", "batch-dep.", "forward", "rev.", "source", "paper")
# what forward takes (the layer's `conditioning`): a plain norm_layer(C) takes x alone
_FORWARD = {None: "x", "index": "x, index", "style": "x, style"}


def _format_options(options: dict[str, Any], sep: str) -> str:
    shown = {k: v for k, v in options.items() if _DEFAULTS_HIDDEN.get(k, object()) != v}
    return sep.join(f"{k}={v!r}" for k, v in shown.items()) or "-"


def _rows(infos: list[dict[str, Any]], options_sep: str) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for info in infos:
        ppc = info["params_per_channel"]
        rows.append((
            info["name"],
            _format_options(info["options"], options_sep),
            "error: " + info["error"] if ppc is None else str(ppc),
            {True: "yes", False: "no"}.get(info["batch_dependent"], "?"),
            _FORWARD.get(info.get("conditioning"), "?"),
            str(info["revision"]),
            info["source"],
            info["paper"] or "-",
        ))  # fmt: skip
    return rows


def _print_table(infos: list[dict[str, Any]]) -> None:
    from normbench.tables import print_table

    rows = _rows(infos, "\n")
    print_table(_COLUMNS, rows, title="normbench variants", show_lines=True)
