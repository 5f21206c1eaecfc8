"""The package's import graph has no cycle, counting imports inside functions too.

A cycle held up by a function-level import still ties two modules into one unit (neither can be
read, tested or replaced alone), so those count. Only explicit imports are edges: importing
``autooffload._profiles.store`` runs ``autooffload/__init__`` first, but that is Python's package
machinery, not a dependency one module chose.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parents[1] / "src" / "autooffload"
PACKAGE = "autooffload"


def _module_name(path: Path) -> str:
    parts = (PACKAGE, *path.relative_to(PACKAGE_ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_modules() -> dict[str, Path]:
    """Every Python module of the package by dotted name (a package by its ``__init__``)."""
    return {_module_name(p): p for p in sorted(PACKAGE_ROOT.rglob("*.py"))}


def extension_modules() -> set[str]:
    """The optional C extensions (``_native``, ``_parcopy``): imported, but they import nothing of ours.

    Named from their sources, so the answer does not depend on whether they are built."""
    return {_module_name(p) for p in PACKAGE_ROOT.rglob("*.c")}


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that ``name`` imports anywhere in its file (any depth, any function)."""
    is_package = path.name == "__init__.py"
    known = modules.keys() | extension_modules()
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                origin = ".".join(base + ([node.module] if node.module else []))
            else:
                origin = node.module or ""
            # `from x import y` imports the module x.y when there is one, else a name from x.
            targets = [f"{origin}.{a.name}" if f"{origin}.{a.name}" in known else origin for a in node.names]
        else:
            continue
        found.update(t for t in targets if t in modules and t != name)
    return found


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Each strongly connected group of more than one module (Tarjan), as a sorted list."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return groups


def package_import_graph() -> dict[str, set[str]]:
    modules = package_modules()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def test_the_package_has_no_import_cycle():
    cycles = import_cycles(package_import_graph())
    assert not cycles, "import cycles (module groups that import each other): " + "; ".join(" <-> ".join(c) for c in cycles)


def test_the_cycle_finder_sees_function_level_imports(tmp_path):
    # The shape issue 11 removed: _profile imported _defaults inside a function, _defaults imported _profile.
    assert import_cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]
    assert import_cycles({"a": {"b"}, "b": set()}) == []
    graph = package_import_graph()
    assert "autooffload._profiles.store" in graph["autooffload._profiles.resolve"]
    assert "autooffload._profiles" in graph["autooffload._planner"]  # a function-level import


def test_profiles_is_split_by_concern():
    graph = package_import_graph()
    # The file format depends on nothing else of the package; the defaults only on the format.
    assert graph["autooffload._profiles.model"] == set()
    assert graph["autooffload._profiles.defaults"] == {"autooffload._profiles.model"}
    assert not (PACKAGE_ROOT / "_profile.py").exists() and not (PACKAGE_ROOT / "profiles").exists()
