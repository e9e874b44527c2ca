"""Tests, benchmarks and packaging scripts use the product's public names only.

A test that reads or patches `obj._name` pins an implementation detail: the product cannot be
changed without breaking it, and it may pass while the public behaviour is broken. Objects of
a test's own (`self._x` in its helpers) and private names of other libraries (the gguf-py
contract test, `sys._MEIPASS`) are fine; anything reached from a product object is not.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHECKED = (ROOT / "tests", ROOT / "packaging")
PRODUCT = ("medgemma_models", "medgemma_convert", "medgemma_desktop")
PATCHERS = {"setattr", "getattr", "delattr", "hasattr"}

def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _foreign_modules(tree: ast.Module) -> set[str]:
    """Names a file binds to modules that are not the product's (import sys, import gguf as g)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if not alias.name.startswith(PRODUCT):
                    names.add(alias.asname or alias.name.split(".")[0])
        elif isinstance(node, ast.ImportFrom) and node.module and not node.module.startswith(PRODUCT) and node.level == 0:
            names.update(alias.asname or alias.name for alias in node.names)
    return names


def _root(node: ast.expr) -> str | None:
    while isinstance(node, (ast.Attribute, ast.Call, ast.Subscript)):
        node = node.func if isinstance(node, ast.Call) else node.value
    return node.id if isinstance(node, ast.Name) else None


def private_uses(source: str) -> list[str]:
    """'line: expression' of each private member reached from anything but the file's own objects or other libraries."""
    tree = ast.parse(source)
    foreign = _foreign_modules(tree) | {"self", "cls"}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _is_private(node.attr) and _root(node.value) not in foreign:
            found.append(f"{node.lineno}: {ast.unparse(node)}")
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith(PRODUCT):
            found += [f"{node.lineno}: from {node.module} import {a.name}" for a in node.names if _is_private(a.name)]
        elif isinstance(node, ast.Call):
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", None)
            strings = [a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
            target, attr = (node.args + [None, None])[:2]
            if (name in PATCHERS and isinstance(attr, ast.Constant) and isinstance(attr.value, str)
                    and _is_private(attr.value) and target is not None and _root(target) not in foreign):
                found.append(f"{node.lineno}: {ast.unparse(node)}")  # monkeypatch.setattr(obj, "_name", …)
            elif any(s.startswith(PRODUCT) and any(_is_private(p) for p in s.split(".")) for s in strings):
                found.append(f"{node.lineno}: {ast.unparse(node)}")  # monkeypatch.setattr("pkg.mod._name", …)
    return sorted(found, key=lambda use: int(use.split(":")[0]))


def test_the_check_finds_what_it_is_for() -> None:
    source = """
import sys
import gguf
from medgemma_desktop.library import ModelLibrary, _entries

def test(window, monkeypatch):
    window.session._stream.stop()
    ModelLibrary._entries
    monkeypatch.setattr(window, "_start_load", None)
    monkeypatch.setattr("medgemma_convert.quantize._slab_rows", 4)
    sys._MEIPASS, gguf.GGUFReader._get_field_parts
"""
    assert [use.split(":")[0] for use in private_uses(source)] == ["4", "7", "8", "9", "10"]


def test_no_test_benchmark_or_script_touches_a_private_member_of_the_product() -> None:
    found = []
    for folder in CHECKED:
        for path in sorted(folder.rglob("*.py")):
            name = str(path.relative_to(ROOT))
            found += [f"{name}:{use}" for use in private_uses(path.read_text(encoding="utf-8"))]
    assert found == [], "use a public name (add one to the product if a test needs it):\n" + "\n".join(found)


def library_private_imports(source: str) -> list[str]:
    """'line: import' of each private module of llama-cpp-python or gguf-py a file imports."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        else:
            continue
        for module in modules:
            parts = module.split(".")
            if parts[0] in ("llama_cpp", "gguf") and any(_is_private(p) for p in parts[1:]):
                found.append(f"{node.lineno}: {module}")
    return found


def test_the_libraries_private_modules_are_imported_only_in_the_compat_modules() -> None:
    # An upgrade that moves a private module then breaks one file, whose contract test says so.
    offenders = []
    for folder in (ROOT / "models", ROOT / "convert", ROOT / "desktop"):
        for path in folder.rglob("*.py"):
            if path.name.endswith("_compat.py"):
                continue
            offenders += [f"{path.relative_to(ROOT)}:{use}" for use in library_private_imports(path.read_text("utf-8"))]
    assert library_private_imports("from llama_cpp._ggml import libggml\nfrom llama_cpp import _logger\n")
    assert offenders == []
