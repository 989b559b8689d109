"""Suite validation: every problem reported at once, each with its file, line and key."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

from normbench.errors import SuiteError, UserError
from normbench.suite.loader import load_suite

PROBLEM = re.compile(r"^(?P<file>[^:]+):(?P<line>\d+): (?P<key>\S+): (?P<msg>.*)$")

HEAD = """\
version: 1
name: t
dataset:
  name: digits
  image_size: 8
backbones: [resnet20]
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "suite.yaml"
    if text.startswith(HEAD):  # HEAD + an indented block
        text = HEAD + textwrap.dedent(text[len(HEAD) :])
    p.write_text(textwrap.dedent(text))
    return p


def problems_of(path: Path, **kw) -> list[tuple[int, str, str]]:
    """(line, key, message) of each problem; asserts every one has the FILE:LINE form."""
    with pytest.raises(SuiteError) as info:
        load_suite(path, **kw)
    out = []
    for p in info.value.problems:
        m = PROBLEM.match(p)
        assert m, f"problem not in FILE:LINE: key: message form: {p!r}"
        assert m["file"] == str(path)
        out.append((int(m["line"]), m["key"], m["msg"]))
    return out


def test_suite_error_is_a_user_error():
    assert issubclass(SuiteError, UserError)


def test_many_errors_at_once_with_lines(tmp_path):
    path = write(
        tmp_path,
        """\
        version: 1
        name: bad
        dataset:
          name: digitz
        backbones: [resnet20]
        variants:
          - bn
          - {name: gn, options: {num_group: 8}}
          - ubnn
        batch_sizes: [64]
        train:
          epochs: two
          lr: 0.1
          warmup: 1
        """,
    )
    got = problems_of(path)
    by_line = {line: (key, msg) for line, key, msg in got}
    assert sorted(by_line) == [4, 8, 9, 12, 14], got
    assert "did you mean 'digits'" in by_line[4][1]
    assert by_line[8][0] == "variants[1].options.num_group"
    assert "did you mean 'num_groups'" in by_line[8][1]
    assert by_line[9][0] == "variants[2].name" and "did you mean 'ubn'" in by_line[9][1]
    assert by_line[12][0] == "train.epochs" and "integer" in by_line[12][1]
    assert by_line[14][0] == "train.warmup" and "did you mean 'warmup_epochs'" in by_line[14][1]


def test_unknown_top_level_key_and_missing_key(tmp_path):
    path = write(tmp_path, HEAD + "variants: [bn]\nbatch_size: [64]\ntrain: {epochs: 1}\n")
    got = problems_of(path)
    keys = {key: (line, msg) for line, key, msg in got}
    assert keys["batch_size"][0] == 8 and "did you mean 'batch_sizes'" in keys["batch_size"][1]
    assert "batch_sizes" in keys and "missing" in keys["batch_sizes"][1]


def test_wrong_types_strict(tmp_path):
    path = write(
        tmp_path,
        HEAD
        + """\
        variants: [bn]
        batch_sizes: [64, "128"]
        seeds: 0
        train: {epochs: 2, nesterov: "yes", lr: fast}
        resources: {cpus: 0}
        """,
    )
    keys = {key: line for line, key, _ in problems_of(path)}
    assert keys == {
        "batch_sizes[1]": 8,
        "seeds": 9,
        "train.nesterov": 10,
        "train.lr": 10,
        "resources.cpus": 11,
    }


def test_yaml_syntax_error_has_line(tmp_path):
    path = write(tmp_path, HEAD + "variants: [bn\nbatch_sizes: [64]\n")
    with pytest.raises(SuiteError) as info:
        load_suite(path)
    assert re.match(rf"{re.escape(str(path))}:\d+: \(yaml\)", info.value.problems[0])


def test_duplicate_key_is_reported(tmp_path):
    path = write(
        tmp_path, HEAD + "variants: [bn]\nbatch_sizes: [64]\ntrain: {epochs: 1}\nvariants: [gn]\n"
    )
    assert [(line, key) for line, key, _ in problems_of(path)] == [(10, "variants")]


def test_variant_option_checked_against_signature(tmp_path):
    path = write(
        tmp_path,
        HEAD
        + """\
        variants:
          - {name: ubn, options: {tau: 0.2, thau: 0.1, fct: 1}}
        batch_sizes: [64]
        train: {epochs: 1}
        """,
    )
    got = {key: msg for _, key, msg in problems_of(path)}
    assert set(got) == {"variants[0].options.thau", "variants[0].options.fct"}
    assert "did you mean 'tau'" in got["variants[0].options.thau"]
    assert "bool" in got["variants[0].options.fct"]


def test_backbone_and_dataset_options_checked(tmp_path):
    path = write(
        tmp_path,
        """\
        version: 1
        name: t
        dataset: {name: digits, image_sise: 8}
        backbones: [{name: resnet20, options: {widht: 8}}]
        variants: [bn]
        batch_sizes: [64]
        train: {epochs: 1}
        """,
    )
    got = {(line, key): msg for line, key, msg in problems_of(path)}
    assert set(got) == {(3, "dataset.image_sise"), (4, "backbones[0].options.widht")}
    assert "image_size" in got[(3, "dataset.image_sise")]
    assert "did you mean 'width'" in got[(4, "backbones[0].options.widht")]


