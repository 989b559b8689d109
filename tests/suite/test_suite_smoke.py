"""Every shipped suite (suites/*.yaml, so a new file is covered without editing this test) runs
through the CLI to a written report, on small data sets written in the real on-disk formats:
CIFAR-10/100 Python pickles (as `.tar.gz` archives and as extracted folders), an ImageFolder
tree, and flat content and style image folders with a stand-in `vgg_normalised.pth` (AdaIN's
encoder file: its keys and shapes, random tensors) given as `encoder_path`. Suites are shrunk
only with the flags a user has (`--set`, `--max-epochs`, `--limit-batches`, `--plugin`,
`--address`): one epoch of one batch, one seed, the suite's
first backbone and first two variants (BN and a layer compared with it where the suite
has BN), the suite's smallest batch size capped at 8 images (a multiple of a chosen
Ghost BN's ghost batch), every multi-device suite on virtual devices, and a search of two
samples; what each suite adds (its data set and format, its backbone, its layers' options
and per-layer recipes, devices, reference numbers, the search) still runs. The COCO suites
run on generated COCO 2017 files (tests/data/coco_files.py) with a CPU-size detector
(`--set task.options=...`) on one device. All runs share
the test session's Ray cluster (tests/suite/conftest.py, two 1-CPU nodes), joined with
`--address` as a user joins theirs, instead of paying Ray's start-up per suite.

The generated CIFAR files cannot match torchvision's md5 of the genuine files, so a small
plugin (`--plugin`, loaded by the driver and by every trial) puts their true md5s into
torchvision's lists: every file is still hashed and checked, as for users.

Also here, on the same cluster: a plugin layer that raises in training with `retries: 0`
keeps its exception type, message and traceback in trials.jsonl, `load_results` and the
report's "Did not finish" table.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from PIL import Image

pytestmark = pytest.mark.slow
ray = pytest.importorskip("ray")
from ray.cluster_utils import Cluster  # noqa: E402

from normbench.cli import main  # noqa: E402
from normbench.results import load_results  # noqa: E402
from normbench.tasks import TASKS  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))
from cifar_files import write_cifar10, write_cifar100  # noqa: E402
from coco_files import write_coco  # noqa: E402
from fourthings_files import (  # noqa: E402
    trust_plugin,
    write_caltech256,
    write_cub,
    write_flowers102,
    write_svhn,
)
from style_files import write_image_folder, write_vgg_normalised  # noqa: E402

SUITES = sorted((Path(__file__).resolve().parents[2] / "suites").glob("*.yaml"))
CIFAR = {"cifar10": ("cifar-10-batches-py", "cifar-10-python.tar.gz", "CIFAR10"),
         "cifar100": ("cifar-100-python", "cifar-100-python.tar.gz", "CIFAR100")}  # fmt: skip
SMOKE_BATCH = 8  # at most; a suite's smallest batch size when smaller
# what a suite adds to the shrink, with `--set` as a user would: sabn_nas's supernet (C 4,
# N 1), its retraining of each found cell, and alpha's split (the generated CIFAR-100 has
# about 2 images per class); sabn_gan's SNGAN sizes and metric sample, and the digits
# feature extractor (Inception's weights are not here); sabn_adversarial's backbone width
# (PGD-10 and PGD-20 through two branches: 62 passes per evaluated image)
SUITE_SHRINK = {
    "sabn_nas": {"task.options.retrain_epochs": "1", "dataset.val_fraction": "0.5",
                 "task.options.retrain_batch_size": str(SMOKE_BATCH),
                 "backbones": '[{name: nas201, options: {channels: 4, cells_per_stage: 1}}]'},
    "sabn_gan": {f"task.options.{k}": str(v) for k, v in {
        "g_width": 16, "d_width": 16, "latent_dim": 16, "g_batch_size": 8, "samples": 20,
        "isc_splits": 2, "feature_extractor": "normbench-digits"}.items()},
    "sabn_adversarial": {"backbones": "[{name: preact_resnet18, options: {width: 8}}]"},
}  # fmt: skip

TRUST_PLUGIN = '''"""Test plugin: md5s of the generated CIFAR files (the genuine ones differ)."""
from torchvision.datasets import CIFAR10, CIFAR100

MD5 = {md5!r}
for cls in (CIFAR10, CIFAR100):
    m = MD5[cls.__name__]
    cls.train_list = [[n, m[n]] for n, _ in cls.train_list]
    cls.test_list = [[n, m[n]] for n, _ in cls.test_list]
    cls.meta = {{**cls.meta, "md5": m[cls.meta["filename"]]}}
    cls.tgz_md5 = m["archive"]
'''


@dataclass
class DataFiles:
    src: Path  # src/<cifar folder>, src/<archive>, src/imagenet/{train,val}/<class>/*.png
    plugin: Path
    vgg: Path  # a stand-in for AdaIN's vgg_normalised.pth (its keys and shapes, random)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> DataFiles:
    src = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    md5: dict[str, dict[str, str]] = {}
    md5["CIFAR10"] = write_cifar10(src, rng, per_batch=20, n_test=10)[0]
    md5["CIFAR100"] = write_cifar100(src, rng, n_train=200, n_test=10)[0]
    for folder, archive, cls in CIFAR.values():
        with tarfile.open(src / archive, "w:gz") as tar:
            tar.add(src / folder, arcname=folder)
        md5[cls]["archive"] = _md5(src / archive)
    for split, n in (("train", 10), ("val", 2)):
        for c in range(6):
            (src / "imagenet" / split / f"n{c:08d}").mkdir(parents=True)
            for i in range(n):
                img = rng.integers(0, 256, size=(12, 12, 3), dtype=np.uint8)
                Image.fromarray(img).save(src / "imagenet" / split / f"n{c:08d}" / f"{i}.png")
    write_coco(src / "coco", rng)
    plugin = src / "trust_generated_cifar.py"
    plugin.write_text(TRUST_PLUGIN.format(md5=md5))
    return DataFiles(src, plugin, write_vgg_normalised(src / "vgg_normalised.pth"))


def _md5(path: Path) -> str:
    import hashlib

    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def times() -> Iterator[dict[str, float]]:
    """Wall time of each suite's run, printed after the module (seen with `pytest -s`)."""
    times: dict[str, float] = {}
    yield times
    if times:
        print("\nsuite smoke times: " + ", ".join(f"{k} {v:.1f} s" for k, v in times.items()))


