"""The library's layers, read from its source: every import (also those inside functions) points down.

Layers, lowest first; a module may import its own subpackage and any lower layer, never a higher or a
sibling one.  The graph is built with ``ast`` from the files, not from what happens to be imported.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

LIB = Path(__file__).resolve().parents[1] / "T1ToT2Synthesis" / "T1ToT2Lib"
PKG = "T1ToT2Lib"

#: subpackage -> rank.  Equal ranks do not see each other (io and networks are siblings).
LAYERS = {
    "core": 0,
    "io": 1, "networks": 1,
    "phantom": 2, "inference": 2,
    "training": 3,
    "research": 4,
    "slicer": 5,
    "web": 6,
    "cli": 7,
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(LIB).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join([PKG] + parts)


def library_imports(path: Path) -> set[str]:
    """Absolute names of the library modules that ``path`` imports anywhere in its body."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != PKG:
                continue
            for alias in node.names:  # "from . import x" imports the module x
                found.add(f"{target}.{alias.name}" if _is_module(f"{target}.{alias.name}") else target)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == PKG)
    return found


def _is_module(name: str) -> bool:
    rel = Path(*name.split(".")[1:])
    return (LIB / rel).with_suffix(".py").is_file() or (LIB / rel / "__init__.py").is_file()


def layer(name: str) -> str | None:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else None


def graph() -> dict[str, set[str]]:
    return {module_name(p): library_imports(p) for p in sorted(LIB.rglob("*.py"))}


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in g.get(v, ()):
            if w not in g:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in g:
        if v not in index:
            visit(v)
    return out


def upward_imports(g: dict[str, set[str]]) -> list[str]:
    bad = []
    for source, targets in g.items():
        src_layer = layer(source)
        for target in targets:
            dst_layer = layer(target)
            if target == PKG or src_layer is None or dst_layer is None or dst_layer == src_layer:
                continue
            if LAYERS[dst_layer] >= LAYERS[src_layer]:
                bad.append(f"{source} ({src_layer}) imports {target} ({dst_layer})")
    return bad


def test_every_module_sits_in_a_layer():
    loose = [m for m in graph() if m != PKG and layer(m) is None]
    assert loose == [], f"modules outside the layer subpackages: {loose}"


def test_the_library_has_no_import_cycle():
    assert cycles(graph()) == []


def test_imports_point_down_the_layers():
    assert upward_imports(graph()) == []


def test_the_checks_catch_what_they_are_meant_to():
    """The two checks on a constructed graph: a cycle, an upward and a sibling import are all reported."""
    g = {"T1ToT2Lib.core.a": {"T1ToT2Lib.core.b"}, "T1ToT2Lib.core.b": {"T1ToT2Lib.core.a"},
         "T1ToT2Lib.io.x": {"T1ToT2Lib.training.t", "T1ToT2Lib.networks.n"}, "T1ToT2Lib.training.t": {"T1ToT2Lib.core.a"}}
    assert cycles(g) == [["T1ToT2Lib.core.a", "T1ToT2Lib.core.b"]]
    assert sorted(upward_imports(g)) == ["T1ToT2Lib.io.x (io) imports T1ToT2Lib.networks.n (networks)",
                                         "T1ToT2Lib.io.x (io) imports T1ToT2Lib.training.t (training)"]


@pytest.mark.parametrize("name", ["resource", "fcntl", "termios", "pwd", "grp", "msvcrt", "winreg", "_winapi"])
def test_no_platform_only_module_is_imported_at_module_level(name):
    offenders = []
    for path in LIB.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in tree.body:  # module level only: inside a function the import is guarded by the caller
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            if any(n.split(".")[0] == name for n in names):
                offenders.append(str(path.relative_to(LIB)))
    assert offenders == []


#: Functions longer than this are split into named steps (issue 17); data tables are module-level constants, not functions.
MAX_FUNCTION_LINES = 80
#: The Slicer module files are shells over T1ToT2Lib.slicer (widget wiring and the parameter node).
MAX_MODULE_FILE_LINES = 250


def test_no_library_function_is_longer_than_80_lines():
    long = []
    for path in sorted(LIB.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(LIB)}:{node.lineno} {node.name} ({lines} lines)")
    assert long == []


@pytest.mark.parametrize("module", ["T1ToT2Synthesis", "T1ToT2Training"])
def test_module_files_are_shells(module):
    path = LIB.parents[1] / module / f"{module}.py"
    assert len(path.read_text().splitlines()) <= MAX_MODULE_FILE_LINES
