"""The README's `pip install .` (a wheel, not editable) works from anywhere, the checkout too.

Run from the repository root, Python imports the checkout's `normbench/` before the installed
one, and the checkout has no `normbench/variants/` (the installer maps the top-level `variants/`
in). The test builds a wheel from a copy of the sources, installs it without dependencies into a
fresh virtual environment that sees this environment's packages through a `.pth` file (seconds,
not a torch install), and runs the commands from the checkout and from elsewhere.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
from pathlib import Path

import pytest

import normbench

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _run(argv: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, f"{argv} in {cwd} failed:\n{out.stdout}\n{out.stderr}"
    return out


def _fresh_venv(path: Path) -> Path:
    """A venv without pip whose `.pth` lists this interpreter's site-packages folders."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
    python = path / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    shared = [p for p in sys.path if p.endswith("site-packages") and Path(p).is_dir()]
    shared.append(sysconfig.get_paths()["purelib"])
    (Path(purelib) / "_shared_deps.pth").write_text("\n".join(dict.fromkeys(shared)) + "\n")
    return python


def _recent_setuptools() -> str | None:
    """The folder holding the newest setuptools >= 77 (the build requirement) this environment has,
    if any."""
    found = [
        (int(d.version.split(".")[0]), str(d.locate_file("")))
        for d in importlib.metadata.distributions(name="setuptools")
    ]
    return max(found)[1] if found and max(found)[0] >= 77 else None


def _build_wheel(python: Path, src: Path, dist: Path, env: dict[str, str]) -> Path:
    """`pip wheel`, without build isolation (no download) when a recent setuptools is at hand."""
    pip = [str(python), "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist)]
    setuptools_dir = _recent_setuptools()
    if setuptools_dir is not None:
        pip.append("--no-build-isolation")
        env = {**env, "PYTHONPATH": setuptools_dir}
    _run([*pip, str(src)], cwd=src, env=env)
    (wheel,) = dist.glob("normbench-*.whl")
    return wheel


def _sources(src: Path) -> Path:
    """A copy of what a build reads (no .git)."""
    src.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for name in ("normbench", "variants"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    return src


def _git(src: Path, *args: str) -> str:
    who = ["-c", "user.name=normbench test", "-c", "user.email=test@normbench.invalid"]
    out = subprocess.run(["git", "-C", str(src), *who, *args], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


COMMIT = "from normbench.suite.runner import environment; print(environment()['git_commit'])"


def test_wheel_install_works_from_the_checkout_and_elsewhere(tmp_path: Path) -> None:
    """... and records the commit it was built from (a fresh clone's, as .ci/run builds: no
    tags), which the run directory's environment.json takes, though no checkout is near it."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    src = _sources(tmp_path / "src")
    _git(src, "init", "-q")
    _git(src, "add", "-A")
    _git(src, "commit", "-q", "-m", "the sources")
    python = _fresh_venv(tmp_path / "venv")
    wheel = _build_wheel(python, src, tmp_path / "dist", env)
    pip_install = [str(python), "-m", "pip", "install", "--no-deps", "-q", str(wheel)]
    _run(pip_install, cwd=tmp_path, env=env)
    recorded = _run([str(python), "-c", COMMIT], cwd=tmp_path, env=env).stdout.strip()
    assert recorded == _git(src, "rev-parse", "HEAD")

    listed = _run([str(python), "-m", "normbench", "variants", "--json"], cwd=ROOT, env=env)
    assert {"bn", "ubn", "fourthings"} <= {info["name"] for info in json.loads(listed.stdout)}
    for cwd in (ROOT, tmp_path):
        version = _run([str(tmp_path / "venv/bin/normbench"), "--version"], cwd=cwd, env=env)
        assert version.stdout.strip() == f"normbench {normbench.__version__}"
    # from elsewhere, the installed copy is the one imported, with its variants inside it
    where = "import importlib.util as u; print(u.find_spec('normbench.variants').origin)"
    installed = _run([str(python), "-c", where], cwd=tmp_path, env=env).stdout.strip()
    assert Path(installed).is_relative_to(tmp_path / "venv")


def test_a_build_outside_a_checkout_records_an_unknown_commit(tmp_path: Path) -> None:
    """An sdist or a tarball has no .git: the wheel says "unknown" (and why), not a guess."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    src = _sources(tmp_path / "src")
    wheel = _build_wheel(Path(sys.executable), src, tmp_path / "dist", env)
    read = f"import sys; sys.path.insert(0, {str(wheel)!r}); {COMMIT}"  # a wheel is importable
    recorded = _run([sys.executable, "-c", read], cwd=tmp_path, env=env).stdout.strip()
    assert recorded == "unknown (built outside a git checkout)"


def test_a_wheel_built_from_an_sdist_records_the_sdists_commit(tmp_path: Path) -> None:
    """`python -m build` makes the sdist in the checkout, then the wheel from the unpacked
    sdist (no .git there): the sdist carries the stamp, and the wheel keeps it."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    src = _sources(tmp_path / "src")
    _git(src, "init", "-q")
    _git(src, "add", "-A")
    _git(src, "commit", "-q", "-m", "the sources")
    setuptools_dir = _recent_setuptools()
    if setuptools_dir is None:
        pytest.skip("no setuptools >= 77 here to build without a download")
    make = "from setuptools import build_meta as b; print(b.build_sdist(sys.argv[1]))"
    made = _run(
        [sys.executable, "-c", f"import sys; {make}", str(tmp_path / "sdist")],
        cwd=src, env={**env, "PYTHONPATH": setuptools_dir},
    ).stdout.strip().splitlines()[-1]  # fmt: skip
    with tarfile.open(tmp_path / "sdist" / made) as archive:
        archive.extractall(tmp_path / "unpacked", filter="data")
    (unpacked,) = (tmp_path / "unpacked").iterdir()
    wheel = _build_wheel(Path(sys.executable), unpacked, tmp_path / "dist", env)
    read = f"import sys; sys.path.insert(0, {str(wheel)!r}); {COMMIT}"
    recorded = _run([sys.executable, "-c", read], cwd=tmp_path, env=env).stdout.strip()
    assert recorded == _git(src, "rev-parse", "HEAD")
