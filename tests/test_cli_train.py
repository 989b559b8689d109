"""`normbench train`: --json prints one parsable record per epoch; mistakes exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from normbench.cli import main

PLUGIN = str(Path(__file__).parent / "engine" / "plugin_tiny.py")
ARGS = [
    "train", "--variant", "gn", "--backbone", "engine_tinynet", "--dataset", "synthetic",
    "--epochs", "2", "--batch-size", "16", "--limit-batches", "2", "--device", "cpu",
    "--plugin", PLUGIN, "--option", "num_groups=2",
    "--dataset-option", "image_size=8", "--dataset-option", "n_train=100",
    "--dataset-option", "n_test=32",
]  # fmt: skip


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


def test_train_json_records(capsys, tmp_path) -> None:
    code, out, _ = run([*ARGS, "--json", "--checkpoint-dir", str(tmp_path)], capsys)
    assert code == 0
    records = [json.loads(line) for line in out.splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    for key in ("status", "train_loss", "val_top1", "test_top1", "test_top5", "lr",
                "images_per_s", "params", "elapsed_s", "condensation", "diagnostics"):  # fmt: skip
        assert key in records[0]
    assert records[0]["variant_source"] == "built-in"
    assert (tmp_path / "checkpoint.pt").is_file()


def test_train_json_stderr_has_no_profiler_log(capfd) -> None:
    """The CPU peak-memory window starts torch's profiler, whose C++ side logs start/stop
    lines straight to file descriptor 2 (`capfd` sees them, `capsys` would not)."""
    code, out, err = run([*ARGS, "--json"], capfd)
    assert code == 0 and len(out.splitlines()) == 2
    assert "profiler_start" not in err and "profiler_stop" not in err, err


def test_train_plain_output_and_summary(capsys) -> None:
    code, out, _ = run(ARGS, capsys)
    assert code == 0
    assert "epoch 1/2" in out and "epoch 2/2" in out and "final epoch 2" in out


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--option", "num_groups"], "expected key=value"),
        (["--option", "no_such=1"], "has no option 'no_such'"),
        (["--epochs", "0"], "epochs must be an integer in [1, 10000]"),
        (["--schedule", "cosine", "--milestone", "1"], "only apply to schedule multistep"),
    ],
)
def test_user_mistakes_exit_2(capsys, extra, message) -> None:
    code, _, err = run([*ARGS, *extra], capsys)
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1


def test_train_suite_trial_unknown_says_where_capped_ids_live(capsys) -> None:
    suite = str(Path(__file__).resolve().parents[1] / "suites" / "quickstart.yaml")
    code, _, err = run(["train", "--suite", suite, "--trial", "ffffffffffff"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "--trial 'ffffffffffff' matches no trial of" in err
    assert err.rstrip().endswith(
        "for a trial of a run made with --set, --max-epochs or --limit-batches, pass its run "
        "directory as --suite"
    )


def test_flags_are_the_declared_fields_with_the_suites_defaults(tmp_path) -> None:
    """Every field of the trial declaration is a flag, and a trial named by flags is the trial
    a suite names with the same keys: same defaults, so the same id."""
    import typer

    from normbench.cli import build_app
    from normbench.cli_train import spec_from_flags
    from normbench.spec import flat_fields
    from normbench.suite.loader import load_suite

    command = typer.main.get_command(build_app()).commands["train"]  # type: ignore[attr-defined]
    dests = {p.name for p in command.params}
    assert {d.name for d in flat_fields()} <= dests
    suite = tmp_path / "s.yaml"
    suite.write_text(
        "version: 1\nname: s\ndataset: {name: digits}\nbackbones: [resnet20]\n"
        "variants: [iebn]\nbatch_sizes: [128]\ntrain: {epochs: 2}\n"
    )
    (from_suite,) = load_suite(suite).trials()
    flags = {d.name: None for d in flat_fields()}
    flags |= {"variant": "iebn", "backbone": "resnet20", "dataset": "digits", "epochs": 2}
    from_flags = spec_from_flags(flags)
    assert from_flags.placement == "except-shortcut"  # the layer's own, as in a suite
    assert from_flags.trial_id == from_suite.trial_id


def test_flag_values_follow_the_suites_yaml_rules(tmp_path) -> None:
    """`--option eps=1e-5` is the float a suite's `eps: 1e-5` is (YAML 1.2; PyYAML's 1.1 would
    read a string), so the flag and the suite name the same trial."""
    from normbench.cli_train import spec_from_flags
    from normbench.spec import flat_fields
    from normbench.suite.loader import load_suite

    suite = tmp_path / "s.yaml"
    suite.write_text(
        "version: 1\nname: s\ndataset: {name: digits}\nbackbones: [resnet20]\n"
        "variants: [{name: evonorm_b0, options: {eps: 1e-5}}]\nbatch_sizes: [128]\n"
        "train: {epochs: 2}\n"
    )
    (from_suite,) = load_suite(suite).trials()
    flags = {d.name: None for d in flat_fields()}
    flags |= {"variant": "evonorm_b0", "backbone": "resnet20", "dataset": "digits",
              "epochs": 2, "variant_options": ["eps=1e-5"]}  # fmt: skip
    from_flags = spec_from_flags(flags)
    assert from_flags.variant_options == {"eps": 1e-05}
    assert from_flags.trial_id == from_suite.trial_id
