"""`normbench run SUITE`: run a suite on Ray (local or a cluster) into a run directory."""

from __future__ import annotations

from pathlib import Path

import typer


def run(
    suite: Path = typer.Argument(..., help="Suite YAML file."),
    output: Path | None = typer.Option(
        None, "--output", "-o", help="Run directory (default: runs/<suite name>)."
    ),
    address: str | None = typer.Option(
        None,
        "--address",
        help="Ray cluster: 'auto', HOST:6379 (GCS) or ray://HOST:10001 (default: local Ray).",
    ),
    resume: bool = typer.Option(
        False, "--resume", help="Require an existing run directory and continue it."
    ),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Print trials, resources and cost estimate; run nothing."
    ),
    overrides: list[str] | None = typer.Option(
        None, "--set", help="Override a suite key: --set train.epochs=2 (repeatable)."
    ),
    max_epochs: int | None = typer.Option(None, "--max-epochs", help="Cap every trial's epochs."),
    limit_batches: int | None = typer.Option(
        None, "--limit-batches", help="Smoke mode: at most N training batches per epoch."
    ),
    plugins: list[Path] | None = typer.Option(
        None, "--plugin", help="Python file registering variants/backbones (repeatable)."
    ),
    allow_autoscaling: bool = typer.Option(
        False,
        "--allow-autoscaling",
        help="Accept per-trial resources that no node has yet (a cluster that adds nodes on "
        "demand); without it such a suite is refused instead of waiting forever.",
    ),
    restart_changed: bool = typer.Option(
        False,
        "--restart-changed",
        help="Restart from scratch the unfinished trials that ran in another execution "
        "environment (threads, device) instead of refusing to resume them; their earlier "
        "records and checkpoints move to RUN_DIR/superseded/.",
    ),
    storage: str | None = typer.Option(
        None,
        "--storage",
        help="Checkpoint storage every node reaches (folder or pyarrow URI, e.g. s3://b/p); "
        "default: the run directory.",
    ),
) -> int:
    """Run every trial of SUITE that the run directory does not hold yet.

    Before Ray starts and before anything is written, a preflight checks the output
    directory, the cluster address, that each trial's resources fit on a node, and the data
    (downloaded or extracted once, here); --dry-run prints what it found.

    An existing run directory is resumed: finished trials are skipped, interrupted ones continue
    from their last checkpoint (in the same execution environment only; see
    --restart-changed). SIGTERM stops the run with one line and exit status 143.
    """
    from normbench.suite.runner import RunRequest, execute

    req = RunRequest(
        suite=suite,
        output=output,
        address=address,
        resume=resume,
        dry_run=dry_run,
        overrides=tuple(overrides or ()),
        max_epochs=max_epochs,
        limit_batches=limit_batches,
        plugins=tuple(str(p) for p in plugins or ()),
        storage=storage,
        allow_autoscaling=allow_autoscaling,
        restart_changed=restart_changed,
    )
    return execute(req)


def register(app: typer.Typer) -> None:
    app.command("run")(run)
