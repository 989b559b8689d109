"""The `normbench` entry point: user mistakes are one line each and exit status 2."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from normbench.cli import main


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    with pytest.raises(SystemExit) as info:
        main(argv)
    return int(info.value.code or 0), capsys.readouterr().err


def test_every_suite_problem_gets_its_own_line(tmp_path: Path, capsys) -> None:
    suite = tmp_path / "bad.yaml"
    suite.write_text(
        "version: 1\nname: bad\ndataset: {name: digitz}\nbackbones: [resnet20]\n"
        "variants: [bm]\nbatch_sizes: [8]\nseeds: 1\ntrain: {epochs: 1}\n"
    )
    out = tmp_path / "run"
    code, err = _run(["run", str(suite), "--output", str(out)], capsys)
    lines = err.strip().splitlines()
    assert code == 2
    assert lines[0].startswith(f"normbench: error: {suite}:3: dataset.name: unknown dataset")
    assert "did you mean 'digits'" in lines[0]
    assert lines[1].startswith(f"normbench: error: {suite}:5: variants[0].name: unknown variant")
    assert not out.exists()  # nothing half-written


@pytest.mark.parametrize("argv", [["frobnicate"], ["variants", "--bogus"]])
def test_usage_errors_are_one_line(argv: list[str], capsys) -> None:
    code, err = _run(argv, capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert err.startswith("normbench: error: ")


def test_no_arguments_prints_help(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 0 and "Commands" in capsys.readouterr().out


def test_start_up_imports_no_heavy_library() -> None:
    """Building the command tree (every `normbench` start) must not load torch, Ray, pandas or
    matplotlib: each command imports what it needs when it runs."""
    import subprocess
    import sys

    code = (
        "import sys, normbench.cli as c; c.build_app(); "
        "print(sorted(m for m in ('torch', 'ray', 'pandas', 'matplotlib') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_version(capsys) -> None:
    import normbench

    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"normbench {normbench.__version__}"


@pytest.mark.parametrize("argv", [["run"], ["train"], ["variants"], ["report"], ["bench", "step"]])
def test_help_shows_no_type_tags(argv: list[str], capsys) -> None:
    """Flags take no value, so their help line shows none; value options show a metavar."""
    with pytest.raises(SystemExit) as info:
        main([*argv, "--help"])
    out = capsys.readouterr().out
    assert info.value.code == 0
    options = out.split("Options:")[1]
    assert "<bool>" not in out and "<int>" not in options and "<str>" not in options
    assert any(line.split()[:2] == ["--help", "Show"] for line in options.splitlines())
    if argv == ["run"]:
        assert re.search(r"--dry-run +Print", options) and "--max-epochs N" in options
