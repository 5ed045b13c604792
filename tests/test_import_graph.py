"""No import circle: between the top-level packages, and between the modules of each package.

The graph is read from the source with `ast`, nothing is imported. Every import counts, wherever
it is written: at module level, inside a function (a lazy import still makes the two modules
depend on each other), under `if TYPE_CHECKING:`, and `importlib.import_module("a.b")` with a
literal name or a module-level string constant. Names built at run time (an f-string) are not
seen. The packages are pyproject's `[tool.setuptools.packages.find] include`.

The layering this keeps: prepare at the bottom; genome and trainer on it; evolve on those;
analysis on evolve (it reads evolve's store and judges with its code); autoevolve on top (the
installed `evolve` command and the demo, which need evolve and analysis both).

`python tests/test_import_graph.py` prints the package graph and each package's module cycles.
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]

# Module cycles inside a package that are known and kept, each with its reason. Keep it small: a
# cycle not listed fails, and an entry whose cycle is gone fails too (delete the entry then).
ALLOWED_MODULE_CYCLES: dict[frozenset[str], str] = {
    frozenset({"evolve.engine", "evolve.engine_promotion"}): (
        "engine_promotion is a mixin holding half of Engine's methods; it names Engine only under "
        "TYPE_CHECKING, for its `self: Engine` annotations"
    ),
}


@dataclass(frozen=True)
class Import:
    source: str  # the importing module
    target: str  # the imported module (of the packages scanned)
    where: str  # path:line
    kind: str  # "module", "function" or "typing"


def packages(root: Path = ROOT) -> list[str]:
    """pyproject's top-level packages (`include = ["evolve*", ...]`)."""
    data = tomllib.loads((root / "pyproject.toml").read_text())
    include = data["tool"]["setuptools"]["packages"]["find"]["include"]
    return sorted({pattern.rstrip("*").rstrip(".") for pattern in include})


