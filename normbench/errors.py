"""Typed exceptions. A `UserError` is a user's mistake (bad suite, unknown name, missing data,
broken plugin): the CLI prints its message as one line and exits with status 2."""

from __future__ import annotations


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
