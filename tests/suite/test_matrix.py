"""The trial matrix: product, exclude/include semantics, labels, ids, caps and search params."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from normbench.errors import SuiteError
from normbench.spec import Recipe, TrialSpec
from normbench.suite.checks import norm_widths
from normbench.suite.loader import load_suite
from normbench.suite.matrix import apply_params

GRID = """\
version: 1
name: grid
dataset: {name: digits, image_size: 8}
backbones: [resnet20, resnet32]
variants: [bn, {name: gn, options: {num_groups: 8}}]
batch_sizes: [32, 64]
seeds: 2
train: {epochs: 3}
"""


def write(tmp_path: Path, text: str, name: str = "suite.yaml") -> Path:
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def cells(suite) -> list[tuple]:
    return [
        (t.cell["backbone"], t.cell["variant"], t.cell["batch_size"], t.cell["seed"])
        for t in suite.trials()
    ]


FULL = list(itertools.product(["resnet20", "resnet32"], ["bn", "gn"], [32, 64], [0, 1]))


def test_product_in_nesting_order(tmp_path):
    suite = load_suite(write(tmp_path, GRID))
    assert cells(suite) == FULL
    assert len({t.trial_id for t in suite.trials()}) == 16


def test_exclude_removes_every_matching_cell(tmp_path):
    text = GRID + "exclude:\n  - {backbone: resnet32, variant: gn}\n  - {batch_size: 32, seed: 1}\n"
    suite = load_suite(write(tmp_path, text))
    expected = [
        c
        for c in FULL
        if not (c[0] == "resnet32" and c[1] == "gn") and not (c[2] == 32 and c[3] == 1)
    ]
    assert cells(suite) == expected
    assert len(expected) == 16 - 4 - 3  # 4 cells of the first rule, 4 - 1 overlap of the second


def test_include_takes_product_over_missing_axes(tmp_path):
    text = GRID + textwrap.dedent(
        """\
        exclude: [{variant: gn}]
        include:
          - {backbone: resnet56, variant: ubn}
          - backbone: resnet20
            variant: {name: gn, options: {num_groups: 8}}
            batch_size: 64
            seed: 0
        """
    )
    suite = load_suite(write(tmp_path, text))
    base = [c for c in FULL if c[1] == "bn"]
    extra = [("resnet56", "ubn", b, s) for b in (32, 64) for s in (0, 1)]
    assert cells(suite) == base + extra + [("resnet20", "gn", 64, 0)]


def test_exclude_matching_nothing_is_an_error(tmp_path):
    text = GRID + "exclude:\n  - {variant: ubn}\n"
    with pytest.raises(SuiteError) as info:
        load_suite(write(tmp_path, text))
    assert info.value.problems == [
        f"{tmp_path / 'suite.yaml'}:10: exclude[0]: this entry matches no cell of the grid"
    ]


def test_duplicate_cells_run_once(tmp_path):
    text = GRID + "include:\n  - {backbone: resnet20, variant: bn, batch_size: 32, seed: 0}\n"
    assert cells(load_suite(write(tmp_path, text))) == FULL


def test_labels_tell_same_variant_apart(tmp_path):
    text = GRID.replace(
        "variants: [bn, {name: gn, options: {num_groups: 8}}]",
        "variants: [gn, {name: gn, options: {num_groups: 8}}, "
        "{name: gn, options: {num_groups: 4}, label: gn4}]",
    )
    suite = load_suite(write(tmp_path, text))
    labels = sorted({t.cell["variant"] for t in suite.trials()})
    assert labels == ["gn", "gn(G=8)", "gn4"]
    assert {t.cell["variant_name"] for t in suite.trials()} == {"gn"}
    excl = load_suite(write(tmp_path, text + "exclude: [{variant: gn(G=8)}]\n", "b.yaml"))
    assert sorted({t.cell["variant"] for t in excl.trials()}) == ["gn", "gn4"]


def test_spec_fields_come_from_the_suite(tmp_path):
    text = GRID + textwrap.dedent(
        """\
        resources: {cpus: 2}
        """
    ).replace("train: {epochs: 3}", "")
    text = text.replace(
        "train: {epochs: 3}\n",
        "train: {epochs: 3, lr: 0.05, milestones: [2], gamma: 0.2, warmup_epochs: 1}\n",
    )
    spec = load_suite(write(tmp_path, text)).trials()[0].spec
    assert spec.recipe == Recipe(lr=0.05, milestones=(2,), gamma=0.2, warmup_epochs=1.0)
    assert (spec.variant, spec.backbone, spec.dataset, spec.epochs) == (
        "bn",
        "resnet20",
        "digits",
        3,
    )
    assert spec.dataset_options == {
        "root": None,
        "download": False,
        "image_size": 8,
        "val_fraction": 0.1,
        "split_seed": 0,
    }
    assert spec.num_threads == 2


def test_lr_reference_batch_scales_linearly(tmp_path):
    text = GRID.replace("train: {epochs: 3}", "train: {epochs: 3, lr: 0.1, lr_reference_batch: 64}")
    lrs = {
        t.cell["batch_size"]: t.spec.recipe.lr for t in load_suite(write(tmp_path, text)).trials()
    }
    assert lrs == {32: 0.05, 64: 0.1}


def test_caps_change_ids(tmp_path):
    path = write(tmp_path, GRID)
    full = load_suite(path).trials()
    capped = load_suite(path, max_epochs=1).trials()
    smoke = load_suite(path, limit_batches=2).trials()
    assert {t.spec.epochs for t in capped} == {1}
    assert {t.spec.limit_batches for t in smoke} == {2}
    ids = [{t.trial_id for t in ts} for ts in (full, capped, smoke)]
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])
    # a cap above the suite's epochs changes nothing
    assert [t.trial_id for t in load_suite(path, max_epochs=10).trials()] == [
        t.trial_id for t in full
    ]


def test_ids_differ_for_every_result_relevant_change(tmp_path):
    base = load_suite(write(tmp_path, GRID)).trials()[0]
    changes = [
        "train.lr=0.2",
        "train.weight_decay=0.001",
        "train.epochs=4",
        "train.label_smoothing=0.1",
        "dataset.image_size=12",
        "dataset.val_fraction=0.2",
        "dataset.augment={rotation: 10}",
        "variants.0.options.momentum=0.2",
        "backbones.0.options.width=8",
        "seeds=[5]",
        "batch_sizes=[16]",
        "train.placement=last-in-block",
        "train.probe=false",
    ]
    ids = {base.trial_id}
    for i, change in enumerate(changes):
        t = load_suite(write(tmp_path, GRID, f"s{i}.yaml"), overrides=[change]).trials()[0]
        assert t.trial_id not in ids, change
        ids.add(t.trial_id)
    # speed-only settings keep the id
    for change in ("train.device=cuda", "train.num_threads=4", "train.checkpoint_every=5"):
        gpus = ["resources.gpus=1"] if "cuda" in change else []  # a CUDA trial must ask for one
        overrides = [change, *gpus]
        t = load_suite(write(tmp_path, GRID, "x.yaml"), overrides=overrides).trials()[0]
        assert t.trial_id == base.trial_id, change


def test_ids_stable_across_processes(tmp_path):
    path = write(tmp_path, GRID)
    code = (
        "import json, sys; from normbench.suite.loader import load_suite; "
        "print(json.dumps([t.trial_id for t in load_suite(sys.argv[1]).trials()]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(path)],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "123", "PATH": "/usr/bin"},
    )
    assert json.loads(out.stdout) == [t.trial_id for t in load_suite(path).trials()]


def test_norm_widths_of_resnet20_and_resnet50():
    # He et al. 2016 CIFAR ResNet-20: stages of 16, 32, 64 channels.
    assert norm_widths("resnet20", (), False) == {16, 32, 64}
    # Bottleneck ResNet-50: mid widths 64..512 and outputs 4x those.
    assert norm_widths("resnet50", (), False) == {64, 128, 256, 512, 1024, 2048}


def test_apply_params_sets_dotted_paths():
    spec = TrialSpec(
        variant="ubn",
        backbone="resnet20",
        dataset="digits",
        epochs=2,
        variant_options={"alpha": 0.1},
    )
    out = apply_params(spec, {"variant_options.tau": 0.3, "recipe.lr": 0.01, "batch_size": 32})
    assert out.variant_options == {"alpha": 0.1, "tau": 0.3}
    assert out.recipe.lr == 0.01 and out.batch_size == 32
    assert spec.variant_options == {"alpha": 0.1}  # the base spec is untouched
    assert out.trial_id != spec.trial_id


def test_search_config_and_base_cells(tmp_path):
    text = GRID + textwrap.dedent(
        """\
        search:
          num_samples: 5
          scheduler: asha
          space:
            recipe.lr: {type: loguniform, low: 0.01, high: 0.5}
            variant_options.momentum: {type: categorical, choices: [0.05, 0.1]}
            recipe.warmup_epochs: {type: int, low: 0, high: 2}
        """
    )
    suite = load_suite(write(tmp_path, text))
    s = suite.search
    assert (s.metric, s.mode, s.num_samples, s.scheduler, s.storage) == (
        "val_top1",
        "max",
        5,
        "asha",
        None,
    )
    assert s.space["recipe.warmup_epochs"]["low"] == 0 and isinstance(
        s.space["recipe.warmup_epochs"]["high"], int
    )
    assert s.space["variant_options.momentum"]["choices"] == [0.05, 0.1]
    assert len(suite.trials()) == 16  # one search per grid cell
    resolved = json.loads(json.dumps(suite.to_json()))
    assert resolved["search"]["num_samples"] == 5 and len(resolved["trials"]) == 16


def test_excluding_everything_is_an_error(tmp_path):
    with pytest.raises(SuiteError, match="no trial"):
        load_suite(write(tmp_path, GRID + "exclude: [{seed: 0}, {seed: 1}]\n"))
