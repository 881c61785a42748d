"""The architecture docs/layout.md draws, checked on the source: each package imports only the layers below it,
no backend imports another backend or a recipe, nothing imports the command line, and the module graph has no
cycle. Read from the files' import statements (function-level imports included), so nothing is imported here."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "cnnbench"

# package -> the packages it may import (besides itself and the top-level cnnbench, whose __version__ it may read)
BELOW = {
    "core": set(),
    "models": {"core"},
    "data": {"core"},
    "engines": {"core"},
    "backends": {"core", "models", "data", "engines"},
    "recipes": {"core", "models", "data", "engines", "backends"},
    "tools": {"core", "models", "data", "engines", "backends", "recipes"},
}
# The engine table is data (records and the functions reading them; it imports only core.errors): the typed
# configuration reads it for its help text and its early validation, so the core may import that one module.
CORE_MAY_READ = {"cnnbench.engines.table"}


def _module_name(path: Path) -> str:
    return ".".join(("cnnbench", *path.relative_to(SRC).with_suffix("").parts)).removesuffix(".__init__")


def _module_files() -> set[str]:
    return {_module_name(path) for path in SRC.rglob("*.py")}


def _imports() -> dict[str, set[str]]:
    """module -> the cnnbench modules (or names in them) its import statements name."""
    graph: dict[str, set[str]] = {}
    for path in SRC.rglob("*.py"):
        name, found = _module_name(path), set()
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: resolve against this module's package
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
                if base.startswith("cnnbench"):
                    found |= {f"{base}.{a.name}" for a in node.names}  # _real() falls back to base for a name
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name.startswith("cnnbench")}
        graph[name] = found
    return graph


MODULES = _module_files()
GRAPH = _imports()


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "cnnbench"


def _real(target: str) -> str | None:
    """The module a named import resolves to (`from cnnbench.core import store` names cnnbench.core.store)."""
    while target and target not in MODULES:
        target = target.rpartition(".")[0]
    return target or None


def test_each_package_imports_only_the_layers_below_it():
    wrong = []
    for module, targets in GRAPH.items():
        layer = _package(module)
        if layer not in BELOW:
            continue
        for target in filter(None, map(_real, targets)):
            other = _package(target)
            if other in (layer, "cnnbench") or other in BELOW[layer]:
                continue
            if layer == "core" and target in CORE_MAY_READ:
                continue
            wrong.append(f"{module} -> {target}")
    assert wrong == []


def test_no_backend_imports_another_backend_or_a_recipe_and_nothing_imports_the_cli():
    wrong = []
    for module, targets in GRAPH.items():
        for target in filter(None, map(_real, targets)):
            if target == "cnnbench.cli" and module != "cnnbench.__main__":
                wrong.append(f"{module} -> {target}")
            parts = module.split(".")
            if parts[1:2] == ["backends"] and len(parts) > 2 and parts[2] in ("pytorch", "tensorflow"):
                other = target.split(".")
                if other[1:2] == ["backends"] and len(other) > 2 and other[2] in ("pytorch", "tensorflow") and other[2] != parts[2]:
                    wrong.append(f"{module} -> {target}")
                if other[1:2] == ["recipes"]:
                    wrong.append(f"{module} -> {target}")
    assert wrong == []


def test_the_module_graph_has_no_cycle():
    # `from cnnbench.core import store` counts as an edge to cnnbench.core.store, not to the package's __init__
    # (which Python runs too: the packages' __init__ files import nothing eagerly, so that edge is empty).
    edges = {m: {t for t in map(_real, targets) if t and t != m} for m, targets in GRAPH.items()}
    index, low, stack, on_stack, cycles, counter = {}, {}, [], set(), [], [0]

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in edges.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    assert cycles == []


@pytest.mark.parametrize("package", sorted(BELOW))
def test_every_layer_exists_and_has_a_docstring_saying_what_it_holds(package):
    init = SRC / package / "__init__.py"
    assert init.is_file()
    assert ast.get_docstring(ast.parse(init.read_text()))
