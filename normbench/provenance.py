"""Where the running normbench code came from: the git commit every run directory and
benchmark report records (airbench's habit: store the environment, git commit included, with
every result).

Two ways to know it. A source checkout (an editable install, or `python -m normbench` from the
repository root) asks git for the live HEAD, with "+dirty" when tracked files differ from it.
An installed copy (a plain `pip install .`) is in no checkout: the build wrote the commit it was
built from into the generated module `normbench._source_commit` (setup.py's `build_py`, with
`stamp_text` below), and that is read instead. A build outside a git checkout (an sdist or a
tarball) stamps None, and the commit is "unknown": never a guess, never an enclosing repository's
HEAD. This module imports the standard library only: setup.py loads it by path at build time.
"""

from __future__ import annotations

import importlib
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # the checkout's top, when this file is in one
STAMP = "_source_commit"  # the generated module: normbench/_source_commit.py in a wheel
NOT_A_CHECKOUT = "unknown (not a git checkout, and not installed from one)"
BUILT_ELSEWHERE = "unknown (built outside a git checkout)"


def source_commit() -> str:
    """The commit of the code running: 40 hex digits, "+dirty" when tracked files differed
    from it (live, or when the installed copy was built), else "unknown (why)"."""
    try:
        stamp = importlib.import_module(f"normbench.{STAMP}")
    except ModuleNotFoundError:
        return checkout_commit(ROOT) or NOT_A_CHECKOUT
    return getattr(stamp, "COMMIT", None) or BUILT_ELSEWHERE


def short_commit(commit: str | None) -> str:
    """A recorded commit as reports show it: 12 hex digits, "+dirty" kept; "unknown" for none
    (run directories before this module stored None outside a checkout)."""
    if not commit or commit.startswith("unknown"):
        return commit or "unknown"
    head, plus, dirty = commit.partition("+")
    return head[:12] + plus + dirty


def checkout_commit(root: Path) -> str | None:
    """HEAD of the git checkout whose top level is `root`, "+dirty" when tracked files differ
    from it; None when `root` is not a checkout's top (a folder inside another repository, such
    as a virtual environment kept in one, is not) or git is missing."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(root), *args], capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()

    try:
        if Path(git("rev-parse", "--show-toplevel")).resolve() != root.resolve():
            return None
        head, dirty = git("rev-parse", "HEAD"), git("status", "--porcelain", "-uno")
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "")


def stamp_text(root: Path) -> str:
    """The source of the generated module for a build from `root` (setup.py writes it)."""
    return (
        '"""Generated at build time by setup.py (normbench.provenance): the commit built."""\n\n'
        f"COMMIT = {checkout_commit(root)!r}\n"
    )
