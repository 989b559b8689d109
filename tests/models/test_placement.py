"""Each variant's official placement: IEBN keeps BN in the shortcut projections (its official
CIFAR ResNet does), by default and switchable; other variants go everywhere."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from normbench.engine.build import build_model
from normbench.spec import TrialSpec
from normbench.suite.loader import load_suite
from normbench.variants_api import VARIANTS

SUITE = """
version: 1
name: placement
dataset: {name: synthetic}
backbones: [{name: resnet20, options: {shortcut: B, width: 4}}]
variants: [iebn, bn, {name: iebn, label: iebn_all, placement: everywhere}]
batch_sizes: [8]
train: {epochs: 1}
"""


def _norms(model: nn.Module) -> dict[str, type]:
    iebn, bn = VARIANTS.get("iebn").obj, VARIANTS.get("bn").obj
    return {n: type(m) for n, m in model.named_modules() if type(m) in (iebn, bn)}


def _build(placement: str) -> dict[str, type]:
    spec = TrialSpec(
        variant="iebn", backbone="resnet20", dataset="synthetic", epochs=1,
        backbone_options={"shortcut": "B", "width": 4}, placement=placement,
    )  # fmt: skip
    return _norms(build_model(spec, num_classes=10, in_channels=3))


def test_except_shortcut_keeps_bn_in_projections_only() -> None:
    iebn, bn = VARIANTS.get("iebn").obj, VARIANTS.get("bn").obj
    norms = _build("except-shortcut")
    shortcut = {n for n in norms if ".shortcut." in n}
    assert shortcut == {"layer2.0.shortcut.1", "layer3.0.shortcut.1"}  # the two projections
    assert {norms[n] for n in shortcut} == {bn}
    others = {norms[n] for n in norms if n not in shortcut}
    assert others == {iebn} and len(norms) == 1 + 2 * 9 + 2  # stem, 9 blocks x 2, projections
    assert set(_build("everywhere").values()) == {iebn}


def test_suites_default_to_the_official_placement(tmp_path: Path) -> None:
    (tmp_path / "s.yaml").write_text(SUITE)
    got = {t.cell["variant"]: t.spec.placement for t in load_suite(tmp_path / "s.yaml").trials()}
    assert got == {"iebn": "except-shortcut", "bn": "everywhere", "iebn_all": "everywhere"}
    forced = load_suite(tmp_path / "s.yaml", overrides=["train.placement=everywhere"]).trials()
    assert {t.spec.placement for t in forced} == {"everywhere"}
