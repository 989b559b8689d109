"""Per-variant weight-decay settings: cell groups of one suite with their own decay."""

from __future__ import annotations

from pathlib import Path

import pytest

from normbench.errors import SuiteError
from normbench.suite.loader import load_suite

SUITE = """\
version: 1
name: groups
dataset: {name: digits, image_size: 8}
backbones: [resnet20]
variants:
  - bn
  - {name: bn, label: bn_to_1, recipe: {norm_decay_toward: identity, norm_weight_decay: 1.0e-3}}
batch_sizes: [16]
train: {epochs: 1, weight_decay: 5.0e-4}
"""


def _load(tmp_path: Path, text: str):  # type: ignore[no-untyped-def]
    path = tmp_path / "groups.yaml"
    path.write_text(text)
    return load_suite(path)


def test_a_variant_entry_overrides_the_decay_keys_of_its_cells(tmp_path: Path) -> None:
    trials = {t.cell["variant"]: t.spec for t in _load(tmp_path, SUITE).trials()}
    plain, group = trials["bn"].recipe, trials["bn_to_1"].recipe
    assert (plain.norm_decay_toward, plain.norm_weight_decay) == ("zero", None)
    assert (group.norm_decay_toward, group.norm_weight_decay) == ("identity", 1e-3)
    assert group.weight_decay == plain.weight_decay == 5e-4  # unset keys keep train:
    assert trials["bn"].trial_id != trials["bn_to_1"].trial_id


def test_a_variant_entry_refuses_other_recipe_keys(tmp_path: Path) -> None:
    with pytest.raises(SuiteError) as err:
        _load(tmp_path, SUITE.replace("norm_weight_decay: 1.0e-3", "lr: 0.3"))
    want = "variants[1].recipe.lr: unknown key 'lr'; allowed keys: bias_weight_decay"
    assert want in str(err.value)