def test_ghost_batch_size_must_divide_batch(tmp_path):
    path = write(
        tmp_path,
        HEAD
        + """\
        variants:
          - {name: ghost_bn, options: {ghost_batch_size: 24}}
          - {name: ghost_bn, options: {ghost_batch_size: 16}, label: g16}
        batch_sizes: [48, 64]
        train: {epochs: 1}
        """,
    )
    got = problems_of(path)
    # 24 divides 48 but not 64; 16 divides 48 and 64.
    assert [(line, key) for line, key, _ in got] == [(8, "variants[0].options.ghost_batch_size")]
    assert "batch size 64" in got[0][2]


def test_gn_groups_checked_against_backbone_widths(tmp_path):
    # ResNet-20 (He et al. 2016, CIFAR) has norm widths 16, 32, 64: G=12 divides none of them,
    # G=8 divides all; the default G=32 is not written, so its gcd fallback is allowed.
    path = write(
        tmp_path,
        HEAD
        + """\
        variants:
          - gn
          - {name: gn, options: {num_groups: 8}}
          - {name: bgn, options: {num_groups: 12}}
          - {name: gn, options: {channels_per_group: 5}}
        batch_sizes: [64]
        train: {epochs: 1}
        """,
    )
    got = problems_of(path)
    assert [(line, key) for line, key, _ in got] == [
        (10, "variants[2].options.num_groups"),
        (11, "variants[3].options"),
    ]
    assert "[16, 32, 64]" in got[0][2]


def test_batch_one_with_batch_dependent_variant(tmp_path):
    path = write(tmp_path, HEAD + "variants: [gn, bn]\nbatch_sizes: [4, 1]\ntrain: {epochs: 1}\n")
    got = problems_of(path)
    assert [(line, key) for line, key, _ in got] == [(8, "batch_sizes[1]")]
    assert "'bn'" in got[0][2] and "batch-dependent" in got[0][2]


def test_search_space_paths_and_bounds(tmp_path):
    path = write(
        tmp_path,
        HEAD
        + """\
        variants: [ubn]
        batch_sizes: [64]
        train: {epochs: 1}
        search:
          num_samples: 4
          space:
            variant_options.tua: {type: float, low: 0.05, high: 0.5}
            recipe.learning_rate: {type: loguniform, low: 0.01, high: 0.1}
            variant_options.alpha: {type: float, low: 0.5, high: 0.1}
        """,
    )
    got = {key: (line, msg) for line, key, msg in problems_of(path)}
    assert got["search.space.variant_options.tua"][0] == 13
    assert "did you mean 'tau'" in got["search.space.variant_options.tua"][1]
    assert got["search.space.recipe.learning_rate"][0] == 14
    assert got["search.space.variant_options.alpha"][0] == 15
    assert "low < high" in got["search.space.variant_options.alpha"][1]


def test_unknown_plugin_file(tmp_path):
    path = write(
        tmp_path,
        HEAD + "variants: [bn]\nbatch_sizes: [8]\ntrain: {epochs: 1}\n"
        "plugins: [missing_plugin.py]\n",
    )
    got = problems_of(path)
    assert [(line, key) for line, key, _ in got] == [(10, "plugins[0]")]
    assert "does not exist" in got[0][2]


def test_plugin_variant_is_known_after_loading(tmp_path):
    plugin = tmp_path / "myplug.py"
    plugin.write_text(
        textwrap.dedent(
            """\
            from torch import nn
            from normbench.variants_api import register_variant

            @register_variant("suite_test_norm")
            class SuiteTestNorm(nn.BatchNorm2d):
                batch_dependent = True
                paper = "test"

                def __init__(self, num_features, *, scale: float = 1.0, eps=1e-5,
                             momentum=0.1, device=None, dtype=None):
                    super().__init__(num_features, eps=eps, momentum=momentum,
                                     device=device, dtype=dtype)
                    self.scale = scale
            """
        )
    )
    path = write(
        tmp_path,
        HEAD + "variants: [{name: suite_test_norm, options: {scale: 2.0}}]\n"
        "batch_sizes: [8]\ntrain: {epochs: 1}\nplugins: [myplug.py]\n",
    )
    suite = load_suite(path)
    assert suite.plugins == (str(plugin.resolve()),)
    assert suite.trials()[0].spec.plugins == (str(plugin.resolve()),)


def test_overrides_apply_before_validation(tmp_path):
    path = write(
        tmp_path,
        HEAD + "variants: [bn, {name: gn, options: {num_groups: 8}}]\n"
        "batch_sizes: [64]\ntrain: {epochs: 5}\n",
    )
    suite = load_suite(
        path,
        overrides=[
            "train.epochs=2",
            "variants.1.options.num_groups=4",
            "seeds=[3, 4]",
            "train.amp=null",
        ],
    )
    specs = [t.spec for t in suite.trials()]
    assert {s.epochs for s in specs} == {2}
    assert {s.seed for s in specs} == {3, 4}
    assert [s.variant_options for s in specs if s.variant == "gn"] == [{"num_groups": 4}] * 2
    # the text written to RUN_DIR/suite.yaml reproduces the same trials
    again = write(tmp_path, suite.text)
    assert [t.trial_id for t in load_suite(again).trials()] == [t.trial_id for t in suite.trials()]
    assert "--set train.epochs=2" in suite.text


