"""`print_table`: one table printer for every command, a rich table on a terminal and plain
aligned columns otherwise, so piped output (`normbench variants | cat`, CI logs) never wraps a
value across lines whatever the width."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def print_table(
    columns: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    title: str | None = None,
    caption: str | None = None,
    right: Sequence[str] = (),
    console: Any = None,
    show_lines: bool = False,
) -> None:
    """Print `rows` (strings, one per column) under `columns`; `right` names right-aligned
    columns. Cells may hold newlines for the terminal table; off a terminal they become spaces."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    if console.is_terminal:
        table = Table(title=title, caption=caption, show_lines=show_lines, title_justify="left")
        for i, column in enumerate(columns):
            # the first column names the row: never folded or cut, however narrow the terminal
            key = max((len(line) for row in rows for line in row[0].split("\n")), default=0)
            table.add_column(
                column,
                justify="right" if column in right else "left",
                min_width=key if i == 0 else None,
            )
        for row in rows:
            table.add_row(*row)
        console.print(table)
        return
    flat = [tuple(columns), *(tuple(" ".join(c.split("\n")) for c in row) for row in rows)]
    widths = [max(len(row[i]) for row in flat) for i in range(len(columns))]
    lines = [title] if title else []
    for row in flat:
        cells = [
            cell.rjust(w) if col in right else cell.ljust(w)
            for cell, w, col in zip(row, widths, columns, strict=True)
        ]
        lines.append("  ".join(cells).rstrip())
    if caption:
        lines.append(caption)
    console.file.write("\n".join(lines) + "\n")
