"""RunStore: lock, append-only lines, torn tails, dedupe, suite compatibility; the readers."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

from normbench.errors import RunDirError
from normbench.results import RunStore, load_epochs, load_results

T1 = "0123456789ab"


def _tid(name: str) -> str:
    """A trial id (12 hex digits, the only form the store reads back) standing for `name`."""
    return name.encode().hex().ljust(12, "0")[:12]


def _rec(epoch: int, val: float, test: float, **kw: object) -> dict:
    base = {
        "epoch": epoch,
        "status": "ok",
        "val_top1": val,
        "test_top1": test,
        "test_top5": test + 10,
        "elapsed_s": 2.0 * epoch,
        "images_per_s": 100.0 * epoch,
        "peak_mem_mb": 50.0 + epoch,
        "params": 1234,
        "variant_source": "built-in",
    }
    return {**base, **kw}


def test_second_store_is_refused_naming_dir_and_holder_pid(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, time
            from normbench.results.store import RunStore
            s = RunStore({str(tmp_path)!r}); print("locked", flush=True); time.sleep(60)
        """)], stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunDirError) as err:
            RunStore(tmp_path)
        assert str(tmp_path) in str(err.value) and f"pid {holder.pid}" in str(err.value)
    finally:
        holder.kill()
        holder.wait()
    RunStore(tmp_path).close()  # the lock died with its holder


def test_lines_are_deduped_and_torn_tail_is_ignored_then_cut(tmp_path: Path) -> None:
    with RunStore(tmp_path) as store:
        assert store.append_epoch(T1, _rec(1, 10, 11), extra={"spec": {"variant": "bn"}})
        assert not store.append_epoch(T1, _rec(1, 99, 99))  # same (trial, epoch): skipped
        assert store.append_epoch(T1, _rec(2, 20, 21), extra={"spec": {"variant": "bn"}})
    lines = (tmp_path / "epochs.jsonl").read_text().splitlines()
    assert [json.loads(x)["val_top1"] for x in lines] == [10, 20]
    assert "spec" in json.loads(lines[0]) and "spec" not in json.loads(lines[1])
    with open(tmp_path / "epochs.jsonl", "a") as f:  # a driver killed mid-write
        f.write(f'{{"trial_id": "{T1}", "epoch": 3, "val_')
    assert list(load_epochs(tmp_path)["epoch"]) == [1, 2]
    with RunStore(tmp_path) as store:
        assert store.last_epoch(T1) == 2
        store.append_epoch(T1, _rec(3, 30, 31))
    assert [
        json.loads(x)["epoch"] for x in (tmp_path / "epochs.jsonl").read_text().splitlines()
    ] == [1, 2, 3]


def test_load_results_metrics_statuses_and_interrupted(tmp_path: Path) -> None:
    spec = {
        "variant": "gn",
        "backbone": "resnet20",
        "dataset": "synthetic",
        "batch_size": 32,
        "seed": 1,
        "epochs": 3,
        "variant_options": {"num_groups": 2},
    }
    with RunStore(tmp_path) as store:
        vals, tests = [30.0, 50.0, 45.0], [31.0, 52.0, 47.0]
        for e in range(3):
            store.append_epoch(_tid("a"), _rec(e + 1, vals[e], tests[e]), extra={"spec": spec})
        store.finish_trial(_tid("a"), spec, {"variant": "gn(G=2)"}, "completed")
        store.append_epoch(_tid("b"), _rec(1, 5.0, 6.0), extra={"spec": {**spec, "seed": 2}})
        store.finish_trial(_tid("c"), {**spec, "seed": 3}, {}, "failed", "boom")
        assert store.completed() == {_tid("a")}
    df = load_results(tmp_path).set_index("trial_id")
    a = df.loc[_tid("a")]
    # Independent: final = epoch 3; best val = 50 at epoch 2, where test = 52.
    assert (a.status, a.epochs, a.final_test_top1, a.final_val_top1) == ("completed", 3, 47.0, 45.0)
    assert (a.best_val_top1, a.best_val_epoch, a.test_top1_at_best_val) == (50.0, 2, 52.0)
    assert a.wall_time_s == 6.0 and a.images_per_s == pytest.approx((100 + 200 + 300) / 3)
    assert (
        a.peak_mem_mb == 53.0
        and a.label == "gn(G=2)"
        and json.loads(a.options) == {"num_groups": 2}
    )
    assert df.loc[_tid("b")].status == "interrupted" and df.loc[_tid("b")].seed == 2
    assert df.loc[_tid("c")].status == "failed" and df.loc[_tid("c")].reason == "boom"
    assert df.loc[_tid("c")].epochs == 0 and math.isnan(df.loc[_tid("c")].final_test_top1)


