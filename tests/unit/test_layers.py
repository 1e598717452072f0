"""The package's imports keep DESIGN.md's layers: no two modules import each other (through any chain), and no
layer imports one above it. Read from the source with ``ast``; an import inside a function counts (it is the same
tie, made later); only imports under ``if TYPE_CHECKING:`` are exempt.

.venv/bin/python -m pytest tests/unit/test_layers.py -q
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2] / "tunery"

LAYERS = ("data", "models", "serving", "evaluation", "tuning", "jobs", "sdk", "api", "demo", "cli")
"""DESIGN.md's layers, lowest first. Modules directly under ``tunery/`` (``settings``, ``errors``, ``hardware``,
``lifeline``, ...) and the package itself are below them all; ``tunery.__main__`` is above them all."""


def modules(root: Path) -> dict[str, Path]:
    """Every module under ``root`` (a package directory) by dotted name; a package by its own name."""
    found = {}
    for path in root.rglob("*.py"):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _type_checking(test: ast.expr) -> bool:
    """Whether an ``if`` tests ``TYPE_CHECKING`` (or ``typing.TYPE_CHECKING``)."""
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING" and ast.unparse(test.value) == "typing"
    )


def _imports(body: list[ast.stmt]) -> Iterator[ast.Import | ast.ImportFrom]:
    """The import statements in ``body`` and in every block inside it (functions, classes, ``if``, ``try``,
    ``with``, ``match``, ...) but the body of an ``if TYPE_CHECKING:``. Statements only: imports are never in an
    expression, and skipping expressions keeps the walk fast."""
    for statement in body:
        if isinstance(statement, ast.Import | ast.ImportFrom):
            yield statement
        elif isinstance(statement, ast.If) and _type_checking(statement.test):
            yield from _imports(statement.orelse)
        else:
            for field in ("body", "orelse", "finalbody"):
                yield from _imports(getattr(statement, field, []))
            for inner in [*getattr(statement, "handlers", []), *getattr(statement, "cases", [])]:
                yield from _imports(inner.body)


def _imported(node: ast.Import | ast.ImportFrom, package: str, known: dict[str, Path]) -> list[str]:
    """The dotted names ``node`` imports: ``from pkg import name`` is ``pkg.name`` where that is a module, else
    ``pkg``."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.level:
        parts = package.split(".")
        base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
    else:
        base = node.module or ""
    return [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]


def _owner(name: str, known: dict[str, Path]) -> str | None:
    """The module that ``name`` (a module, or a name inside one) lives in, if it is one of ours."""
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


@functools.cache
def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """Module → the modules of the package that it imports, anywhere in it but under ``if TYPE_CHECKING:``."""
    known = modules(root)
    graph: dict[str, set[str]] = {name: set() for name in known}
    for name, path in known.items():
        tree = ast.parse(path.read_bytes(), str(path))
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in _imports(tree.body):
            for imported in _imported(node, package, known):
                owner = _owner(imported, known)
                if owner is not None and owner != name:
                    graph[name].add(owner)
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The groups of modules that import each other through some chain (strongly connected, more than one)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(module: str) -> None:  # Tarjan's algorithm
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for imported in sorted(graph[module]):
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in on_stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == module:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return sorted(found)


def layer(module: str) -> int:
    """``module``'s place in ``LAYERS``: -1 below them all (the modules directly under ``tunery/`` and the package
    itself, which holds ``__version__`` and names it exports lazily); ``len(LAYERS)`` for ``tunery.__main__``."""
    parts = module.split(".")
    if parts[1:2] == ["__main__"]:
        return len(LAYERS)
    return LAYERS.index(parts[1]) if parts[1:2] and parts[1] in LAYERS else -1


def upward(graph: dict[str, set[str]]) -> list[str]:
    """Each import of a module from a higher layer, as ``importer -> imported``."""
    return [f"{a} -> {b}" for a in sorted(graph) for b in sorted(graph[a]) if layer(b) > layer(a)]


def _described(group: list[str], graph: dict[str, set[str]]) -> str:
    members = set(group)
    return "; ".join(f"{m} -> {', '.join(sorted(graph[m] & members))}" for m in group)


def test_no_two_modules_import_each_other():
    graph = import_graph()
    found = circles(graph)
    assert not found, "import circles (each: its modules and their imports of each other):\n" + "\n".join(
        f"{len(group)} modules: {_described(group, graph)}" for group in found
    )


def test_no_layer_imports_one_above_it():
    found = upward(import_graph())
    assert not found, f"imports against the layer order {' < '.join(LAYERS)}:\n" + "\n".join(found)


def test_the_checks_find_a_circle_through_a_function_and_an_import_upward(tmp_path):
    package = tmp_path / "tunery"
    for folder in ("", "data", "serving", "jobs"):
        (package / folder).mkdir(exist_ok=True)
        (package / folder / "__init__.py").write_text("")
    (package / "settings.py").write_text("from tunery.errors import Problem\n")
    (package / "errors.py").write_text("def later():\n    from tunery import settings\n")
    (package / "data" / "formats.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import tunery.jobs.store\n"
    )
    (package / "serving" / "vllm.py").write_text("from ..jobs.store import models_t\nfrom . import engine\n")
    (package / "serving" / "engine.py").write_text("import tunery.data.formats\n")
    (package / "jobs" / "store.py").write_text("from tunery.serving import engine\n")
    graph = import_graph(package)
    assert graph["tunery.serving.vllm"] == {"tunery.jobs.store", "tunery.serving.engine"}
    assert graph["tunery.data.formats"] == set()  # type-only
    assert circles(graph) == [["tunery.errors", "tunery.settings"]]
    assert upward(graph) == ["tunery.serving.vllm -> tunery.jobs.store"]
