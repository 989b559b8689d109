"""The layering of ARCHITECTURE.md holds: import-linter checks the contracts in pyproject.toml
(imports inside functions and under TYPE_CHECKING count); no two files import each other in a
circle; the layers (`variants/`, installed as `normbench.variants`) import nothing of normbench
but themselves."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from pathlib import Path

import grimp
from importlinter.cli import lint_imports

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_hold(capsys) -> None:
    code = lint_imports(str(ROOT / "pyproject.toml"), no_cache=True, no_logo=True)
    assert code == 0, capsys.readouterr().out[-4000:]


def test_architecture_md_states_the_checked_layers() -> None:
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    (layers,) = [c["layers"] for c in contracts["contracts"] if c["type"] == "layers"]
    text = (ROOT / "ARCHITECTURE.md").read_text()
    block = re.search(r"```text\n# layers[^\n]*\n(.*?)```", text, re.S)
    assert block is not None, "ARCHITECTURE.md has no ```text # layers block"
    assert [line.strip() for line in block.group(1).splitlines() if line.strip()] == layers


def _cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def imported(module: str):
        return iter(sorted(graph.find_modules_directly_imported_by(module)))

    for root in sorted(graph.modules):
        if root in index:
            continue
        work = [(root, imported(root))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append(
                        (child, iter(sorted(graph.find_modules_directly_imported_by(child))))
                    )
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_no_import_circle_between_files() -> None:
    """Between any files, packages' __init__ included (import-linter's acyclic_siblings
    contract squashes packages, so a child importing its own package's __init__ is not seen
    there)."""
    graph = grimp.build_graph("normbench", cache_dir=None)
    assert _cycles(graph) == []


def test_a_circle_through_a_function_level_import_is_found(tmp_path, monkeypatch) -> None:
    """The checks see imports inside functions (the ones most likely to run back up)."""
    pkg = tmp_path / "circlepkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "low.py").write_text("def f():\n    from circlepkg import high\n    return high\n")
    (pkg / "high.py").write_text("from circlepkg import low\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    graph = grimp.build_graph("circlepkg", cache_dir=None)
    assert _cycles(graph) == [["circlepkg.high", "circlepkg.low"]]
    sys.modules.pop("circlepkg", None)


def test_the_layers_import_nothing_of_normbench() -> None:
    """variants/ is installed as normbench.variants but lies outside normbench/, where
    import-linter does not look: every import statement (module level or not) is read here."""
    bad = []
    for path in sorted((ROOT / "variants").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            bad += [
                f"{path.name}:{node.lineno} imports {name}"
                for name in names
                if name.split(".")[0] == "normbench" and not name.startswith("normbench.variants")
            ]
    assert bad == []