def test_override_errors_name_the_override(tmp_path):
    path = write(tmp_path, HEAD + "variants: [bn]\nbatch_sizes: [64]\ntrain: {epochs: 5}\n")
    with pytest.raises(SuiteError) as info:
        load_suite(path, overrides=["train.epoch=2", "train.lr=fast", "nokey", "seeds.x=1"])
    text = "\n".join(info.value.problems)
    assert len(info.value.problems) == 4, text
    assert f"{path}: --set train.epoch=2: train.epoch: unknown key 'epoch'" in text
    assert "did you mean 'epochs'" in text
    assert f"{path}: --set train.lr=fast: train.lr:" in text
    assert "--set nokey: an override must look like key.path=value" in text
    assert "--set seeds.x=1" in text


def test_caps_must_be_positive(tmp_path):
    path = write(tmp_path, HEAD + "variants: [bn]\nbatch_sizes: [64]\ntrain: {epochs: 5}\n")
    for kw in ({"max_epochs": 0}, {"limit_batches": -1}):
        with pytest.raises(SuiteError):
            load_suite(path, **kw)


def test_missing_file():
    with pytest.raises(SuiteError, match="cannot read the suite file"):
        load_suite("/nonexistent/suite.yaml")


def test_milestones_rule(tmp_path):
    path = write(
        tmp_path,
        HEAD + "variants: [bn]\nbatch_sizes: [64]\n"
        "train: {epochs: 10, schedule: cosine, milestones: [5]}\n",
    )
    got = problems_of(path)
    assert [(line, key) for line, key, _ in got] == [(9, "train")]
    assert "multistep" in got[0][2]


def test_text_keeps_plugins_findable_from_elsewhere(tmp_path):
    (tmp_path / "plug").mkdir()
    plugin = tmp_path / "plug" / "empty_plugin.py"
    plugin.write_text("# registers nothing\n")
    path = write(
        tmp_path,
        HEAD + "variants: [bn]\nbatch_sizes: [8]\ntrain: {epochs: 1}\n"
        "plugins: [plug/empty_plugin.py]\n",
    )
    suite = load_suite(path)
    elsewhere = tmp_path / "run"
    elsewhere.mkdir()
    (elsewhere / "suite.yaml").write_text(suite.text)
    again = load_suite(elsewhere / "suite.yaml")
    assert again.plugins == suite.plugins == (str(plugin.resolve()),)
    assert [t.trial_id for t in again.trials()] == [t.trial_id for t in suite.trials()]


def test_relative_dataset_root_is_made_absolute(tmp_path, monkeypatch):
    """Trials run in Ray's own working directories: a relative root is resolved at load time,
    against the suite file's folder when the file says it, the current directory under --set."""
    (tmp_path / "suites").mkdir()
    path = tmp_path / "suites" / "s.yaml"
    path.write_text(
        HEAD.replace("  image_size: 8\n", "  image_size: 8\n  root: ../data\n")
        + "variants: [bn]\nbatch_sizes: [16]\ntrain: {epochs: 1}\n"
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    suite = load_suite(path)
    assert suite.dataset["root"] == str(tmp_path / "data")
    # the copy written to RUN_DIR/suite.yaml names the same folder from anywhere
    copy = tmp_path / "run" / "suite.yaml"
    copy.parent.mkdir()
    copy.write_text(suite.text)
    assert load_suite(copy).dataset["root"] == str(tmp_path / "data")
    by_flag = load_suite(path, overrides=["dataset.root=cifar"])
    assert by_flag.dataset["root"] == str(elsewhere / "cifar")
    assert load_suite(path, overrides=["dataset.root=/abs/x"]).dataset["root"] == "/abs/x"
    whole = load_suite(path, overrides=["dataset={name: digits, image_size: 8, root: cifar}"])
    assert whole.dataset["root"] == str(elsewhere / "cifar")  # the flag gave the mapping


def test_a_ghost_batch_may_span_devices_under_global_statistics(tmp_path):
    """With `stats_scope: global` the layer normalises devices x batch_size images together
    (tests/engine/test_global_stats.py), so a ghost batch of two devices' batches is valid."""
    text = HEAD + (
        "variants: [{name: ghost_bn, options: {ghost_batch_size: 32}}]\nbatch_sizes: [16]\n"
        "train: {epochs: 1, devices: 2, stats_scope: global}\n"
    )
    suite = load_suite(write(tmp_path, text))
    (trial,) = suite.trials()
    assert (trial.spec.batch_size, trial.spec.devices) == (16, 2)
    with pytest.raises(SuiteError, match=r"ghost_batch_size=32 must divide batch size 16"):
        load_suite(write(tmp_path, text.replace("stats_scope: global", "stats_scope: device")))
