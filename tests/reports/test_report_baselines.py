"""`normbench report` on the committed runs of shipped suites (reports/*/run, read only): the
baseline a table compares with, named in its header per table (or "none"), `--baseline`
taking the labels the tables show, and numbers that round to zero written without a sign.

Expected numbers are computed here from the JSONL lines, not through the report's code."""

from __future__ import annotations

import json
import re
import shutil
import statistics
from pathlib import Path

import pytest

from normbench.cli import main
from normbench.reports.numbers import number

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "reports" / "quickstart" / "run"  # suites/quickstart.yaml: bn ... gn(8)
GAN = ROOT / "reports" / "sabn_gan_digits" / "run"  # ccbn and sabn: no bn row
NAS = ROOT / "reports" / "sabn_nas_digits" / "run"  # bn and sabn, with options


def _cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    out = capsys.readouterr()
    return int(exc.value.code or 0), out.out, out.err


def _finals(run: Path) -> dict[str, dict[int, float]]:
    """Suite label -> seed -> final test top-1 of each completed trial, from the JSONL."""
    last: dict[str, float] = {}
    for line in (run / "epochs.jsonl").read_text().splitlines():
        rec = json.loads(line)
        last[rec["trial_id"]] = rec["test_top1"]
    out: dict[str, dict[int, float]] = {}
    for line in (run / "trials.jsonl").read_text().splitlines():
        t = json.loads(line)
        if t["status"] == "completed":
            out.setdefault(t["cell"]["variant"], {})[t["spec"]["seed"]] = last[t["trial_id"]]
    return out


def _rows(markdown: str, header: str) -> dict[str, list[str]]:
    """The cells of the table under `## header...`, by variant (bold stripped)."""
    section = markdown.split(f"## {header}", 1)[1].split("\n## ", 1)[0]
    lines = [ln for ln in section.splitlines() if ln.startswith("| ")]
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = {}
    for ln in lines[1:]:
        cells = [c.strip() for c in ln.strip("|").split("|")]
        rows[cells[0].strip("*")] = cells
    return {"": head, **rows}


def test_merged_report_names_each_tables_baseline_or_none(tmp_path: Path, capsys) -> None:
    """The NAS run (its BN row shows its options) merged with the GAN run (ccbn and sabn, no
    bn row): each table's Δ column names the row it compares with, or "none" and why, in the
    Markdown and in the terminal summary."""
    code, out, _ = _cli(["report", str(NAS), str(GAN), "-o", str(tmp_path / "r")], capsys)
    assert code == 0
    text = (tmp_path / "r" / "leaderboard.md").read_text()
    nas, gan = _rows(text, "darts · digits"), _rows(text, "generation · digits")
    bn = "bn(affine=False,track_running_stats=False)"  # the row the NAS table shows
    assert f"Δ vs {bn} [95% CI]" in nas[""] and f"| **{bn}** |" in text
    assert "Δ vs none [95% CI]" in gan[""]
    assert "No row of this table is the baseline `bn`" in text.split("## generation")[1]
    assert {gan[v][gan[""].index("Δ vs none [95% CI]")] for v in ("ccbn", "sabn")} == {"—"}
    assert re.search(rf"Δ vs {re.escape(bn)} .*\n(.*\n)*.*Δ vs none ", out)


def test_baseline_takes_the_label_a_table_shows(tmp_path: Path, capsys) -> None:
    """`--baseline 'gn(num_groups=8)'`, as the quickstart table writes GN's row, on a copy of
    the run whose UBN final test top-1 is set 0.003 below GN's on every seed: every Δ is the
    mean over seeds of (row - GN), recomputed from the JSONL, and UBN's (-0.003) reads 0.00,
    never -0.00."""
    run = tmp_path / "run"
    shutil.copytree(QUICKSTART, run)
    finals = _finals(run)
    lines = [json.loads(x) for x in (run / "epochs.jsonl").read_text().splitlines()]
    last = {rec["trial_id"]: i for i, rec in enumerate(lines)}
    for line in (run / "trials.jsonl").read_text().splitlines():
        t = json.loads(line)
        if t["cell"]["variant"] == "ubn":
            lines[last[t["trial_id"]]]["test_top1"] = finals["gn"][t["spec"]["seed"]] - 0.003
    (run / "epochs.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    finals = _finals(run)
    shown = "gn(num_groups=8)"
    argv = ["report", str(run), "-o", str(tmp_path / "r"), "--baseline", shown]
    code, out, _ = _cli(argv, capsys)
    assert code == 0
    text = (tmp_path / "r" / "leaderboard.md").read_text()
    rows = _rows(text, "digits · resnet20")
    column = rows[""].index(f"Δ vs {shown} [95% CI]")
    assert f"| **{shown}** |" in text
    for label in ("bn", "ubn", "in", "rbn"):
        diffs = [finals[label][s] - finals["gn"][s] for s in sorted(finals["gn"])]
        assert rows[label][column].split(" [")[0] == number(statistics.mean(diffs), "+.2f")
    assert rows["ubn"][column].startswith("0.00 [")
    gn_mean = number(statistics.mean(finals["gn"].values()), ".2f")  # the target it sets
    assert f"Target accuracy: {gn_mean}% test top-1 ({shown}'s mean final top-1 in this" in text
    assert "-0.00" not in text + out


def test_an_unknown_baseline_is_one_line_listing_the_labels(tmp_path: Path, capsys) -> None:
    argv = ["report", str(QUICKSTART), "-o", str(tmp_path / "r"), "--baseline", "gn(num_groups=4)"]
    code, _, err = _cli(argv, capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "'gn(num_groups=4)' is no variant of these runs" in err
    for label in ("gn(num_groups=8)", "bgn(num_groups=8)", "ubn", "gn"):
        assert repr(label) in err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    ("value", "fmt", "text"),
    [(-0.004, ".2f", "0.00"), (0.004, "+.2f", "0.00"), (-0.006, "+.2f", "-0.01"),
     (-0.0, ".4g", "0"), (-0.04, ".1f", "0.0"), (12.0, "+.2f", "+12.00"), (-1e-20, ".4g",
     "-1e-20"), (float("nan"), ".2f", "—"), (None, ".2f", "—")],
)  # fmt: skip
def test_number_drops_the_sign_of_a_shown_zero(value, fmt, text) -> None:
    assert number(value, fmt) == text
