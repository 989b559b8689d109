"""Typed exceptions and the helpers of their messages (`closest`: the one did-you-mean,
`one_line`, `describe_failure`). A `UserError` is a user's mistake (bad suite, unknown name,
missing data, broken plugin): the CLI prints its message as one line and exits with status 2."""

from __future__ import annotations

import difflib


class UserError(Exception):
    """A problem in the user's input. Its message names the problem and where it is."""


class UnknownNameError(UserError, KeyError):
    """An unknown variant, backbone, data set or option name."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class DuplicateNameError(UserError, ValueError):
    """A name registered twice."""


class PluginError(UserError):
    """A plugin that fails to import, to register, or breaks the variant contract."""


class DatasetNotFoundError(UserError, FileNotFoundError):
    """Data-set files are missing and cannot be downloaded."""


class SuiteError(UserError):
    """A suite file that fails validation. Holds every problem found, each with its location."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))


class RunDirError(UserError):
    """A run directory that is locked, or holds results of an incompatible suite."""


class RunDirWarning(UserWarning):
    """Something in a run directory was damaged and skipped (a corrupt line, a bad file).

    The CLI prints each as one `normbench: warning: ...` line; nothing is lost silently."""


def closest(name: object, choices: list[str]) -> str:
    """' (did you mean 'x'?)' when a choice is close to `name`, else ''. The one did-you-mean
    helper: a unique choice that extends `name` or that `name` extends (warmup ->
    warmup_epochs) first, else the closest spelling (difflib ratio >= 0.5)."""
    low = str(name).lower()
    longer = [
        c for c in choices if low and (c.lower().startswith(low) or low.startswith(c.lower()))
    ]
    if len(longer) == 1:
        return f" (did you mean {longer[0]!r}?)"
    match = difflib.get_close_matches(low, choices, n=1, cutoff=0.5)
    return f" (did you mean {match[0]!r}?)" if match else ""


def one_line(text: str) -> str:
    """Collapse whitespace so a message prints as a single line at the CLI."""
    return " ".join(str(text).split())


def describe_failure(exc: BaseException) -> str:
    """What plugin code did, for a one-line report. Plugin code runs inside `except
    BaseException`: a plugin that calls sys.exit() or raises KeyboardInterrupt while it is
    imported or checked must be reported by name, not end normbench without a word."""
    if isinstance(exc, SystemExit):
        return f"it called sys.exit({exc.code!r})"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class Terminated(KeyboardInterrupt):
    """The driver got SIGTERM; the run stops, keeping every finished result (a rerun resumes).

    A KeyboardInterrupt, because the handler may run inside one of Ray's blocking calls
    (`ray.wait` checks signals from C++): Ray turns a KeyboardInterrupt into a plain one (the
    driver's handler remembers the signal, so it still knows it was SIGTERM), while any other
    exception raised there comes out as a SystemError with a traceback. Tune's loop catches
    only `Exception`, so either ends `tuner.fit()` at once."""


def stopped_by(exc: KeyboardInterrupt) -> tuple[str, int]:
    """How a command stopped by a signal says so: ('stopped by SIGTERM', 143) for
    `Terminated`, else ('stopped by SIGINT', 130) (128 + the signal number, as a shell
    reports it)."""
    if isinstance(exc, Terminated):
        return "stopped by SIGTERM", 143
    return "stopped by SIGINT", 130


class RunStopped(RuntimeError):
    """Ray Tune gave up on the whole run, e.g. after Ray's memory monitor killed a trial's
    worker (Tune 2.x raises for a `ray.exceptions.OutOfMemoryError` instead of failing that
    trial). Finished results are stored; trials that were running resume on a rerun."""


class StorageFullError(OSError):
    """A write failed because its file system is full (ENOSPC), a quota is reached (EDQUOT)
    or a file-size limit is hit (EFBIG). Its message (`strerror`, also its str) names the file
    and the file system: `normbench.results.paths.storage_full` builds it from the OSError of
    the failed write."""

    def __str__(self) -> str:
        return str(self.strerror)


class DriverGone(RuntimeError):
    """A trial worker found that the driver that started it no longer holds its run
    directory (killed, or replaced by a rerun): it stops before writing anything."""
