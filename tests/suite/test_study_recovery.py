"""A search's Optuna study after its driver was killed mid-write: the run-directory check
(normbench.suite.rundir) lets the hot journal through, and the study opens with every
committed sample (SQLite rolls the journal back on the run's read-write open)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import optuna

from normbench.suite.rundir import _check_study_file


def _kill_mid_write(db: Path) -> None:
    """A process that changes every trial's value inside a transaction, spills the change to
    the database file (a one-page cache) and dies before committing: a hot journal."""
    code = textwrap.dedent(f"""
        import os, sqlite3
        c = sqlite3.connect({str(db)!r}, isolation_level=None)
        c.execute("PRAGMA cache_size=1")
        c.execute("BEGIN IMMEDIATE")
        c.execute("UPDATE trial_values SET value = value + 1000")
        c.execute("CREATE TABLE filler(x)")
        c.executemany("INSERT INTO filler VALUES (?)", [(i,) for i in range(20000)])
        os._exit(0)
    """)
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_study_killed_mid_write_is_recovered_not_refused(tmp_path: Path) -> None:
    db = tmp_path / "optuna.db"
    storage = f"sqlite:///{db}"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="s", storage=storage)
    for x in (0.5, 1.5, 2.5):
        study.enqueue_trial({"x": x})
    study.optimize(lambda t: t.suggest_float("x", 0, 3) ** 2, n_trials=3)
    del study
    _kill_mid_write(db)
    assert (tmp_path / "optuna.db-journal").stat().st_size > 0  # the killed writer's journal
    _check_study_file(db)  # no RunDirError: a study to recover, not a broken one
    values = sorted(t.value for t in optuna.load_study(study_name="s", storage=storage).trials)
    assert values == [0.25, 2.25, 6.25]  # the uncommitted +1000 rolled back
