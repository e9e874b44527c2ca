"""No module of ours imports, directly or through others, a module that imports it back.

Deferred imports inside functions count too: they hide a cycle from Python, not from a reader.
Imports under `if TYPE_CHECKING:` do not, as they never run.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"medgemma_models": ROOT / "models", "medgemma_convert": ROOT / "convert", "medgemma_desktop": ROOT / "desktop"}


def module_names(package: str) -> dict[str, Path]:
    folder = PACKAGES[package] / package
    names = {}
    for path in folder.rglob("*.py"):
        parts = list(path.relative_to(folder.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def imports_of(module: str, path: Path, known: set[str]) -> set[str]:
    """The modules of `known` that `module` imports at run time, anywhere in its body."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped = {id(node) for guard in ast.walk(tree) if isinstance(guard, ast.If) and _is_type_checking(guard.test)
               for node in ast.walk(guard)}
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}
    return {name for name in found if name in known and name != module}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph` as a path that starts and ends on the same module, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for following in sorted(graph[node]):
            if state.get(following) == 1:
                return path[path.index(following):] + [following]
            if following not in state and (cycle := visit(following)):
                return cycle
        state[node] = 2
        path.pop()
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_relative_imports_resolve_to_modules(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text("from . import sibling\nfrom .other import name\nfrom ..top import x\n"
                      "if TYPE_CHECKING:\n    from .hidden import T\ndef f():\n    from .late import y\n")
    known = {"p.q.sibling", "p.q.other", "p.top", "p.q.hidden", "p.q.late", "p.q"}
    assert imports_of("p.q.m", source, known) == {"p.q.sibling", "p.q.other", "p.top", "p.q.late", "p.q"}


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_no_import_cycles(package: str) -> None:
    modules = {name: path for p in PACKAGES for name, path in module_names(p).items()}
    graph = {name: imports_of(name, path, set(modules)) for name, path in modules.items() if name.startswith(package)}
    graph = {name: {m for m in targets if m.startswith(package)} for name, targets in graph.items()}
    # A package's __init__ is where its submodules find shared names: importing it is not a cycle
    # unless __init__ itself imports them back, which the edges from __init__ then show.
    cycle = find_cycle(graph)
    assert cycle is None, " -> ".join(cycle or [])
