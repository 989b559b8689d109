"""The `normbench` command. Each topic adds its own sub-commands (`register(app)`), so this
file only wires them together and turns user errors into one line and exit status 2."""

from __future__ import annotations

import importlib
import signal
import sys
import threading
import warnings
from pathlib import Path
from typing import Annotated, Any

import typer

from normbench import __version__
from normbench.errors import RunDirWarning, SuiteError, Terminated, UserError, stopped_by

try:  # typer >= 0.20 ships its own copy of click; older releases use the click package
    from typer._click import exceptions as click_exceptions
except ImportError:  # pragma: no cover - depends on the installed typer
    # mypy cannot type a try/except import of two distinct modules under one name
    from click import exceptions as click_exceptions  # type: ignore[no-redef]

# Modules that each define `register(app: typer.Typer) -> None`.
_COMMAND_MODULES = (
    "normbench.cli_variants",  # normbench variants
    "normbench.cli_train",  # normbench train, normbench evaluate
    "normbench.cli_tasks",  # normbench tasks
    "normbench.suite.cli",  # normbench run
    "normbench.reports.cli",  # normbench report
    "normbench.bench.cli",  # normbench bench ...
)


def build_app() -> typer.Typer:
    app = typer.Typer(
        name="normbench",
        help="Compare normalization layers in vision models (classification and other tasks).",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
        rich_markup_mode=None,  # click's plain help: flags show no type, values a metavar
    )

    @app.callback()
    def _root(
        version: Annotated[
            bool,
            typer.Option(
                "--version",
                help="Print the version and exit.",
                callback=_print_version,
                is_eager=True,
            ),
        ] = False,
    ) -> None:
        """Compare normalization layers in vision models (classification and other tasks)."""

    for mod in _COMMAND_MODULES:
        try:
            module = importlib.import_module(mod)
        except ModuleNotFoundError as exc:
            if exc.name != mod:  # a real import error inside the module
                raise
            continue
        module.register(app)
    return app


def _print_version(value: bool) -> None:
    if value:
        print(f"normbench {__version__}")
        raise typer.Exit()


# What a value option shows after its name in --help, by the annotated type (flags show none).
_METAVARS: dict[Any, str] = {int: "N", float: "X", Path: "PATH", str: "TEXT"}


def _set_metavars(command: Any) -> None:
    """Name each value option's argument (`--max-epochs N`) instead of typer's type tag
    (`<int>`), in every sub-command; arguments show their own name (`SUITE`)."""
    for param in command.params:
        if param.metavar is not None or getattr(param, "is_flag", False):
            continue
        annotation = param.type_descriptor.annotation
        inner = getattr(annotation, "__args__", (annotation,))[0]  # list[str] -> str
        if param.param_type_name == "argument":
            param.metavar = param.name.upper()
        else:
            param.metavar = _METAVARS.get(inner, "VALUE")
    for sub in getattr(command, "commands", {}).values():
        _set_metavars(sub)


def fail(message: str, *more: str) -> None:
    """Print one clear line per problem and exit with status 2 (a user's mistake)."""
    for line in (message, *more):
        print(f"normbench: error: {line}", file=sys.stderr)
    raise SystemExit(2)


def _show_run_dir_warnings() -> None:
    """Print each `RunDirWarning` once, as one `normbench: warning: ...` line on stderr."""
    shown: set[str] = set()
    default = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):  # type: ignore[no-untyped-def]
        if not issubclass(category, RunDirWarning):
            return default(message, category, filename, lineno, file, line)
        if str(message) not in shown:
            shown.add(str(message))
            print(f"normbench: warning: {message}", file=sys.stderr)

    warnings.showwarning = show
    warnings.simplefilter("always", RunDirWarning)


def _raise_terminated(signum: int, frame: Any) -> None:
    """SIGTERM handler of every command: stop where the main thread is, as Ctrl-C does, so
    the command ends with one line (`main`); a command may install its own (`normbench run`
    does). Later SIGTERMs are ignored, so the clean-up runs to its end."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise Terminated()


def _invoke(command: Any, argv: list[str] | None) -> Any:
    """Parse and run one command. Not `command.main`: typer's turns Ctrl-C into a silent
    exit 130, and a stopped command must say so in one line."""
    args = sys.argv[1:] if argv is None else list(argv)
    with command.make_context("normbench", args) as ctx:
        return command.invoke(ctx)


def main(argv: list[str] | None = None) -> None:
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if main_thread else None
    try:
        _main(argv)
    finally:  # a caller in this process (tests) keeps its own handler
        if main_thread:
            signal.signal(signal.SIGTERM, previous)


def _main(argv: list[str] | None) -> None:
    _show_run_dir_warnings()
    command = typer.main.get_command(build_app())
    _set_metavars(command)
    try:
        rv = _invoke(command, argv)
    except SuiteError as exc:  # every problem of a suite at once, one line each
        fail(*(exc.problems or [str(exc)]))
    except UserError as exc:
        fail(str(exc))
    except KeyboardInterrupt as exc:  # SIGINT, or SIGTERM (Terminated)
        what, code = stopped_by(exc)
        print(f"normbench: {what}", file=sys.stderr)
        raise SystemExit(code) from None
    except typer.Abort:
        print("normbench: aborted", file=sys.stderr)
        raise SystemExit(130) from None
    except click_exceptions.NoArgsIsHelpError as exc:
        print(exc.ctx.get_help())  # `normbench` alone: the help on stdout, not an error line
        raise SystemExit(0) from None
    except click_exceptions.ClickException as exc:
        fail(exc.format_message())
    except typer.Exit as exc:
        raise SystemExit(exc.exit_code) from None
    raise SystemExit(rv if isinstance(rv, int) else 0)


if __name__ == "__main__":
    main()