def modules(root: Path, names: list[str]) -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, is a package's __init__)."""
    found: dict[str, tuple[Path, bool]] = {}
    for name in names:
        for path in sorted((root / name).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            is_init = parts[-1] == "__init__"
            if is_init:
                parts = parts[:-1]
            found[".".join(parts)] = (path, is_init)
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports(root: Path, names: list[str]) -> list[Import]:
    """Every import between modules of the packages `names` under `root`."""
    known = modules(root, names)

    def resolve(name: str) -> str | None:  # a.b.c.Name -> the longest prefix that is a module
        while name and name not in known:
            name = name.rpartition(".")[0]
        return name or None

    found: list[Import] = []
    for module, (path, is_init) in known.items():
        found += _scan(root, module, path, is_init, known, resolve)
    return sorted(set(found), key=lambda i: (i.source, i.target, i.where))  # `import a, b` once each


def _scan(root: Path, module: str, path: Path, is_init: bool, known, resolve) -> list[Import]:
    """The imports one module makes."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if is_init else module.rpartition(".")[0]
    constants = {
        t.id: node.value.value
        for node in tree.body
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)
        and isinstance(node.value.value, str)
        for t in node.targets if isinstance(t, ast.Name)
    }  # fmt: skip
    found: list[Import] = []

    def add(names: list[str], node: ast.AST, kind: str) -> None:
        for name in names:
            target = resolve(name)
            if target is not None and target != module:
                found.append(Import(module, target, f"{path.relative_to(root)}:{node.lineno}", kind))

    def visit(node: ast.AST, kind: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                for sub in child.body:
                    visit_one(sub, "typing")
                for sub in child.orelse:
                    visit_one(sub, kind)
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)) and kind == "module":
                visit_one(child, "function")
            else:
                visit_one(child, kind)

    def visit_one(node: ast.AST, kind: str) -> None:
        if isinstance(node, ast.Import):
            add([a.name for a in node.names], node, kind)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                full = ".".join(base + ([node.module] if node.module else []))
            else:
                full = node.module or ""
            # `from pkg import name`: the submodule pkg.name if there is one, else pkg itself
            add([f"{full}.{a.name}" if f"{full}.{a.name}" in known else full for a in node.names], node, kind)
        elif isinstance(node, ast.Call) and node.args:
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            arg = node.args[0]
            if called in ("import_module", "__import__"):
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    add([arg.value], node, kind)
                elif isinstance(arg, ast.Name) and arg.id in constants:
                    add([constants[arg.id]], node, kind)
        visit(node, kind)

    visit(tree, "module")
    return found


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one node (Tarjan's, without recursion)."""
    nodes = sorted(set(edges) | {b for targets in edges.values() for b in targets})
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in nodes:
        if start in index:
            continue
        work = [(start, iter(sorted(edges.get(start, ()))))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
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
    return sorted(found)


def _top(module: str) -> str:
    return module.partition(".")[0]


def package_edges(found: list[Import]) -> dict[tuple[str, str], list[Import]]:
    edges: dict[tuple[str, str], list[Import]] = defaultdict(list)
    for imp in found:
        if _top(imp.source) != _top(imp.target):
            edges[(_top(imp.source), _top(imp.target))].append(imp)
    return edges


def package_cycles(found: list[Import]) -> list[list[str]]:
    graph: dict[str, set[str]] = defaultdict(set)
    for a, b in package_edges(found):
        graph[a].add(b)
    return cycles(graph)


def module_cycles(found: list[Import]) -> dict[str, list[list[str]]]:
    """Per top-level package, the cycles among its own modules."""
    graph: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for imp in found:
        if _top(imp.source) == _top(imp.target):
            graph[_top(imp.source)][imp.source].add(imp.target)
    return {name: cycles(g) for name, g in graph.items() if cycles(g)}


def explain(component: list[str], found: list[Import], key=lambda m: m, most: int = 8) -> str:
    """The imports that make a cycle: for each direction between two of its members, where (at most
    `most` of them, then how many more) and of which kind."""
    members = set(component)
    by_direction: dict[tuple[str, str], list[Import]] = defaultdict(list)
    for imp in found:
        a, b = key(imp.source), key(imp.target)
        if a != b and a in members and b in members:
            by_direction[(a, b)].append(imp)
    lines = [" <-> ".join(component)]
    for (a, b), imps in sorted(by_direction.items()):
        lines.append(f"  {a} -> {b}:")
        lines += [f"    {i.where}: {i.source} -> {i.target} ({i.kind})" for i in imps[:most]]
        if len(imps) > most:
            lines.append(f"    ... and {len(imps) - most} more")
    return "\n".join(lines)


@pytest.fixture(scope="module")
def graph() -> list[Import]:
    return imports(ROOT, packages())


def test_the_graph_sees_the_imports_it_should(graph):
    """Not vacuous: the packages are found, and known imports of each kind are in the graph."""
    assert {"analysis", "autoevolve", "evolve", "genome", "prepare", "trainer"} <= set(packages())
    seen = {(i.source, i.target, i.kind) for i in graph}
    assert ("analysis.frames", "evolve.champion", "module") in seen
    assert ("analysis.frames", "evolve.storefile", "function") in seen
    assert ("evolve.engine_promotion", "evolve.engine", "typing") in seen
    assert ("evolve.cli_genome", "evolve.champion", "function") in seen  # importlib, by a constant


def test_no_import_circle_between_the_top_level_packages(graph):
    found = package_cycles(graph)
    assert not found, "import circle between packages:\n" + "\n".join(
        explain(c, graph, key=_top) for c in found
    )


def test_analysis_depends_on_evolve_and_never_the_other_way(graph):
    edges = package_edges(graph)
    assert ("analysis", "evolve") in edges
    back = edges.get(("evolve", "analysis"), [])
    assert not back, "evolve imports analysis:\n" + "\n".join(f"    {i.where}: {i.target}" for i in back)


def test_nothing_imports_the_top_layer(graph):
    """autoevolve (the installed command, the demo) sits above everything; nothing imports it."""
    into = [i for i in graph if _top(i.target) == "autoevolve" and _top(i.source) != "autoevolve"]
    assert not into, "\n".join(f"{i.where}: {i.source} -> {i.target}" for i in into)


def test_no_import_circle_between_the_modules_of_a_package(graph):
    found = module_cycles(graph)
    unexpected = [c for comps in found.values() for c in comps if frozenset(c) not in ALLOWED_MODULE_CYCLES]
    assert not unexpected, "import circle between modules:\n" + "\n".join(
        explain(c, graph) for c in unexpected
    )


def test_the_allowed_module_cycles_are_still_there(graph):
    """An allowed cycle that is gone is deleted from ALLOWED_MODULE_CYCLES, so the list stays true."""
    present = {frozenset(c) for comps in module_cycles(graph).values() for c in comps}
    stale = [sorted(c) for c in ALLOWED_MODULE_CYCLES if c not in present]
    assert not stale, f"no longer a cycle, remove from ALLOWED_MODULE_CYCLES: {stale}"


def test_a_circle_is_found_and_named_through_lazy_and_relative_imports(tmp_path):
    """The checker on a small tree: `a` imports `b` at module level, `b` imports `a` in a function;
    inside `a`, `x` and `y` import each other relatively."""
    (tmp_path / "pyproject.toml").write_text('[tool.setuptools.packages.find]\ninclude = ["a*", "b*"]\n')
    for name, text in {
        "a/__init__.py": "",
        "a/x.py": "from . import y\nimport b.m\n",
        "a/y.py": "def f():\n    from .x import g\n",
        "b/__init__.py": "",
        "b/m.py": "def f():\n    import importlib\n    importlib.import_module('a.x')\n",
    }.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(text)
    found = imports(tmp_path, packages(tmp_path))
    assert package_cycles(found) == [["a", "b"]]
    assert module_cycles(found) == {"a": [["a.x", "a.y"]]}
    text = explain(["a", "b"], found, key=_top)
    assert "a/x.py:2: a.x -> b.m (module)" in text and "b/m.py:3: b.m -> a.x (function)" in text


if __name__ == "__main__":
    everything = imports(ROOT, packages())
    for (a, b), lines in sorted(package_edges(everything).items()):
        kinds = sorted({i.kind for i in lines})
        print(f"{a} -> {b}: {len(lines)} imports ({', '.join(kinds)})")
    for c in package_cycles(everything):
        print("PACKAGE CYCLE", explain(c, everything, key=_top))
    for name, comps in sorted(module_cycles(everything).items()):
        for c in comps:
            print(f"{name}: module cycle", explain(c, everything))