def shrink_flags(suite: dict[str, Any], data: DataFiles, root: Path, index: int) -> list[str]:
    """The user's flags that make `suite` a smoke run on the generated data."""
    flags = ["--max-epochs", "1", "--limit-batches", "1", "--plugin", str(data.plugin)]
    variants = suite["variants"][:2]
    batch = min(min(suite["batch_sizes"]), SMOKE_BATCH)
    for v in variants:  # Ghost BN needs whole ghost batches
        ghost = v.get("options", {}).get("ghost_batch_size") if isinstance(v, dict) else None
        batch = math.lcm(batch, ghost or 1)
    sets = {
        "seeds": "1",
        "batch_sizes": json.dumps([batch]),
        "backbones": json.dumps(suite["backbones"][:1]),
        "variants": json.dumps(variants),
        "train.probe_batch_size": "8",  # the condensation probe still runs, on 8 images
        "resources.cpus": "1",
        "resources.gpus": "0",
        "train.parallel": "virtual",  # multi-device suites on one device, as a user would
    }
    for key in ("include", "exclude"):
        if key in suite:
            sets[key] = "[]"
    sets.update(SUITE_SHRINK.get(suite["name"], {}))
    if "search" in suite:
        sets["search.num_samples"] = "2"
        sets["search.grace_period"] = "1"
    name = suite["dataset"]["name"]
    if name in CIFAR:
        folder, archive, _ = CIFAR[name]
        # the archive (extracted once by the driver) and the extracted folder, by turns
        what = archive if index % 2 == 0 else folder
        root.mkdir(exist_ok=True)
        (shutil.copy if what == archive else shutil.copytree)(data.src / what, root / what)
        # relative, as users type it: resolved against the current directory (the test runs
        # in root's parent), not against each trial's Ray working directory
        sets["dataset.root"] = root.name
    elif name == "coco":  # the generated COCO 2017 files; a CPU-size detector on one device
        sets["dataset.root"] = str(data.src / "coco")
        sets["dataset.image_size"] = "48"
        sets["train.devices"] = "1"  # RoI heads cannot be split into virtual devices
        sets["task.options"] = "{layout: small, width: 16}"
        sets["batch_sizes"] = "[2]"
        sets["train.eval_batch_size"] = "4"
    elif name == "imagenet":
        sets["dataset.root"] = str(data.src / "imagenet")
        sets["dataset.image_size"] = "32"
        # 60 training images: 8 virtual devices x 2 fit (a batch is per device)
        sets["batch_sizes"] = "[2]"
    elif name == "style_folders":  # the suite's four folders, and the encoder's weight file
        rng = np.random.default_rng(index)
        for key, n in (("content_dir", 60), ("style_dir", 60), ("test_content_dir", 4),
                       ("test_style_dir", 4)):  # fmt: skip
            write_image_folder(root / suite["dataset"][key], n, rng)
        sets["dataset.root"] = str(root)
        sets["dataset.load_size"], sets["dataset.image_size"] = "24", "16"
        net = suite["backbones"][0]
        options = {**net.get("options", {}), "encoder_path": str(data.vgg)}
        sets["backbones"] = json.dumps([{**net, "options": options}])
    for k, v in sets.items():
        flags += ["--set", f"{k}={v}"]
    return flags


