"""`print_table`: plain aligned columns off a terminal (one line per row, nothing wrapped)."""

from __future__ import annotations

import io

from rich.console import Console

from normbench.tables import print_table


def test_piped_table_keeps_every_value_on_its_row_line() -> None:
    out = io.StringIO()
    long_value = "x" * 300  # far wider than any terminal
    print_table(
        ("name", "n", "value"),
        [("bn", "3", long_value), ("fourthings", "12", "a\nb")],
        title="t",
        caption="c",
        right=("n",),
        console=Console(file=out, width=40),
    )
    assert out.getvalue().splitlines() == [
        "t",
        "name         n  value",
        "bn           3  " + long_value,
        "fourthings  12  a b",
        "c",
    ]


def test_terminal_gets_a_rich_table() -> None:
    out = io.StringIO()
    console = Console(file=out, width=60, force_terminal=True, color_system=None)
    print_table(("name", "n"), [("bn", "3")], title="t", console=console)
    assert "┃ name ┃" in out.getvalue() or "│ bn   │" in out.getvalue()
