"""Trial specs read back from a run directory (`normbench evaluate`, `normbench train --suite
RUN_DIR`): data, never code to run or a place to write.

A stored spec names its plugin files by path, and a run directory on a shared folder can be
written by others. So a stored plugin path is never imported: each plugin file the trial was
trained with must be named again on the command line (`--plugin PATH`), matched by file name
(the part of a plugin path that is in the trial id, `normbench.spec.identity`), and the spec
takes the user's path. A stored `download: true` is dropped: reading a run never downloads
into the data root it names (`--set dataset_root=...` moves it). A trial computed at other
revisions of its components than this code's (docs/reproducibility.md#computation-revisions)
is refused: its weights would run through code that computes something else.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from normbench.errors import PluginError, RunDirError, UserError
from normbench.spec import TrialSpec


def spec_from_run(
    stored: Any, plugins: Sequence[str | Path], *, trial_id: str, where: Path, or_else: str = ""
) -> TrialSpec:
    """The TrialSpec of a stored spec dict, with its plugins replaced by the user's files.

    Raises RunDirError for a stored spec that is not a valid spec, PluginError for a plugin
    file the trial needs that the user did not name, UserError for a trial computed by other
    code (`or_else`: the command's other way out, added to that line).
    """
    try:
        spec = TrialSpec.from_dict(stored)
    except (TypeError, ValueError, AttributeError, UserError) as exc:
        why = " ".join(str(exc).split())[:200]
        raise RunDirError(
            f"{where}: the stored spec of trial {trial_id} is not a valid trial spec ({why})"
        ) from None
    given = {Path(p).name: str(Path(p).expanduser().resolve()) for p in plugins}
    missing = [p for p in spec.plugins if Path(p).name not in given]
    if missing:
        names = ", ".join(Path(p).name for p in missing)
        raise PluginError(
            f"trial {trial_id} of {where} was trained with the plugin file(s) {names} "
            f"(stored as {', '.join(missing)}); code named by a run directory is never run: "
            f"name each file with --plugin PATH to load it"
        )
    options = {k: v for k, v in spec.dataset_options.items() if k != "download"}
    spec = spec.replace(
        plugins=tuple(given[Path(p).name] for p in spec.plugins), dataset_options=options
    )
    _refuse_other_code(spec, trial_id, where, or_else)
    return spec


def _refuse_other_code(spec: TrialSpec, trial_id: str, where: Path, or_else: str) -> None:
    """A trial computed at other revisions of its components than this code's cannot be
    rebuilt here: its weights would run through code that computes something else."""
    from normbench.engine.build import load_plugins
    from normbench.engine.revisions import code_change

    load_plugins(spec)
    change = code_change(spec)
    if change is not None:
        raise UserError(
            f"trial {trial_id} of {where} was computed by other code ({change}); this code "
            "cannot rebuild it: rerun its suite to train it at the new revision"
            + (f", {or_else}" if or_else else "")
        )
