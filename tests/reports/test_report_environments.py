"""`normbench report` on run directories in the on-disk format (written by the report fixture's
writer): a row whose seeds ran in different execution environments says so, and a search
over several layers and their options keeps each configuration apart (never pooled as seeds)
and names the best configuration overall and per layer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fixtures import make_fixture

from normbench.cli import main


def _env(threads: int) -> dict:
    return {"device_type": "cpu", "device_name": "x86", "num_threads": threads,
            "dtype": "float32", "torch": "2.14.1"}  # fmt: skip


def _rewrite(path: Path, fn) -> None:
    lines = [fn(json.loads(x)) for x in path.read_text().splitlines() if x.strip()]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))


def _report(run: Path, out: Path, capsys) -> str:
    with pytest.raises(SystemExit) as exit_:
        main(["report", str(run), "--output", str(out)])
    assert exit_.value.code == 0, capsys.readouterr().err
    return (out / "leaderboard.md").read_text()


def test_a_row_whose_seeds_ran_in_different_environments_says_so(tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    make_fixture.write_run(run, unfinished=False)
    specs = {t["trial_id"]: t["spec"] for t in map(json.loads, (run / "trials.jsonl").open())}

    def environment(rec: dict) -> dict:
        spec = specs[rec["trial_id"]]  # ubn seed 2 ran with 2 threads, every other trial 1
        rec["environment"] = _env(2 if (spec["variant"], spec["seed"]) == ("ubn", 2) else 1)
        return rec

    _rewrite(run / "epochs.jsonl", environment)
    board = _report(run, tmp_path / "report", capsys)
    assert (
        "**The seeds of ubn ran in different execution environments** (num_threads 1 / 2): "
        "its spread and its comparisons include the environment's effect, not only the "
        "seeds' (docs/reproducibility.md)."
    ) in board
    assert "seeds of bn ran" not in board


def test_a_search_over_layers_and_options_keeps_configurations_apart(
    tmp_path: Path, capsys
) -> None:
    """UBN trials that differ only in the searched tau are three configurations of one seed
    each, not three seeds of one row; BN (no tau) is one configuration over its 3 seeds."""
    run = tmp_path / "run"
    space = {
        "variant": {"type": "categorical", "choices": ["bn", "ubn"]},
        "variant_options.tau": {"type": "float", "low": 0.05, "high": 0.6},
    }
    search = {"metric": "val_top1", "mode": "max", "space": space}
    make_fixture.write_run(run, unfinished=False, suite_changes={"search": search})
    taus = {0: 0.1, 1: 0.2, 2: 0.3}

    def sample(rec: dict) -> dict:
        if rec.get("spec") and rec["spec"]["variant"] == "ubn":
            rec["spec"]["variant_options"] = {"tau": taus[rec["spec"]["seed"]]}
        return rec

    _rewrite(run / "trials.jsonl", sample)
    _rewrite(run / "epochs.jsonl", sample)
    # The independent computation: mean final val top-1 per configuration from the JSONL.
    tau_of = {}
    for t in map(json.loads, (run / "trials.jsonl").open()):
        tau_of[t["trial_id"]] = t["spec"]["variant_options"].get("tau")
    last: dict[str, dict] = {}
    for rec in map(json.loads, (run / "epochs.jsonl").open()):
        last[rec["trial_id"]] = rec
    ubn = {
        f"ubn(tau={tau_of[t]:g})": r["val_top1"] for t, r in last.items() if tau_of[t] is not None
    }
    bn = [r["val_top1"] for t, r in last.items() if tau_of[t] is None]
    best_ubn = max(ubn, key=ubn.__getitem__)
    bn_mean = sum(bn) / len(bn)

    board = _report(run, tmp_path / "report", capsys)
    rows = {
        line.split("|")[1].strip().strip("*"): line.split("|")[2].strip()
        for line in board.splitlines()
        if line.startswith("| ") and not line.startswith("| variant")
    }
    assert {label: rows.get(label) for label in ubn} == dict.fromkeys(ubn, "1")
    assert rows.get("bn") == "3"
    overall = best_ubn if ubn[best_ubn] > bn_mean else "bn"
    score = ubn[best_ubn] if overall == best_ubn else bn_mean
    assert f"**{overall}**, mean val_top1 {score:.2f}" in board
    per_layer = sorted(
        [("bn", "bn", bn_mean), ("ubn", best_ubn, ubn[best_ubn])], key=lambda x: -x[2]
    )
    assert (
        "Best per layer: "
        + "; ".join(f"{n}: **{label}** (val_top1 {v:.2f})" for n, label, v in per_layer)
        + "."
    ) in board
