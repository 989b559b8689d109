"""A run directory is data, never code or a path to follow: a corpus of planted run
directories, each put through every command that reads it (`run`, `run --dry-run`, `report`,
`evaluate`, `train --suite RUN_DIR`), through the CLI. None may run planted code (a marker
file its payload would create never appears) or touch anything outside the run directory
(every file beside it, link targets included, is byte-, size- and mtime-identical before and
after). Each refusal is one line and exit status 2.

The run directory is what the driver leaves (store lines, checkpoints of `run_trial`), made
once without Ray; one planted directory (a tampered checkpoint, a newer-format checkpoint, a
finished trial that lost an epoch line and whose checkpoint is unreadable) runs through
`normbench run` and Ray. `test_corpus_counts` prints the tally (pytest -s).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pickle
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from normbench.cli import main
from normbench.engine import checkpoint as ckpt
from normbench.engine.loop import run_trial
from normbench.results.store import RunStore
from normbench.suite.loader import load_suite

SUITE = """
version: 1
name: planted
plugins: [user_norm.py]
dataset: {name: synthetic, image_size: 8, n_train: 64, n_test: 16, num_classes: 4}
backbones: [{name: resnet20, options: {width: 4}}]
variants: [bn, user_ln, {name: gn, options: {num_groups: 2}}]
batch_sizes: [32]
seeds: [0]
train: {epochs: 2, lr: 0.05, schedule: constant, probe: false, device: cpu, num_threads: 1}
resources: {cpus: 1, gpus: 0}
max_concurrent: 1
"""
USER_PLUGIN = '''
import torch
from torch import nn

from normbench import register_variant


@register_variant("user_ln")
class UserLN(nn.GroupNorm):
    """The user's own layer: GroupNorm with one group (layer norm over C, H, W)."""

    paper = "test plugin (none)"
    batch_dependent = False

    def __init__(self, num_features, *, eps=1e-5, momentum=0.1, device=None, dtype=None):
        super().__init__(1, num_features, eps=eps, device=device, dtype=dtype)
