"""`normbench variants`: the table, the JSON for scripts, and user errors."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from normbench import registry
from normbench.cli import main

# Learnable parameters per channel, counted by hand from docs/variants.md:
# BN/IN/GN/BGN/GhostBN/FourThings: gamma, beta.  IEBN: gamma, beta, w, b (docs/variants.md#iebn).
# RBN: gamma, beta, w_m, w_v, b_v (docs/variants.md#rbn).
# BNET k=3: 3x3 depthwise kernel + bias = 9 + 1 (docs/variants.md#bnet).
# SaBN K=1: shared gamma_sa, beta_sa + one embedding row of 2C (docs/variants.md#sabn).
# CCBN K=1: one embedding row of 2C, no shared affine (docs/variants.md#ccbn).
# AuxBN K=2: gamma_k, beta_k per branch. SaAuxBN K=2: gamma_sa, beta_sa + two rows of 2C
# (docs/variants.md#auxbn).
# UBN defaults: RBN calibrations w_m, w_v, b_v + BNET kernel and bias = 3 + 10
# (docs/variants.md#ubn). AdaIN: none (its affine is the style's); SaAdaIN: gamma_sa, beta_sa
# (docs/variants.md#adain).
HAND_COUNT = {"bn": 2, "in": 2, "gn": 2, "iebn": 4, "rbn": 5, "bnet": 10, "sabn": 4,
              "bgn": 2, "ghost_bn": 2, "ubn": 13, "fourthings": 2, "ccbn": 2, "adain": 0,
              "saadain": 2, "auxbn": 4, "saauxbn": 6}  # fmt: skip
# Only IN, GN and the AdaINs compute statistics per sample; FourThings' default group is the
# whole batch.
BATCH_DEPENDENT = {name: name not in ("in", "gn", "adain", "saadain") for name in HAND_COUNT}
# What forward takes besides x: SaBN, CCBN, AuxBN and SaAuxBN a branch index, the AdaINs the
# style features.
FORWARD = {**dict.fromkeys(HAND_COUNT, "x"), "sabn": "x, index", "ccbn": "x, index",
           "auxbn": "x, index", "saauxbn": "x, index",
           "adain": "x, style", "saadain": "x, style"}  # fmt: skip
# The modern comparison (docs/variants.md#the-layers-convnets-compare-against-today), at the
# listing's 64 channels: LN2d, GN1, BRN gamma, beta; RMSNorm2d gamma only; FRN gamma, beta,
# tau; EvoNorm gamma, beta, v; DyT gamma, beta and one alpha for the layer (1/64 per channel).
MODERN_COUNT = {"layernorm2d": 2, "rmsnorm2d": 1, "gn1": 2, "frn": 3, "evonorm_b0": 3,
                "evonorm_s0": 3, "dyt": 2 + 1 / 64, "brn": 2}  # fmt: skip
MODERN_EPS = {"layernorm2d": 1e-6, "rmsnorm2d": 1e-6, "gn1": 1e-5, "frn": 1e-6,
              "evonorm_b0": 1e-3, "evonorm_s0": 1e-5, "dyt": 1e-5, "brn": 1e-5}  # fmt: skip


@pytest.fixture()
def builtins_available() -> Iterator[None]:
    pytest.importorskip("normbench.variants", reason="built-in variant modules not written yet")
    registry._reset_all()
    yield
    registry._reset_all()


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main(argv)
    out, err = capsys.readouterr()
    return int(info.value.code or 0), out, err


def test_json_lists_all_builtins_with_hand_counted_parameters(
    builtins_available: None, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = _run(["variants", "--json"], capsys)
    assert code == 0, err
    rows = {row["name"]: row for row in json.loads(out)}
    assert set(HAND_COUNT) <= set(rows)
    for name, count in HAND_COUNT.items():
        row = rows[name]
        assert row["params_per_channel"] == count, name
        assert row["batch_dependent"] is BATCH_DEPENDENT[name], name
        assert row["source"] == "built-in" and row["paper"], name
        assert row["conditioning"] == {"x": None}.get(FORWARD[name], FORWARD[name][3:]), name
        assert row["options"]["eps"] == 1e-5 and row["options"]["momentum"] == 0.1, name
    for name, count in MODERN_COUNT.items():
        row = rows[name]
        assert row["params_per_channel"] == count, name
        assert row["batch_dependent"] is (name in ("evonorm_b0", "brn")), name
        assert row["options"]["eps"] == MODERN_EPS[name], name
    # each layer's computation revision and its changes: no built-in layer has changed since
    # its first stored result (a plugin's: tests/test_revisions.py)
    assert all(row["revision"] == 1 and row["revisions"] == [] for row in rows.values())
    assert rows["brn"]["options"]["rmax"] == 3.0 and rows["dyt"]["options"]["alpha_init"] == 0.5
    assert rows["gn"]["options"]["num_groups"] == 32
    assert rows["bnet"]["options"]["kernel_size"] == 3
    assert rows["ghost_bn"]["options"]["ghost_batch_size"] == 128
    assert rows["ubn"]["options"]["tau"] == 0.15


def test_piped_table_has_one_unwrapped_line_per_builtin(
    builtins_available: None, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "40")  # a narrow terminal width must not matter off a TTY
    code, out, err = _run(["variants"], capsys)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "normbench variants"
    assert lines[1].split() == [
        "name", "options", "params/ch", "batch-dep.", "forward", "rev.", "source", "paper"
    ]  # fmt: skip
    for name, count in HAND_COUNT.items():
        (row,) = [line for line in lines if line.split()[0] == name]
        assert f" {count} " in row and " built-in " in row, row
        assert f" {FORWARD[name]} " in row, row
    # the computation revision its code declares (every built-in layer's is 1)
    at = lines[1].index("rev.")  # aligned columns: the column starts under its header
    revs = {line.split()[0]: line[at:].split()[:1] for line in lines[2:] if line[:1].isalnum()}
    assert revs["bn"] == ["1"] and revs["evonorm_b0"] == ["1"]
    (bgn,) = [line for line in lines if line.startswith("bgn ")]
    assert "num_groups=32 allow_spatial_groups=False" in bgn  # an option value is never split
    assert "eps=1e-05 and momentum=0.1" in out


def test_terminal_table_shows_every_builtin(
    builtins_available: None, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "250")  # rich folds cells in a narrow terminal
    monkeypatch.setenv("FORCE_COLOR", "1")  # rich treats the captured stream as a terminal
    monkeypatch.setenv("TERM", "dumb")
    code, out, err = _run(["variants"], capsys)
    assert code == 0, err
    for name, count in HAND_COUNT.items():
        # the name column, not a wrapped paper title's line that starts with "in"
        row = next(line for line in out.splitlines() if line.startswith(f"│ {name} "))
        assert f" {count} " in row and "built-in" in row, row


def test_missing_plugin_file_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nope.py"
    code, out, err = _run(["variants", "--plugin", str(missing)], capsys)
    assert code == 2 and out == ""
    assert err == f"normbench: error: plugin file {str(missing)!r} does not exist\n"
