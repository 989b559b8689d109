"""Model building: the variant lands where the placement says."""

from __future__ import annotations

from normbench.engine.build import build_model
from normbench.spec import TrialSpec
from normbench.variants_api import VARIANTS


def _norm_types(model) -> dict[str, str]:
    classes = {VARIANTS.get(n).obj: n for n in ("bn", "bnet")}
    return {name: classes[type(m)] for name, m in model.named_modules() if type(m) in classes}


def test_last_in_block_puts_the_variant_only_in_each_blocks_last_norm() -> None:
    spec = TrialSpec(variant="bnet", backbone="resnet20", dataset="synthetic", epochs=1)
    everywhere = _norm_types(build_model(spec, num_classes=10, in_channels=3))
    assert set(everywhere.values()) == {"bnet"}
    last = _norm_types(
        build_model(spec.replace(placement="last-in-block"), num_classes=10, in_channels=3)
    )
    assert last.keys() == everywhere.keys()
    bnet = {name for name, kind in last.items() if kind == "bnet"}
    assert bnet and all(name.endswith("norm2") for name in bnet)  # BasicBlock's last norm
    assert all(kind == "bn" for name, kind in last.items() if name not in bnet)
