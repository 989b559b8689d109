"""What `normbench run` shows while trials run: a rich Live table on a terminal, plain log
lines otherwise (CI logs, pipes). Fed by the driver from Ray Tune's callback events.

The suite ETA is the epochs left divided by the epochs finished per second in this session
(so it accounts for trials running in parallel); trials not started yet count the mean epochs
of the trials seen so far."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Any, TextIO

from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from normbench.contract import EpochRecord, scoring_of

MAX_FINISHED_ROWS = 10


@dataclass
class Row:
    label: str
    epochs: int
    seed: int | None = None
    status: str = "pending"
    epoch: int = 0
    # the task's headline metric on val and test (classification: top1)
    headline: str = "top1"
    val_score: float | None = None
    test_score: float | None = None
    images_per_s: float | None = None
    epoch_time_s: float | None = None

    def eta_s(self) -> float | None:
        if self.status != "running" or self.epoch_time_s is None:
            return None
        return self.epoch_time_s * max(self.epochs - self.epoch, 0)


class LiveView:
    """One row per trial (status, epoch, accuracy, images/s, ETA) and overall progress."""

    def __init__(
        self,
        total: int,
        done: int | None = 0,
        *,
        stream: TextIO | None = None,
        console: Any = None,
    ) -> None:
        """`done`: trials finished by earlier runs; None while not yet known (a search counts
        its finished samples when its study is opened, `add_done`)."""
        self.stream = stream or sys.stdout
        self.console = console or Console(file=self.stream)
        self.rows: dict[str, Row] = {}
        self.total, self.done, self.done_known = total, done or 0, done is not None
        self.progress = Progress(
            TextColumn("trials"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TextColumn("{task.fields[eta]}"), console=self.console,
        )  # fmt: skip
        self.task = self.progress.add_task("trials", total=total, completed=self.done, eta="")
        self.live: Live | None = None
        self.started = time.monotonic()
        self.epochs_done = 0  # epoch records received in this session

    @property
    def interactive(self) -> bool:
        return self.console.is_terminal

    def __enter__(self) -> LiveView:
        if self.interactive:
            self.live = Live(self._render(), console=self.console, refresh_per_second=2)
            self.live.__enter__()
        else:
            known = f", {self.done} already finished" if self.done_known else ""
            self._log(f"{self.total} trial{'s' if self.total != 1 else ''}{known}")
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.live is not None:
            self.live.update(self._render())
            self.live.__exit__(*exc)
            self.live = None

    # -- events from the driver ---------------------------------------------------------
    def start(self, trial_id: str, label: str, epochs: int, seed: int | None = None) -> None:
        row = self.rows.setdefault(trial_id, Row(label, epochs, seed))
        row.status = "running"
        self._changed(f"start {_name(row)} [{trial_id}]")

    def record(self, trial_id: str, record: EpochRecord) -> None:
        row = self.rows.get(trial_id)
        if row is None:
            return
        row.epoch = int(record["epoch"])
        row.headline = h = scoring_of(record).headline
        values: dict[str, Any] = dict(record)
        row.val_score, row.test_score = values.get(f"val_{h}"), values.get(f"test_{h}")
        row.images_per_s, row.epoch_time_s = record.get("images_per_s"), record.get("epoch_time_s")
        self.epochs_done += 1
        eta = self.suite_eta_s()
        self.progress.update(self.task, eta=_eta_text(eta))
        self._changed(
            f"{_name(row)} [{trial_id}] epoch {row.epoch}/{row.epochs} "
            f"val_{row.headline}={_num(row.val_score)} test_{row.headline}={_num(row.test_score)} "
            f"images/s={_num(row.images_per_s, 0)} {_eta_text(eta)}".rstrip()
        )

    def end(self, trial_id: str, status: str, reason: str | None = None) -> None:
        row = self.rows.get(trial_id)
        if row is not None:
            row.status = status
        self.done += 1
        self.progress.update(self.task, completed=self.done)
        label = _name(row) if row else trial_id
        self._changed(f"{status} {label} [{trial_id}]" + (f": {reason}" if reason else ""))

    def add_done(self, n: int) -> None:
        """Count trials finished by an earlier run (a resumed search)."""
        self.done += n
        self.progress.update(self.task, completed=self.done)

    def suite_eta_s(self, now: float | None = None) -> float | None:
        """Seconds until every trial has finished, at this session's epochs per second."""
        elapsed = (time.monotonic() if now is None else now) - self.started
        if self.epochs_done == 0 or elapsed <= 0 or not self.rows:
            return None
        rows = list(self.rows.values())
        left: float = sum(max(r.epochs - r.epoch, 0) for r in rows if r.status == "running")
        not_started = max(self.total - self.done - sum(r.status == "running" for r in rows), 0)
        left += not_started * sum(r.epochs for r in rows) / len(rows)
        return left * elapsed / self.epochs_done

    def note(self, text: str) -> None:
        self._changed(text)

    # -- output ---------------------------------------------------------------------------
    def _changed(self, line: str) -> None:
        if self.live is not None:
            self.live.update(self._render())
        else:
            self._log(line)

    def _log(self, line: str) -> None:
        stamp = time.strftime("%H:%M:%S")
        print(f"[{stamp}] {line}", file=self.stream, flush=True)

    def _render(self) -> Group:
        table = Table(expand=False)
        rows = self._visible()
        h = rows[0].headline if rows else "top1"
        for col in ("trial", "seed", "status", "epoch", f"val {h}", f"test {h}", "images/s", "ETA"):
            table.add_column(col, justify="left" if col in ("trial", "status") else "right")
        for row in rows:
            eta = row.eta_s()
            table.add_row(
                row.label, "" if row.seed is None else str(row.seed), row.status,
                f"{row.epoch}/{row.epochs}", _num(row.val_score), _num(row.test_score),
                _num(row.images_per_s, 0),
                "" if eta is None else _duration(eta),
            )  # fmt: skip
        return Group(table, self.progress)

    def _visible(self) -> list[Row]:
        """Running trials, then the most recently finished ones (a big suite stays readable)."""
        rows = list(self.rows.values())
        running = [r for r in rows if r.status == "running"]
        finished = [r for r in rows if r.status not in ("running", "pending")]
        return running + finished[-max(MAX_FINISHED_ROWS, 0) :]


def _name(row: Row) -> str:
    return row.label if row.seed is None else f"{row.label} seed={row.seed}"


def _eta_text(eta: float | None) -> str:
    return "" if eta is None else f"suite ETA {_duration(eta)}"


def _num(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _duration(s: float) -> str:
    m, sec = divmod(int(round(s)), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"