'''
EVIL_PLUGIN = """
from pathlib import Path
Path({marker!r}).write_text("planted code ran")
"""
MARKER = "PWNED"  # the file any planted payload would create, beside the run directory


class _Payload:
    """A pickle that writes the marker when unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "planted pickle ran"))


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def _write_lines(path: Path, lines: list[dict]) -> None:
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished run of SUITE as the driver leaves it (3 trials, 2 epochs each)."""
    root = tmp_path_factory.mktemp("finished")
    (root / "user_norm.py").write_text(USER_PLUGIN)
    (root / "suite.yaml").write_text(SUITE)
    suite = load_suite(root / "suite.yaml")
    run = root / "run"
    threads = torch.get_num_threads()  # the trials set 1, as a Ray worker would
    with RunStore(run) as store:
        store.write_suite(suite)
        for t in suite.trials():
            tid, extra = t.trial_id, {"spec": t.spec.to_dict(), "cell": t.cell}
            for rec in run_trial(t.spec, checkpoint_dir=run / "checkpoints" / tid):
                store.append_epoch(tid, dict(rec), extra=extra)
                source = rec["variant_source"]
            store.finish_trial(tid, t.spec.to_dict(), t.cell, "completed", variant_source=source)
    torch.set_num_threads(threads)
    return root


@dataclass
class Case:
    """One planted run directory and what each command must do with it: exit status and a
    piece of its one stderr line (None: the command is not run on this case)."""

    name: str
    plant: Callable[[Path, Path], None]  # (run dir, the test's folder)
    expect: dict[str, tuple[int, str]] = field(default_factory=dict)


def _ids(run: Path) -> dict[str, str]:
    return {x["spec"]["variant"]: x["trial_id"] for x in _lines(run / "trials.jsonl")}


def _plant_plugin_spec(run: Path, here: Path) -> None:
    """A writer of the run directory adds evil.py, names it in a copied trial's stored spec
    under a new trial id and copies the checkpoint under that id: all plain data."""
    (run / "evil.py").write_text(EVIL_PLUGIN.format(marker=str(here / MARKER)))
    tid = _ids(run)["bn"]
    new = "e" * 12
    for name in ("trials.jsonl", "epochs.jsonl"):
        lines = _lines(run / name)
        for line in [x for x in lines if x["trial_id"] == tid]:
            copy = json.loads(json.dumps(line))
            copy["trial_id"] = new
            if "spec" in copy:
                copy["spec"]["plugins"] = [str(run / "evil.py")]
            lines.append(copy)
        _write_lines(run / name, lines)
    payload = torch.load(run / "checkpoints" / tid / "checkpoint.pt", weights_only=True)
    (run / "checkpoints" / new).mkdir()
    torch.save({**payload, "trial_id": new}, run / "checkpoints" / new / "checkpoint.pt")


def _plant_dotdot_epoch(run: Path, here: Path) -> None:
    """An epoch line of an unfinished 'trial' `../../victim`, in another environment: with
    --restart-changed it once made RunStore.supersede move the folder beside the run into
    RUN_DIR/superseded/."""
    first = _lines(run / "epochs.jsonl")[0]
    env = {**first["environment"], "num_threads": 97}
    bad = {**first, "trial_id": "../../victim", "environment": env}  # RUN/checkpoints/../../
    with open(run / "epochs.jsonl", "a") as f:
        f.write(json.dumps(bad) + "\n")


def _plant_dotdot_summary(run: Path, here: Path) -> None:
    line = {**_lines(run / "trials.jsonl")[0], "trial_id": "../../victim"}
    with open(run / "trials.jsonl", "a") as f:
        f.write(json.dumps(line) + "\n")


def _link(rel: str, target: str) -> Callable[[Path, Path], None]:
    def plant(run: Path, here: Path) -> None:
        path = run / rel
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.symlink_to(here / target)

    return plant


def _link_checkpoint_dir(run: Path, here: Path) -> None:
    tid = _ids(run)["gn"]
    shutil.rmtree(run / "checkpoints" / tid)
    (run / "checkpoints" / tid).symlink_to(here / "victim")


def _plant_pickle(run: Path, here: Path) -> None:
    tid = _ids(run)["bn"]
    with open(run / "checkpoints" / tid / "checkpoint.pt", "wb") as f:
        pickle.dump({"format_version": ckpt.FORMAT_VERSION, "trial_id": tid,
                     "x": _Payload(here / MARKER)}, f)  # fmt: skip


def _plant_torch_pickle(run: Path, here: Path) -> None:
    tid = _ids(run)["bn"]
    payload = {"format_version": ckpt.FORMAT_VERSION, "trial_id": tid, "x": _Payload(here / MARKER)}
    torch.save(payload, run / "checkpoints" / tid / "checkpoint.pt")


def _plant_newer(run: Path, here: Path) -> None:
    tid = _ids(run)["bn"]
    path = run / "checkpoints" / tid / "checkpoint.pt"
    payload = torch.load(path, weights_only=True)
    torch.save({**payload, "format_version": ckpt.FORMAT_VERSION + 1}, path)


def _plant_bad_spec(run: Path, here: Path) -> None:
    lines = _lines(run / "trials.jsonl")
    lines[0]["spec"]["run_this"] = "__import__('os').system('true')"
    _write_lines(run / "trials.jsonl", lines)


REFUSED = (2, "symbolic link")
CASES = [
    Case(
        "plugin path in a stored spec",
        _plant_plugin_spec,
        {
            "evaluate": (2, "code named by a run directory is never run"),
            "train": (2, "code named by a run directory is never run"),
            "report": (0, ""),
            "run": (2, "holds results of a different suite"),
            "dry-run": (2, "holds results of a different suite"),
        },
    ),
    Case(
        "../ trial id in an epoch line",
        _plant_dotdot_epoch,
        {
            "run --restart-changed": (0, "not a record: no valid trial_id"),
            "report": (0, "not a record: no valid trial_id"),
        },
    ),
    Case(
        "../../ trial id in a summary line",
        _plant_dotdot_summary,
        {
            "evaluate ../../victim": (2, "not a record: no valid trial_id"),
            "report": (0, "not a record: no valid trial_id"),
        },
    ),
    Case(
        "report -> a folder outside",
        _link("report", "victim"),
        {
            "report": REFUSED,
            "run": REFUSED,
            "dry-run": REFUSED,
        },
    ),
    Case(
        "report/leaderboard.md -> a file outside",
        _link("report/leaderboard.md", "victim.txt"),
        {"report": REFUSED, "run": REFUSED},
    ),
    Case("report/plots -> a folder outside", _link("report/plots", "victim"), {"report": REFUSED}),
    Case(
        "epochs.jsonl -> a file outside",
        _link("epochs.jsonl", "victim.txt"),
        {
            "run": REFUSED,
            "dry-run": REFUSED,
            "evaluate": REFUSED,
            "report": (0, "is a symbolic link"),
        },
    ),
    Case(
        "trials.jsonl -> a file outside",
        _link("trials.jsonl", "victim.txt"),
        {
            "run": REFUSED,
            "evaluate": (2, ""),
            "report": (0, "is a symbolic link"),
        },
    ),
    Case(
        ".lock -> a file outside",
        _link(".lock", "victim.txt"),
        {
            "run": REFUSED,
            "dry-run": REFUSED,
            "evaluate": REFUSED,
            "report": (0, ""),
        },
    ),
    Case(
        "checkpoints -> a folder outside",
        _link("checkpoints", "victim"),
        {
            "run": REFUSED,
            "dry-run": REFUSED,
            "evaluate": REFUSED,
        },
    ),
    Case(
        "checkpoints/<trial> -> a folder outside",
        _link_checkpoint_dir,
        {
            "run": REFUSED,
            "evaluate": REFUSED,
        },
    ),
    Case(
        "superseded -> a folder outside",
        _link("superseded", "victim"),
        {
            "run --restart-changed": REFUSED,
            "dry-run": REFUSED,
        },
    ),
    Case("ray -> a folder outside", _link("ray", "victim"), {"run": REFUSED}),
    Case(
        ".suite.yaml.tmp -> a file outside",
        _link(".suite.yaml.tmp", "victim.txt"),
        {
            "run": REFUSED,
            "dry-run": REFUSED,
        },
    ),
    Case(
        "optuna.db -> a database outside",
        _link("optuna.db", "victim.db"),
        {
            "report": (0, ""),
            "run": REFUSED,
        },
    ),
    Case(
        "evaluations.jsonl -> a file outside",
        _link("evaluations.jsonl", "victim.txt"),
        {
            "evaluate": REFUSED,
            "report": (0, ""),
        },
    ),
    Case(
        "pickle payload as a checkpoint",
        _plant_pickle,
        {
            "evaluate": (2, "is not a valid normbench checkpoint"),
        },
    ),
    Case(
        "torch file with a code-running object",
        _plant_torch_pickle,
        {
            "evaluate": (2, "holds the Python object"),
        },
    ),
    Case(
        "newer checkpoint format",
        _plant_newer,
        {
            "evaluate": (2, f"format {ckpt.FORMAT_VERSION + 1}, newer than the format"),
        },
    ),
    Case(
        "a stored spec with an unknown key",
        _plant_bad_spec,
        {
            "evaluate": (2, "is not a valid trial spec"),
        },
    ),
]


def _snapshot(here: Path, run: Path) -> dict[str, tuple]:
    """Everything in `here` outside the run directory: kind, size, mtime, content hash."""
    out: dict[str, tuple] = {}
    for dirpath, dirs, files in os.walk(here, followlinks=False):
        # The run's own folder is the command's to write; __pycache__ is Python's, for the
        # user's plugin file the suite names (imported by design).
        dirs[:] = [d for d in dirs if Path(dirpath) / d != run and d != "__pycache__"]
        for name in (*dirs, *files):
            p = Path(dirpath) / name
            st = p.lstat()
            regular = p.is_file() and not p.is_symlink()
            digest = hashlib.sha256(p.read_bytes()).hexdigest() if regular else ""
            out[str(p.relative_to(here))] = (st.st_mode, st.st_size, st.st_mtime_ns, digest)
    return out


def _outside(here: Path) -> None:
    """What a planted link may point at: a folder, a text file, a SQLite file."""
    (here / "victim" / "sub").mkdir(parents=True)
    (here / "victim" / "precious.txt").write_text("keep me\n")
    (here / "victim.txt").write_text('{"trial_id": "aaaaaaaaaaaa", "epoch": 1}\n')
    import sqlite3

    with sqlite3.connect(here / "victim.db") as conn:
        conn.execute("CREATE TABLE t (x INTEGER)")


def _argv(command: str, here: Path, run: Path) -> list[str]:
    suite = str(here / "suite.yaml")
    return {
        "run": ["run", suite, "--output", str(run)],
        "run --restart-changed": ["run", suite, "--output", str(run), "--restart-changed"],
        "dry-run": ["run", suite, "--output", str(run), "--dry-run"],
        "report": ["report", str(run)],
        "evaluate": ["evaluate", str(run), "--plugin", str(here / "user_norm.py"),
                     "--set", "recalibrate_batches=1", "--set", "example_weights=[]"],
        "evaluate ../../victim": ["evaluate", str(run), "--set", "trials=['../../victim']"],
        "train": ["train", "--suite", str(run), "--trial", "e" * 12, "--json"],
    }[command]  # fmt: skip


@contextlib.contextmanager
def _without_plugin_files() -> Iterator[None]:
    """The registries as a fresh process has them (no plugin file loaded) for the block, and
    as they were afterwards: each command loads the plugin files it is told to, as a new
    process would, and other tests of this process keep what they registered."""
    from normbench import registry

    saved = {k: (dict(r._entries), dict(r._broken)) for k, r in registry.REGISTRIES.items()}
    files = dict(registry._PLUGIN_FILES)
    for r in registry.REGISTRIES.values():
        r._entries = {k: e for k, e in r._entries.items() if not e.source.startswith("file:")}
    registry._PLUGIN_FILES.clear()
    try:
        yield
    finally:
        for k, r in registry.REGISTRIES.items():
            r._entries, r._broken = saved[k]
        registry._PLUGIN_FILES.clear()
        registry._PLUGIN_FILES.update(files)


def _cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    """One command in this process, with the registries a fresh process has."""
    capsys.readouterr()
    with _without_plugin_files(), pytest.raises(SystemExit) as exit_:
        main(argv)
    err = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
    return int(exit_.value.code or 0), err


TALLY = {"directories": 0, "commands": 0, "handled": 0}


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_a_planted_run_directory_runs_no_code_and_touches_nothing_outside(
    case: Case, finished: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    here = tmp_path
    shutil.copy(finished / "suite.yaml", here / "suite.yaml")
    shutil.copy(finished / "user_norm.py", here / "user_norm.py")
    _outside(here)
    for command, (code, text) in case.expect.items():
        run = here / "run"
        if run.exists():
            shutil.rmtree(run)
        shutil.copytree(finished / "run", run, symlinks=True)
        case.plant(run, here)
        before = _snapshot(here, run)
        got, err = _cli(_argv(command, here, run), capsys)
        TALLY["commands"] += 1
        assert not (here / MARKER).exists(), f"{case.name}: {command} ran planted code"
        assert _snapshot(here, run) == before, f"{case.name}: {command} touched a file outside"
        assert got == code, (command, err)
        errors = [x for x in err if not x.startswith("normbench: warning: ")]
        if code == 2:  # one error line (warnings about skipped lines may come first)
            assert len(errors) == 1 and errors[0].startswith("normbench: error: "), (command, err)
        assert any(text in line for line in err) or not text, (command, err)
        assert not any("weights_only" in line for line in err), err  # never advises unsafe loads
        TALLY["handled"] += 1
    TALLY["directories"] += 1


def test_the_users_own_plugin_named_again_evaluates_and_trains(
    finished: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The stored plugin path is matched by file name to the one the user names: the same
    trial, the same records as the stored ones."""
    run = tmp_path / "run"
    shutil.copytree(finished / "run", run)
    plugin = tmp_path / "elsewhere" / "user_norm.py"  # moved since the run: same file name
    plugin.parent.mkdir()
    shutil.copy(finished / "user_norm.py", plugin)
    tid = _ids(run)["user_ln"]
    code, err = _cli(["evaluate", str(run), "--set", f"trials=[{tid}]", "--set",
                      "recalibrate_batches=1"], capsys)  # fmt: skip
    assert (code, err[-1:]) == (2, [err[-1]]) and "--plugin" in err[0] and "user_norm.py" in err[0]
    with _without_plugin_files(), pytest.raises(SystemExit) as exit_:  # the user's file
        main(["evaluate", str(run), "--plugin", str(plugin), "--set", f"trials=[{tid}]",
              "--set", "recalibrate_batches=1"])  # fmt: skip
    out = capsys.readouterr().out
    assert exit_.value.code == 0  # a layer without running statistics: nothing to recalibrate
    assert f"trial {tid}: recalibrated_stats does not apply" in out
    with _without_plugin_files(), pytest.raises(SystemExit) as exit_:
        main(["train", "--suite", str(run), "--trial", tid, "--plugin", str(plugin), "--json"])
    assert exit_.value.code == 0
    records = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    stored = [x for x in _lines(run / "epochs.jsonl") if x["trial_id"] == tid]
    assert [r["test_top1"] for r in records] == [r["test_top1"] for r in stored]
    assert [r["variant_source"] for r in records] == [f"file:{plugin.resolve()}"] * 2


def test_dry_run_makes_every_refusal_the_run_makes(
    finished: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each refusal of an existing run directory: the real run and its dry run end with the
    same line and status 2, and neither writes anything."""
    shutil.copy(finished / "user_norm.py", tmp_path / "user_norm.py")
    other = tmp_path / "other.yaml"
    other.write_text(SUITE.replace("lr: 0.05", "lr: 0.1"))
    same = tmp_path / "suite.yaml"
    same.write_text(SUITE)
    run = tmp_path / "run"

    def fresh() -> None:
        if run.exists():
            shutil.rmtree(run)
        shutil.copytree(finished / "run", run)

    def study() -> None:
        (run / "optuna.db").write_bytes(b"not a database")

    searched = tmp_path / "search.yaml"
    searched.write_text(SUITE + "search: {num_samples: 2, space: {recipe.lr: "
                        "{type: float, low: 0.01, high: 0.1}}}\n")  # fmt: skip
    refusals = {  # name: (suite, how to damage the fresh copy, piece of the line)
        "another suite": (other, None, "holds results of a different suite"),
        "a planted link": (same, _link("checkpoints", "user_norm.py"), "symbolic link"),
        "a search over a grid run": (searched, None, "search section changed"),
        "an unreadable study": (searched, study, "search section changed"),
    }
    for name, (suite, damage, text) in refusals.items():
        results = []
        for dry in (False, True):
            fresh()
            if damage is not None:
                damage(run, tmp_path) if damage is not study else damage()
            before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
            argv = ["run", str(suite), "--output", str(run)] + (["--dry-run"] if dry else [])
            results.append(_cli(argv, capsys))
            assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before, name
        assert results[0] == results[1], (name, results)
        code, err = results[0]
        assert code == 2 and len(err) == 1 and text in err[0], (name, err)
    fresh()  # a lock held by another process (a live run)
    with RunStore(run):
        dry = _cli(["run", str(same), "--output", str(run), "--dry-run"], capsys)
        real = _cli(["run", str(same), "--output", str(run)], capsys)
    assert dry == real and dry[0] == 2 and "in use by another normbench process" in dry[1][0]


@pytest.mark.slow
def test_a_run_over_damaged_checkpoints_loses_and_falsifies_nothing(
    finished: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Through `normbench run` (Ray): an interrupted trial whose checkpoint runs code is
    retrained with a note that never advises unsafe loading, in the report's Notes; one whose
    checkpoint has a newer format fails naming both versions and keeps the file; a finished
    trial that lost its last epoch line and whose checkpoint is unreadable is shown as
    incomplete, then retrained (its old lines and checkpoint kept in superseded/), never
    reported complete with a shorter history."""
    here = tmp_path
    for name in ("suite.yaml", "user_norm.py"):
        shutil.copy(finished / name, here / name)
    run = here / "run"
    shutil.copytree(finished / "run", run)
    ids = _ids(run)
    original = {
        t: [x for x in _lines(run / "epochs.jsonl") if x["trial_id"] == t] for t in ids.values()
    }
    _plant_torch_pickle(run, here)  # bn: interrupted (below), its checkpoint would run code
    kept = [x for x in _lines(run / "trials.jsonl") if x["trial_id"] == ids["user_ln"]]
    _write_lines(run / "trials.jsonl", kept)
    gn = run / "checkpoints" / ids["gn"] / "checkpoint.pt"  # gn: interrupted, newer format
    torch.save({**torch.load(gn, weights_only=True), "format_version": ckpt.FORMAT_VERSION + 1}, gn)
    newer = gn.read_bytes()
    lines = _lines(run / "epochs.jsonl")  # user_ln: finished, its last line lost, ...
    lost = (ids["user_ln"], 2)
    _write_lines(run / "epochs.jsonl", [x for x in lines if (x["trial_id"], x["epoch"]) != lost])
    (run / "checkpoints" / ids["user_ln"] / "checkpoint.pt").write_bytes(
        b"damaged"
    )  # ...unreadable

    code, err = _cli(["report", str(run)], capsys)
    board = (run / "report" / "leaderboard.md").read_text()
    assert code == 0 and f"`{ids['user_ln']}` | user_ln | resnet20 | 0 | incomplete | 1 |" in board
    code, err = _cli(["run", str(here / "suite.yaml"), "--output", str(run)], capsys)
    assert code == 1 and not [x for x in err if "Traceback" in x], err  # gn failed
    assert not (here / MARKER).exists()
    final = {x["trial_id"]: x for x in _lines(run / "trials.jsonl")}
    bn, ln, g = final[ids["bn"]], final[ids["user_ln"]], final[ids["gn"]]
    assert (bn["status"], ln["status"], g["status"]) == ("completed", "completed", "failed")
    assert (
        f"format {ckpt.FORMAT_VERSION + 1}, newer than the format {ckpt.FORMAT_VERSION}"
        in g["reason"]
    )
    assert gn.read_bytes() == newer and not gn.with_name("checkpoint.pt.invalid").exists()
    (bn_note,) = bn["notes"]
    assert "holds the Python object" in bn_note and "restarted the trial from scratch" in bn_note
    (ln_note,) = ln["notes"]
    assert "retrained from scratch: epoch records [2] of its 2 epochs were lost" in ln_note
    (archive,) = (run / "superseded").iterdir()
    assert (archive / "checkpoints" / ids["user_ln"] / "checkpoint.pt").read_bytes() == b"damaged"
    assert [x["epoch"] for x in _lines(archive / "epochs.jsonl")] == [1]
    for tid in (ids["bn"], ids["user_ln"]):  # retrained with the same seed: the same numbers
        now = [x for x in _lines(run / "epochs.jsonl") if x["trial_id"] == tid]
        assert [(x["epoch"], x["test_top1"]) for x in now] == [
            (x["epoch"], x["test_top1"]) for x in original[tid]
        ]
    board = (run / "report" / "leaderboard.md").read_text()
    notes = board.split("## Notes")[1]
    assert bn_note.split(";")[0] in notes and "retrained from scratch" in notes
    assert "weights_only" not in board and "weights_only" not in json.dumps(final)


def test_corpus_counts() -> None:
    """The tally of the corpus above (run in the same process, after it)."""
    print(f"planted run directories: {TALLY['directories']} of {len(CASES)}; commands run on "
          f"them: {TALLY['commands']}, handled: {TALLY['handled']}")  # fmt: skip
    if TALLY["directories"]:  # the corpus ran in this process (not split by -n or -k)
        assert TALLY["handled"] == TALLY["commands"]


def test_the_output_folder_the_user_named_may_be_their_own_link(
    finished: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Links are refused below a run directory, not the run directory a user names (`--output`
    on a link to their scratch space), nor the report folder they name."""
    real = tmp_path / "scratch" / "run"
    real.parent.mkdir()
    shutil.copytree(finished / "run", real)
    shutil.copy(finished / "user_norm.py", tmp_path)
    (tmp_path / "suite.yaml").write_text(SUITE)
    (tmp_path / "run").symlink_to(real)
    (tmp_path / "out").symlink_to(tmp_path / "scratch")
    code, err = _cli(
        ["run", str(tmp_path / "suite.yaml"), "--output", str(tmp_path / "run")], capsys
    )
    assert code == 0 and not err, err
    code, err = _cli(["report", str(tmp_path / "run"), "--output", str(tmp_path / "out")], capsys)
    assert code == 0 and (tmp_path / "scratch" / "leaderboard.md").is_file()
