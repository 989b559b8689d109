"""normbench.contract: importable without torch, and the facts `--dry-run` needs come from the
data set's own registration (built-ins and plugins alike)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from normbench.cli import main
from normbench.contract import DatasetFacts, dataset_facts
from normbench.data import DATASETS

PLUGIN = """
from normbench.contract import DatasetFacts
from normbench.data import register_dataset
from normbench.data.synthetic import synthetic


@register_dataset("counted_set")
@DatasetFacts(train_images=500, channels=3, image_size=8)
def counted_set(**kwargs):
    return synthetic(**kwargs)
"""
PLUGIN_WITHOUT_FACTS = """
from normbench.data import register_dataset
from normbench.data.synthetic import synthetic


@register_dataset("uncounted_set")
def uncounted_set(**kwargs):
    return synthetic(**kwargs)
"""
SUITE = """
version: 1
name: facts
plugins: [plugin.py]
dataset: {name: DATASET, val_fraction: 0.2}
backbones: [resnet20]
variants: [bn, gn]
batch_sizes: [32]
seeds: [0]
train: {epochs: 3, device: cpu}
"""


def test_contract_imports_no_heavy_library() -> None:
    code = (
        "import sys, normbench.contract; "
        "print(sorted(m for m in ('torch', 'pandas', 'ray') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_facts_decorator_returns_the_factory_unchanged() -> None:
    def factory(**kwargs):
        return kwargs

    facts = DatasetFacts(train_images=10, channels=1, image_size=4)
    assert facts(factory) is factory and dataset_facts(factory) == facts
    assert dataset_facts(lambda: None) is None


def test_every_builtin_dataset_declares_its_facts() -> None:
    for entry in DATASETS.entries():
        if entry.source == "built-in":
            assert dataset_facts(entry.obj) is not None, entry.name


@pytest.mark.parametrize(
    ("dataset", "expected"),
    [
        # 3 epochs x 500 images x (1 - 0.2) validation carve x 2 trials
        ("counted_set", "estimated images: 2.4e+03 trained "),
        ("uncounted_set", "no cost estimate: data set 'uncounted_set' declares no image count"),
    ],
)
def test_dry_run_reads_the_image_count_from_the_registration(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], dataset: str, expected: str
) -> None:
    (tmp_path / "plugin.py").write_text(
        PLUGIN if dataset == "counted_set" else PLUGIN_WITHOUT_FACTS
    )
    suite = tmp_path / "facts.yaml"
    suite.write_text(SUITE.replace("DATASET", dataset))
    with pytest.raises(SystemExit) as info:
        main(["run", str(suite), "--dry-run", "--output", str(tmp_path / "run")])
    captured = capsys.readouterr()
    assert info.value.code == 0 and expected in captured.out, captured
