"""The driver's preflight through the CLI: each refusal is exit status 2, one line on stderr
naming the problem and where, no traceback, nothing written on disk, and Ray never started.
`--dry-run` runs the same checks and prints what it found."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest
from torchvision.datasets import CIFAR10

from normbench.cli import main
from normbench.suite import ray_adapter

SUITE = """
version: 1
name: pre
dataset: {name: synthetic, image_size: 8, n_train: 40, n_test: 8, num_classes: 4}
backbones: [{name: resnet20, options: {width: 4}}]
variants: [bn]
batch_sizes: [8]
seeds: [0]
train: {epochs: 1, probe: false, device: cpu}
resources: {cpus: 1, gpus: 0}
"""


@pytest.fixture
def where(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder holding only the suite file, as the current directory; Ray must not start."""

    def no_ray(*args: object, **kwargs: object) -> None:
        raise AssertionError("Ray was started")

    monkeypatch.setattr(ray_adapter, "init_ray", no_ray)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "s.yaml").write_text(SUITE)
    return tmp_path


def refuse(where: Path, capsys: pytest.CaptureFixture, *argv: str, suite: str = SUITE) -> str:
    """Run the CLI, assert a clean refusal, return the message (without the prefix)."""
    (where / "s.yaml").write_text(suite)
    before = sorted(p.relative_to(where) for p in where.rglob("*"))
    with pytest.raises(SystemExit) as exit_:
        main(["run", "s.yaml", *argv])
    err = capsys.readouterr().err
    assert exit_.value.code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("normbench: error: "), err
    assert "Traceback" not in err
    assert sorted(p.relative_to(where) for p in where.rglob("*")) == before
    return lines[0].removeprefix("normbench: error: ")


def test_output_that_is_a_file(where: Path, capsys: pytest.CaptureFixture) -> None:
    (where / "taken").write_text("x")
    msg = refuse(where, capsys, "-o", "taken")
    assert msg == "output taken is a file, not a directory; choose another --output"


def test_output_inside_another_run(where: Path, capsys: pytest.CaptureFixture) -> None:
    (where / "old").mkdir()
    (where / "old" / "suite.resolved.json").write_text("{}")
    msg = refuse(where, capsys, "-o", "old/nested/run")
    assert msg.startswith("output old/nested/run is inside the run directory ")
    assert msg.endswith(f"{where / 'old'} of another run; choose an --output outside it")


def test_output_not_writable(where: Path, capsys: pytest.CaptureFixture) -> None:
    msg = refuse(where, capsys, "-o", "/proc/normbench-run")  # root cannot write there either
    assert msg.startswith("output /proc/normbench-run is not writable: cannot create a file in ")
    assert "choose another --output" in msg


def test_resources_no_node_has(where: Path, capsys: pytest.CaptureFixture) -> None:
    msg = refuse(where, capsys, "--set", "resources.cpus=64", "--set", "resources.gpus=1")
    assert msg.startswith(f"{where / 's.yaml'}: resources: each trial asks for 64 CPUs and 1 GPU")
    assert "so no trial could ever start" in msg and "--allow-autoscaling" in msg


