"""The one build hook: a wheel records the git commit it was built from.

Everything else about the package is in pyproject.toml. A plain `pip install .` puts normbench
where no git checkout is, so the commit is written at build time into the generated module
`normbench/_source_commit.py` (normbench.provenance reads it; an editable install reads the live
checkout instead, and gets no stamp). An sdist made in a checkout carries that stamp, and a wheel
built from it keeps it; a build outside any checkout (a tarball of the sources) stamps None.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.sdist import sdist

HERE = Path(__file__).resolve().parent


def _provenance():
    """normbench/provenance.py loaded by path: the package's dependencies are not installed."""
    spec = importlib.util.spec_from_file_location("_provenance", HERE / "normbench/provenance.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class BuildPyWithCommit(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install reports the checkout's live HEAD
        provenance = _provenance()
        shipped = HERE / "normbench" / f"{provenance.STAMP}.py"
        if shipped.is_file() and provenance.checkout_commit(HERE) is None:
            return  # an unpacked sdist: its stamp (copied above) names the commit it came from
        target = Path(self.build_lib) / "normbench" / f"{provenance.STAMP}.py"
        target.write_text(provenance.stamp_text(HERE))


class SdistWithCommit(sdist):
    """An sdist carries the stamp of the checkout it was made from, so a wheel built from it
    (`python -m build` builds the wheel from the sdist) records that commit too."""

    def make_release_tree(self, base_dir: str, files: list[str]) -> None:
        super().make_release_tree(base_dir, files)
        provenance = _provenance()
        target = Path(base_dir) / "normbench" / f"{provenance.STAMP}.py"
        target.write_text(provenance.stamp_text(HERE))


setup(cmdclass={"build_py": BuildPyWithCommit, "sdist": SdistWithCommit})
