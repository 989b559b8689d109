"""`.ci/run` runs what the README tells a user to run: each command of the README's two
numbered commands (the quickstart with smoke flags added), and the README's test command
exactly, which the Development section repeats."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENV = "python3 -m venv .venv && . .venv/bin/activate && "


def _readme_commands() -> list[list[str]]:
    """The README's numbered commands, each split at `&&`, after the venv set-up."""
    readme = (ROOT / "README.md").read_text()
    lines = [ln for ln in readme.splitlines() if ln.startswith(VENV)]
    assert len(lines) == 2, lines
    return [[c.strip() for c in ln.removeprefix(VENV).split("&&")] for ln in lines]


def test_ci_runs_the_readme_commands() -> None:
    ci = [ln.strip() for ln in (ROOT / ".ci" / "run").read_text().splitlines()]
    (install, quickstart), (dev_install, tests) = _readme_commands()
    assert install == "pip install ." and dev_install == "pip install -e '.[dev]'"
    for command in (install, dev_install, tests):
        assert command in ci, f".ci/run does not run the README's `{command}`"
    assert any(ln.startswith(quickstart + " ") for ln in ci), quickstart
    # CI's order: the plain install and the main job, then the dev install and the tests.
    assert ci.index(install) < ci.index(dev_install) < ci.index(tests)
    assert [ln for ln in ci if re.match(r"(python -m )?pytest\b", ln)] == [tests]


def test_the_development_section_gives_the_same_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    (_, (dev_install, tests)) = _readme_commands()
    development = readme.split("## Development", 1)[1]
    assert f"{dev_install} && {tests} " in development
