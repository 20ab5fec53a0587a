"""The layout is the architecture: stage packages whose imports point one way. Read from the
source with `ast`, so a cycle hidden in a function-level import counts too (imports under
`if TYPE_CHECKING:` do not run and do not count)."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import ROOT

PACKAGES = ("gateway", "webui")
# The HTTP layer: the JSON API, the pages, the wiring and the command line.
HTTP_LAYER = ("gateway.api", "webui", "gateway.app", "gateway.cli", "gateway.__main__")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            if "migrations" not in path.parts:
                found[module_name(path)] = path
    return found


def _type_checking(node: ast.If) -> bool:
    return isinstance(node.test, ast.Name | ast.Attribute) and "TYPE_CHECKING" in ast.unparse(
        node.test
    )


def _imports(tree: ast.AST) -> list[str]:
    names: list[str] = []
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and _type_checking(node):
            continue
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names += [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
        names += _imports(node)
    return names


def import_graph() -> dict[str, set[str]]:
    known = modules()
    graph: dict[str, set[str]] = {}
    for name, path in known.items():
        targets = set()
        for imported in _imports(ast.parse(path.read_text())):
            # `from gateway.api import exchanges` names a module; `from x import func` names
            # its module: take the longest known module the name starts with.
            while imported and imported not in known:
                imported = imported.rpartition(".")[0]
            if imported and imported != name and "." in imported + name:
                targets.add(imported)
        graph[name] = {t for t in targets if known[t].name != "__init__.py" or t == name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components with more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycles() -> None:
    assert cycles(import_graph()) == []


def test_nothing_below_the_http_layer_imports_from_it() -> None:
    def http(name: str) -> bool:
        return any(name == top or name.startswith(top + ".") for top in HTTP_LAYER)

    wrong = {
        (name, target)
        for name, targets in import_graph().items()
        if not http(name)
        for target in targets
        if http(target)
    }
    assert wrong == set()


def test_the_checks_see_a_cycle_and_an_upward_import() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    graph = import_graph()
    assert "gateway.store.exchanges" in graph["gateway.writer.recorder"]
    assert "gateway.api.exchanges" in graph["webui.exchange_pages"]


def test_each_stage_is_a_package() -> None:
    flat = sorted(p.name for p in (ROOT / "gateway").glob("*.py"))
    assert flat == [
        "__init__.py",
        "__main__.py",
        "app.py",
        "cli.py",
        "errors.py",
        "lifecycle.py",
        "settings.py",
    ]
