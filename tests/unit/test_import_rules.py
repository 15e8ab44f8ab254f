"""The layers keep to their rooms (STYLE.md, "Who may import whom"), read from the source tree.

Imports are collected with `ast`, lazy ones inside functions included: a lazy import still loads the
module it names (torch in the review app is torch, whenever it loads), and two modules that import each
other lazily are still a circle. Imports under `if TYPE_CHECKING:` are left out; they never run.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
PACKAGE = SRC / "cxrtriage"
MAX_LINES = 400


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(module: str, node: ast.ImportFrom, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(path: Path) -> set[str]:
    return _imports_of(path.read_text(), _module_name(path), path.name == "__init__.py")


def _imports_of(text: str, module: str, is_package: bool) -> set[str]:
    """Names that `module` imports; `from a import b` gives both a and a.b (b may be a module)."""
    tree = ast.parse(text)
    for node in ast.walk(tree):  # imports for type checkers only are never executed
        if isinstance(node, ast.If) and ast.unparse(node.test).endswith("TYPE_CHECKING"):
            node.body = []
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(module, node, is_package)
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)
    return found


def _sources() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "migrations" not in p.parts)


def _in(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _violations(where: str, forbidden: tuple[str, ...]) -> list[str]:
    return sorted(f"{_module_name(path)} imports {name}"
                  for path in _sources() if _in(_module_name(path), where)
                  for name in _imports(path)
                  if any(_in(name, f) for f in forbidden))


@pytest.mark.parametrize(("where", "forbidden"), [
    ("cxrtriage.web", ("torch", "torchvision", "cxrtriage.models")),  # the review app never runs the model
    ("cxrtriage.dicom", ("cxrtriage.db", "cxrtriage.worker", "cxrtriage.web", "cxrtriage.config",
                         "cxrtriage.cli", "celery", "sqlalchemy")),
    ("cxrtriage.models", ("cxrtriage.db", "cxrtriage.worker", "cxrtriage.web", "cxrtriage.config",
                          "cxrtriage.cli", "celery", "sqlalchemy")),
    ("cxrtriage.db", ("cxrtriage.dicom", "cxrtriage.models", "cxrtriage.worker", "cxrtriage.web",
                      "cxrtriage.cli", "celery", "torch")),
    ("cxrtriage.worker", ("cxrtriage.web", "cxrtriage.cli")),
])
def test_layer_imports_only_what_it_may(where: str, forbidden: tuple[str, ...]) -> None:
    assert _violations(where, forbidden) == []


def test_only_db_imports_the_orm_models() -> None:
    outside = sorted(f"{_module_name(p)}" for p in _sources()
                     if not _in(_module_name(p), "cxrtriage.db")
                     and "cxrtriage.db.models" in _imports(p))
    assert outside == []


def test_the_import_graph_has_no_circle() -> None:
    modules = {_module_name(p): p for p in _sources()}
    graph = {name: {m for m in _imports(path) if m in modules and m != name}
             for name, path in modules.items()}
    # A package's __init__ importing its own submodules is how packages re-export; not a circle.
    graph = {name: {m for m in deps if not _in(name, m) and not _in(m, name)} for name, deps in graph.items()}
    circles: list[list[str]] = []
    state: dict[str, int] = {}  # 1 on the current path, 2 finished

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for dep in sorted(graph[name]):
            if state.get(dep) == 1:
                circles.append(path[path.index(dep):] + [dep])
            elif dep not in state:
                visit(dep, path + [dep])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not circles, "; ".join(" -> ".join(c) for c in circles)


def test_modules_stay_small() -> None:
    large = {_module_name(p): n for p in _sources() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert large == {}


def test_the_collector_sees_lazy_and_relative_imports() -> None:
    """Without this, every rule above could pass by finding nothing."""
    text = ("from typing import TYPE_CHECKING\nfrom ..db import models\nimport numpy\n"
            "if TYPE_CHECKING:\n    import celery\ndef f():\n    import torch\n    from . import views\n")
    found = _imports_of(text, "cxrtriage.web.page", is_package=False)
    assert {"cxrtriage.db.models", "numpy", "torch", "cxrtriage.web.views"} <= found
    assert "celery" not in found