def test_dry_run_refuses_the_same_and_prints_what_it_found(
    where: Path, capsys: pytest.CaptureFixture
) -> None:
    msg = refuse(where, capsys, "--dry-run", "--set", "resources.cpus=64")
    assert "each trial asks for 64 CPUs" in msg
    with pytest.raises(SystemExit) as exit_:
        main(["run", "s.yaml", "--dry-run"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "preflight:\n  output runs/pre: will be created\n" in out
    assert "resources: each trial asks for 1 CPU and 0 GPUs; fits on this machine" in out
    assert "data synthetic: 36 training images per epoch (generated (data_seed 0))" in out
    assert sorted(p.name for p in where.iterdir()) == ["s.yaml"]


def test_unreachable_address(where: Path, capsys: pytest.CaptureFixture) -> None:
    # A port bound but not listening refuses connections, and no other process (the test
    # beside this one, pytest -n 2) can take it meanwhile. On 127.0.0.2: Ray would rewrite
    # 127.0.0.1 to the node's address.
    with socket.socket() as held:
        held.bind(("127.0.0.2", 0))
        port = held.getsockname()[1]
        msg = refuse(where, capsys, "--address", f"127.0.0.2:{port}")
    assert msg == (
        f"--address 127.0.0.2:{port}: no Ray cluster answers at 127.0.0.2:{port} (Connection "
        "refused); start one with `ray start --head` or check the host and port"
    )


def test_ray_client_address_without_the_client_extra(
    where: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "grpc", None)  # as if ray[client] were not installed
    msg = refuse(where, capsys, "--address", "ray://127.0.0.1:10001")
    assert msg.startswith(
        "--address ray://127.0.0.1:10001: a ray:// address needs the Ray client, which is not "
        "installed; pip install 'ray[client]'"
    )


CIFAR_SUITE = SUITE.replace(
    "{name: synthetic, image_size: 8, n_train: 40, n_test: 8, num_classes: 4}",
    "{name: cifar10, root: data, download: DOWNLOAD}",
)


def test_data_missing_without_download(where: Path, capsys: pytest.CaptureFixture) -> None:
    (where / "data").mkdir()
    msg = refuse(where, capsys, suite=CIFAR_SUITE.replace("DOWNLOAD", "false"))
    root = where / "data"
    assert msg == (
        f"{where / 's.yaml'}: dataset: CIFAR10 data not found in {root}: "
        f"{root / 'cifar-10-batches-py'} missing; download: false, so no download was tried; "
        f"put cifar-10-python.tar.gz (or the extracted cifar-10-batches-py/ folder) in {root}, "
        "or set download: true when online"
    )


def test_data_missing_and_download_fails(
    where: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    def offline(self: CIFAR10) -> None:
        raise OSError("Network is unreachable")

    monkeypatch.setattr(CIFAR10, "download", offline)
    (where / "data").mkdir()
    msg = refuse(where, capsys, suite=CIFAR_SUITE.replace("DOWNLOAD", "true"))
    root = where / "data"
    assert msg == (
        f"{where / 's.yaml'}: dataset: CIFAR10 data not found in {root}: download was tried and "
        f"failed (OSError: Network is unreachable); put cifar-10-python.tar.gz (or the extracted "
        f"cifar-10-batches-py/ folder) in {root}"
    )


def test_batch_larger_than_the_training_set(where: Path, capsys: pytest.CaptureFixture) -> None:
    msg = refuse(where, capsys, "--set", "batch_sizes=[64]")
    assert msg == (
        f"{where / 's.yaml'}: batch_sizes: batch 64 is larger than the 36 training images of "
        "synthetic (after val_fraction 0.1 is held out); training drops the last incomplete "
        "batch, so no step would run: use a smaller batch or more data"
    )


def test_optimiser_batch_of_several_devices_larger_than_the_training_set(
    where: Path, capsys: pytest.CaptureFixture
) -> None:
    """3 devices x 16 = 48 images a step: more than the 36 training images, though 16 fit."""
    three = SUITE.replace("device: cpu}", "device: cpu, devices: 3, parallel: virtual}")
    msg = refuse(where, capsys, "--set", "batch_sizes=[16]", suite=three)
    assert msg.startswith(
        f"{where / 's.yaml'}: batch_sizes: the optimiser batch 48 (3 devices x 16) is larger "
        "than the 36 training images of synthetic"
    )


def test_resources_of_a_ddp_trial_are_per_device(
    where: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 2-device trial of 2 CPUs each needs 4 CPUs: refused on 2, naming the total."""
    monkeypatch.setattr(os, "cpu_count", lambda: 2)  # local Ray offers this machine's CPUs
    two = SUITE.replace("device: cpu}", "device: cpu, devices: 2}")
    msg = refuse(where, capsys, "--set", "resources.cpus=2", suite=two)
    assert msg.startswith(
        f"{where / 's.yaml'}: resources: each trial asks for 2 devices x (2 CPUs and 0 GPUs) = "
        "4 CPUs and 0 GPUs, but this machine has 2 CPUs and 0 GPUs, so no trial could ever start"
    ), msg
    assert "lower them (e.g. --set resources.cpus=1 --set train.devices=1)" in msg
    # already 1 CPU per device: only fewer devices would fit, and the hint says just that
    msg = refuse(where, capsys, "--set", "train.devices=4", suite=two)
    assert "lower them (e.g. --set train.devices=2)" in msg, msg
    with pytest.raises(SystemExit) as exit_:  # 1 CPU per device: 2 bundles fit on 2 CPUs
        main(["run", "s.yaml", "--dry-run"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "each trial asks for 2 devices x (1 CPU and 0 GPUs) = 2 CPUs and 0 GPUs; fits" in out


def test_storage_with_a_ddp_trial_is_refused(where: Path, capsys: pytest.CaptureFixture) -> None:
    two = SUITE.replace("device: cpu}", "device: cpu, devices: 2}")
    msg = refuse(where, capsys, "--storage", "s3://bucket/nb", suite=two)
    assert msg == (
        f"{where / 's.yaml'}: --storage s3://bucket/nb is not supported for trials with "
        "train.devices: 2 (the DDP ranks share checkpoints through the run directory); drop "
        "--storage and put --output on a folder every node reaches, or use train.parallel: "
        "virtual"
    )
