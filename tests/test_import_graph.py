"""The packages' import graph: no module-level cycles, and the arrows of the design.

Read from the source with `ast`, so it sees every module, including ones no test imports. Imports
inside functions and under `if TYPE_CHECKING:` are left out: they run later or never, which is how a
module reaches a heavy or a circular dependency on purpose.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"medgemma_models": ROOT / "models", "medgemma_desktop": ROOT / "desktop",
            "medgemma_convert": ROOT / "convert"}


def module_name(path: Path, source_root: Path) -> str:
    parts = list(path.relative_to(source_root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def top_level_imports(tree: ast.Module, name: str, is_package: bool) -> set[str]:
    """Modules this one imports when it is imported, as absolute names."""
    package = name if is_package else name.rpartition(".")[0]
    found: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        nodes = [node] if not isinstance(node, (ast.If, ast.Try)) else list(ast.walk(node))
        for item in nodes:
            if isinstance(item, ast.Import):
                found.update(alias.name for alias in item.names)
            elif isinstance(item, ast.ImportFrom):
                base = item.module or ""
                if item.level:
                    anchor = package.split(".")[: len(package.split(".")) - item.level + 1]
                    base = ".".join(anchor + ([item.module] if item.module else []))
                found.add(base)
                # `from . import x` imports the module `x`.
                found.update(f"{base}.{alias.name}" for alias in item.names)
    return found


def project_graph() -> dict[str, set[str]]:
    sources: dict[str, tuple[Path, bool]] = {}
    for package, root in PACKAGES.items():
        for path in (root / package).rglob("*.py"):
            sources[module_name(path, root)] = (path, path.name == "__init__.py")
    graph: dict[str, set[str]] = {}
    for name, (path, is_package) in sources.items():
        imported = top_level_imports(ast.parse(path.read_text(encoding="utf-8")), name, is_package)
        graph[name] = {m for m in imported if m in sources and m != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
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

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def importers_within_package(graph: dict[str, set[str]]) -> list[list[str]]:
    # A package's `__init__` re-exporting its modules is not a cycle with them.
    return cycles({name: {t for t in targets if not name.startswith(t + ".")} for name, targets in graph.items()})


def test_the_checker_sees_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    tree = ast.parse("from . import engine\nfrom .generation import run\nif TYPE_CHECKING:\n    from .x import y\n")
    assert top_level_imports(tree, "pkg.session", False) >= {"pkg.engine", "pkg.generation"}
    assert "pkg.x" not in top_level_imports(tree, "pkg.session", False)


def test_no_two_modules_import_each_other() -> None:
    graph = project_graph()
    assert len(graph) > 50  # the walk found the packages
    assert importers_within_package(graph) == []


def test_the_arrows_point_one_way() -> None:
    graph = project_graph()
    for name, targets in graph.items():
        if name.startswith("medgemma_models"):
            assert not {t for t in targets if not t.startswith("medgemma_models")}, name
        if name.startswith("medgemma_desktop"):
            assert not {t for t in targets if t.startswith("medgemma_convert")}, name