@dataclass
class _Trial:
    spec: object
    cell: dict


@dataclass
class _Spec:
    d: dict

    @property
    def trial_id(self) -> str:  # stands in for the hash: names the spec in the test
        name = self.d["variant"] + str(self.d["epochs"]) + str(self.d.get("lr", ""))
        return _tid(name)


@dataclass
class _Suite:
    trials_: list
    search: object = None
    text: str = "name: x\n"
    extra: str = "a"

    def trials(self) -> list:
        return self.trials_

    def to_json(self) -> dict:
        return {
            "name": "x",
            "extra": self.extra,
            "search": self.search,
            "resources": {"cpus": 1},
            "trials": [{"trial_id": t.spec.trial_id, "spec": t.spec.d} for t in self.trials_],
        }


def _suite(*specs: dict, **kw: object) -> _Suite:
    return _Suite([_Trial(_Spec(s), {}) for s in specs], **kw)


def test_write_suite_accepts_added_trials_and_refuses_incompatible(tmp_path: Path) -> None:
    s1 = {"variant": "bn", "epochs": 4}
    with RunStore(tmp_path) as store:
        store.write_suite(_suite(s1))
        store.append_epoch(_tid("bn4"), _rec(1, 1, 1), extra={"spec": s1})
        store.write_suite(_suite(s1))  # same suite: resume
        s2 = {"variant": "gn", "epochs": 4}
        store.write_suite(_suite(s1, s2, extra="b"))  # only adds a trial
        smoke = {"variant": "bn", "epochs": 2}  # same trial, other length
        store.write_suite(_suite(smoke, extra="c"))
        changed = {"variant": "bn", "epochs": 4, "lr": 0.5}
        with pytest.raises(RunDirError, match=_tid("bn4")):
            store.write_suite(_suite(changed, extra="d"))
        with pytest.raises(RunDirError, match="search"):
            store.write_suite(_suite(s1, search={"num_samples": 2}))
    saved = json.loads((tmp_path / "suite.resolved.json").read_text())
    assert saved["extra"] == "c" and os.path.exists(tmp_path / "suite.yaml")


def test_a_full_disk_mid_append_leaves_whole_lines_and_names_the_file(tmp_path: Path) -> None:
    """A write that lands short (the disk filled mid-line) or fails: the partial line is cut
    off again, StorageFullError names the file and its file system, the next append (with
    room again) starts on a fresh line and no reader sees a damaged line."""
    import errno

    from normbench.errors import StorageFullError

    real = os.write
    with RunStore(tmp_path) as store:
        store.append_epoch(T1, _rec(1, 10, 11))
        for fault in ("short", "raise"):

            def full(fd: int, data: bytes, fault: str = fault) -> int:
                if fault == "short":
                    return real(fd, bytes(data)[: len(data) // 2])
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

            os.write = full  # only for the append below (pytest writes nothing meanwhile)
            try:
                with pytest.raises(StorageFullError) as err:
                    store.append_epoch(T1, _rec(2, 20, 21))
            finally:
                os.write = real
            path = tmp_path / "epochs.jsonl"
            assert str(err.value).startswith(
                f"No space left on device writing {path} (file system "
            )
            assert path.read_text().count("\n") == 1 and path.read_text().endswith("\n")
        store.append_epoch(T1, _rec(2, 20, 21))
    assert list(load_epochs(tmp_path)["epoch"]) == [1, 2]


def test_trial_ids_read_back_must_be_ids_before_any_path_is_built(tmp_path: Path) -> None:
    """A line whose trial_id is not 12 hex digits is skipped with a warning; the store never
    writes one; `trial_dir` refuses it."""
    from normbench.errors import RunDirWarning
    from normbench.results.paths import trial_dir

    with RunStore(tmp_path) as store:
        store.append_epoch(T1, _rec(1, 10, 11))
        with pytest.raises(RunDirError, match="is not a trial id"):
            store.append_epoch("../../x", _rec(1, 10, 11))
    with open(tmp_path / "epochs.jsonl", "a") as f:
        f.write(json.dumps({**_rec(1, 1, 1), "trial_id": "../../victim"}) + "\n")
    with pytest.warns(RunDirWarning, match="epochs.jsonl:2: skipped a damaged line .*trial_id"):
        assert list(load_epochs(tmp_path)["trial_id"]) == [T1]
    with pytest.raises(RunDirError):
        trial_dir(tmp_path / "checkpoints", "..")
    assert trial_dir(tmp_path, T1) == tmp_path / T1
