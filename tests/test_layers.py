"""The layout docs/architecture.md describes, kept true: every import (at module level
or inside a function) goes to the same layer or one below it, there are no import
cycles, and no module or class outgrows what a reader can hold."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "charrnn"

# Rank of each part of the package: a module may import only from ranks <= its own.
# store/ and model/ share a rank: store.checkpoint builds a Model from a file, and the
# model never touches files.  fsutil's atomic writes are used by every layer.
RANKS = {
    "charrnn.cli": 4,
    "charrnn.training": 3, "charrnn.evaluate": 3, "charrnn.sampling": 3, "charrnn.info": 3,
    "charrnn.model": 2, "charrnn.store": 2,
    "charrnn.kernels": 1,
    "charrnn.store.fsutil": 0, "charrnn.config": 0, "charrnn.errors": 0,
    "charrnn.console": 0, "charrnn.units": 0, "charrnn": 0,
}
MAX_MODULE_LINES = 450
MAX_CLASS_LINES = 250


def _modules() -> dict[str, tuple[Path, bool]]:
    out = {}
    for p in PKG.rglob("*.py"):
        parts = list(p.relative_to(PKG.parent).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        if is_pkg:
            parts = parts[:-1]
        out[".".join(parts)] = (p, is_pkg)
    return out


MODULES = _modules()


def _owner(name: str) -> str:
    """The longest known module that ``name`` (maybe module.attribute) lies in."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name


def _imports(mod: str) -> set[str]:
    path, is_pkg = MODULES[mod]
    pkg = mod if is_pkg else mod.rpartition(".")[0]
    deps = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "charrnn":
                continue
            for alias in node.names:
                deps.add(_owner(f"{target}.{alias.name}"))
        elif isinstance(node, ast.Import):
            deps.update(_owner(a.name) for a in node.names if a.name.split(".")[0] == "charrnn")
    deps.discard(mod)
    # importing a submodule runs its parent packages first: not an edge of its own
    return {d for d in deps if d and not mod.startswith(d + ".")}


GRAPH = {m: _imports(m) for m in MODULES}


def _rank(mod: str) -> int:
    key = mod
    while key not in RANKS:
        key = key.rpartition(".")[0]
    return RANKS[key]


def test_every_module_has_a_layer():
    assert all(_rank(m) >= 0 for m in MODULES)


# The front door: ``charrnn.Model`` (resolved lazily) and ``python -m charrnn`` reach
# down to every layer; everything else only takes ``__version__`` from the root.
FRONT = {"charrnn", "charrnn.__main__"}


def test_imports_go_down_the_layers():
    upward = sorted(f"{m} -> {d}" for m, deps in GRAPH.items() for d in deps
                    if m not in FRONT and _rank(d) > _rank(m))
    assert not upward, "imports of a higher layer:\n" + "\n".join(upward)


def test_no_import_cycles():
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v):                                   # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in GRAPH:
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def test_the_checker_sees_an_import_inside_a_function():
    assert "charrnn.model.network" in GRAPH["charrnn.store.checkpoint"]


@pytest.mark.parametrize("mod", sorted(MODULES))
def test_modules_and_classes_stay_small(mod):
    path, _ = MODULES[mod]
    text = path.read_text()
    assert len(text.splitlines()) <= MAX_MODULE_LINES, f"{path.name} is too long"
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.ClassDef):
            size = node.end_lineno - node.lineno + 1
            assert size <= MAX_CLASS_LINES, f"class {node.name} is {size} lines"
