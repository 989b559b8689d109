"""The README's plugin example, copied as a user copies it, passes every check of the
conformance kit the README points to (none skipped)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _readme_file(first_line: str) -> str:
    """The README code block that starts with `first_line` (the file's name as a comment)."""
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    (block,) = [b for b in blocks if b.startswith(first_line + "\n")]
    return block


def test_the_readme_plugin_passes_the_conformance_kit(tmp_path: Path) -> None:
    (tmp_path / "my_norm.py").write_text(_readme_file("# my_norm.py"))
    (tmp_path / "test_my_norm.py").write_text(_readme_file("# test_my_norm.py, run with pytest"))
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_my_norm.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:]
    passed = re.search(r"(\d+) passed", done.stdout)
    assert passed and int(passed.group(1)) >= 20 and "skipped" not in done.stdout, done.stdout