def run_cli(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    return int(exit_.value.code or 0)


def _jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def _turn(path: Path) -> int:
    """Which data format this suite gets: alternate among the suites of one data set."""
    name = yaml.safe_load(path.read_text())["dataset"]["name"]
    same = [p for p in SUITES if yaml.safe_load(p.read_text())["dataset"]["name"] == name]
    return same.index(path)


@pytest.mark.parametrize("path", SUITES, ids=[p.stem for p in SUITES])
def test_shipped_suite_reaches_its_report(
    path: Path,
    data: DataFiles,
    ray_cluster: Cluster,
    times: dict[str, float],
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    suite = yaml.safe_load(path.read_text())
    monkeypatch.chdir(tmp_path)
    flags = shrink_flags(suite, data, tmp_path / "data", _turn(path))
    out = tmp_path / "run"
    t0 = time.perf_counter()
    code = run_cli(["run", str(path), "-o", str(out), "--address", ray_cluster.address, *flags])
    times[path.stem] = time.perf_counter() - t0
    err = capsys.readouterr().err
    trials = _jsonl(out / "trials.jsonl") if (out / "trials.jsonl").exists() else []
    assert code == 0, (err, [t.get("reason") for t in trials])
    expected = {"completed", "pruned"} if "search" in suite else {"completed"}
    assert trials and {t["status"] for t in trials} <= expected, trials
    assert all(t["spec"]["epochs"] == 1 and t["spec"]["limit_batches"] == 1 for t in trials)
    board = (out / "report" / "leaderboard.md").read_text()
    for t in trials:
        assert t["cell"]["variant"] in board
    task = suite.get("task", "classification")  # the tables read the task's headline
    scoring = TASKS.get(task if isinstance(task, str) else task["name"]).obj.scoring
    assert f"| {scoring.metric(scoring.headline).label} (final) |" in board
    if suite["dataset"]["name"] in CIFAR:  # the driver extracted the archive, once
        folder = CIFAR[suite["dataset"]["name"]][0]
        assert (tmp_path / "data" / folder).is_dir()
        assert not [p for p in (tmp_path / "data").iterdir() if p.name.startswith(f".{folder}")]


def test_modern_norms_convnext_with_weight_standardization(
    data: DataFiles, ray_cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The smoke above takes a suite's first backbone and first two layers; the modern-norms
    twin's ConvNeXt and its GN+WS row (weight-standardized convs) go through `normbench run`
    here, with the same flags (one trial: the suite's cost in CI)."""
    path = SUITES[0].parent / "modern_norms_digits.yaml"
    suite = yaml.safe_load(path.read_text())
    rows = [v for v in suite["variants"] if isinstance(v, dict) and v.get("label") == "gn+ws"]
    convnext = [
        b for b in suite["backbones"] if isinstance(b, dict) and b["name"] == "convnext_atto"
    ]
    shrunk = {**suite, "backbones": convnext, "variants": rows}
    monkeypatch.chdir(tmp_path)
    flags = shrink_flags(shrunk, data, tmp_path / "data", 0)
    out = tmp_path / "run"
    code = run_cli(["run", str(path), "-o", str(out), "--address", ray_cluster.address, *flags])
    trials = _jsonl(out / "trials.jsonl")
    assert code == 0 and [t["status"] for t in trials] == ["completed"], trials
    spec = trials[0]["spec"]
    assert (trials[0]["cell"]["variant"], spec["variant"], spec["backbone"]) == (
        "gn+ws",
        "gn",
        "convnext_atto",
    )
    assert spec["backbone_options"] == {"patch_size": 1, "weight_standardization": True}
    assert "gn+ws" in (out / "report" / "leaderboard.md").read_text()


@pytest.fixture(scope="module")
def other_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(root, trust plugin): SVHN, Caltech-256, Flowers-102 and CUB files in one data root."""
    root = tmp_path_factory.mktemp("fourthings")
    rng = np.random.default_rng(1)
    svhn = write_svhn(root, rng, {"train": 30, "test": 6})
    write_caltech256(root, rng, per_class=[5, 5, 5])
    flowers = write_flowers102(root, rng, classes=3, per_split=2)
    write_cub(root, rng, classes=3, per_class=4)
    digests = {split: digest for split, (_, _, digest) in svhn.items()}
    return root, trust_plugin(root / "trust_generated.py", digests, flowers.md5)


FOURTHINGS_DATA = {  # the header's `--set dataset=...`, shrunk: small files, 32 px
    "svhn": "{name: svhn, val_fraction: 0.2}",
    "caltech256": "{name: caltech256, val_fraction: 0.2, image_size: 32, train_per_class: 3, "
    "test_per_class: 2}",
    "flowers102": "{name: flowers102, image_size: 32}",
    "cub200": "{name: cub200, val_fraction: 0.25, image_size: 32}",
}


@pytest.mark.parametrize("name", list(FOURTHINGS_DATA))
def test_fourthings_runs_on_the_papers_other_data_sets(
    name: str,
    other_data: tuple[Path, Path],
    ray_cluster: Cluster,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    """suites/fourthings.yaml on each data set its header names, as the header says (one
    `--set dataset=...`), shrunk with the user's flags to one BN trial of one batch."""
    root, plugin = other_data
    dataset = FOURTHINGS_DATA[name].replace("{", f"{{root: {root}, ", 1)
    sets = {"dataset": dataset, "seeds": "1", "batch_sizes": "[2]", "variants": "[bn]",
            "include": "[]", "train.probe_batch_size": "2", "resources.cpus": "1",
            "resources.gpus": "0"}  # fmt: skip
    flags = [f for k, v in sets.items() for f in ("--set", f"{k}={v}")]
    out = tmp_path / "run"
    suite = str(SUITES[0].parent / "fourthings.yaml")
    argv = ["run", suite, "-o", str(out), "--address", ray_cluster.address, "--plugin",
            str(plugin), "--max-epochs", "1", "--limit-batches", "1", *flags]  # fmt: skip
    code = run_cli(argv)
    err = capsys.readouterr().err
    trials = _jsonl(out / "trials.jsonl") if (out / "trials.jsonl").exists() else []
    assert code == 0, (err, [t.get("reason") for t in trials])
    assert [(t["status"], t["spec"]["dataset"]) for t in trials] == [("completed", name)]
    board = (out / "report" / "leaderboard.md").read_text()
    assert "| **bn** | 1 |" in board and f"cost_{name}_resnet18_b2" in board


BOOM = """
from torch import nn
from normbench import register_variant


@register_variant("boom_norm")
class BoomNorm(nn.BatchNorm2d):
    paper = "A layer that fails in training (normbench tests, none)"
    batch_dependent = True

    def __init__(self, num_features, *, eps=1e-5, momentum=0.1, device=None, dtype=None):
        super().__init__(num_features, eps=eps, momentum=momentum, device=device, dtype=dtype)

    def forward(self, x):
        # real feature maps only: the contract check and suite validation run 5x5 and 4x4 ones
        if self.training and x.shape[-1] > 5:
            raise ValueError(f"boom_norm cannot normalise {x.shape[1]} channels today")
        return super().forward(x)
"""

FAILING = """
version: 1
name: failing_layer
dataset: {name: synthetic, image_size: 16, n_train: 96, n_test: 16, num_classes: 4}
backbones: [{name: resnet20, options: {width: 4}}]
variants: [bn, boom_norm]
batch_sizes: [16]
seeds: [0]
train: {epochs: 1, lr: 0.05, schedule: constant, probe: false, device: cpu}
resources: {cpus: 1, gpus: 0}
plugins: [boom.py]
retries: 0
"""


def test_failing_layer_keeps_its_reason(
    ray_cluster: Cluster, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    (tmp_path / "boom.py").write_text(BOOM)
    (tmp_path / "s.yaml").write_text(FAILING)
    out = tmp_path / "run"
    address = ray_cluster.address
    code = run_cli(["run", str(tmp_path / "s.yaml"), "-o", str(out), "--address", address])
    assert code == 1  # a trial failed; the suite still finished and reported
    failed = [t for t in _jsonl(out / "trials.jsonl") if t["status"] == "failed"]
    assert len(failed) == 1 and failed[0]["cell"]["variant"] == "boom_norm"
    message = "boom_norm cannot normalise 4 channels today"
    reason = failed[0]["reason"]
    assert reason.startswith(f"ValueError: {message} [at boom.py:") and "in forward]" in reason
    error = failed[0]["error"]
    assert (error["type"], error["message"]) == ("ValueError", message)
    assert error["traceback"][-1] == f"ValueError: {message}"
    assert any("boom.py" in line for line in error["traceback"])
    df = load_results(out).set_index("variant")
    assert df.loc["boom_norm", "status"] == "failed"
    assert df.loc["boom_norm", "reason"] == reason
    board = (out / "report" / "leaderboard.md").read_text()
    assert "## Did not finish" in board
    assert message in board.split("## Did not finish")[1]
