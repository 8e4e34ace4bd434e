"""The import graph of the project's packages, read from the source with ``ast``.

Every ``import`` statement counts, wherever it is: at the top, inside a function (a lazy
import is still a dependency, only a later one) and under ``if TYPE_CHECKING:``. Type-only
imports are included on purpose: a module that needs another's types depends on it as much
as one that calls it, and a type-only back-reference is exactly what a narrow interface (a
Protocol in the lower module) removes; it is also what /work's shared cycle tool counts, so
the two agree. Imports by name at run time (``importlib.import_module("...")``, the lazy
tables of keysource/lazy.py, entry points) are not statements and are not edges.

An edge points at the most specific project module an import names: ``from a.b import c``
is an edge to ``a.b.c`` if that is a module, else to ``a.b``; ``import a.b.c`` to ``a.b.c``.
The parent packages Python initialises on the way (``a``, ``a.b``) are not counted: every
module would otherwise depend on its own package, and a package on its submodules.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("client", "relay", "keysource")


@dataclass(frozen=True)
class Import:
    """One import statement's edge: ``source`` imports ``target`` (both project modules)."""

    source: str
    target: str
    line: int


def find_modules(root: Path = ROOT, packages: Iterable[str] = PACKAGES) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file under the packages."""
    found = {}
    for top in packages:
        for path in sorted((root / top).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def _resolve(modules: dict[str, Path], name: str) -> str | None:
    """The longest prefix of ``name`` that is a project module (None: not ours)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _base(modules: dict[str, Path], module: str, node: ast.ImportFrom) -> str:
    """The absolute module a ``from ... import`` names (relative levels resolved)."""
    if not node.level:
        return node.module or ""
    package = module if modules[module].name == "__init__.py" else module.rpartition(".")[0]
    parts = package.split(".")
    if node.level > 1:
        parts = parts[: len(parts) - node.level + 1]
    return ".".join(parts + ([node.module] if node.module else []))


def imports_of(modules: dict[str, Path], module: str, tree: ast.AST) -> Iterator[Import]:
    for node in ast.walk(tree):
        targets: list[str | None] = []
        if isinstance(node, ast.Import):
            targets = [_resolve(modules, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _base(modules, module, node)
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                targets.append(submodule if submodule in modules else _resolve(modules, base))
        for target in targets:
            if target is not None and target != module:
                yield Import(module, target, node.lineno)


def build_graph(root: Path = ROOT, packages: Iterable[str] = PACKAGES) -> list[Import]:
    """Every edge among the packages' modules."""
    modules = find_modules(root, packages)
    edges = []
    for module, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        edges.extend(imports_of(modules, module, tree))
    return edges


def find_cycles(edges: Iterable[Import]) -> list[list[str]]:
    """One shortest cycle through each strongly connected group of modules, as the list of
    modules along it (first repeated at the end), sorted."""
    graph: dict[str, set[str]] = {}
    for edge in edges:
        graph.setdefault(edge.source, set()).add(edge.target)
        graph.setdefault(edge.target, set())
    cycles = []
    for group in _strongly_connected(graph):
        if len(group) > 1:
            start = min(group)
            cycles.append(_shortest_cycle(graph, start, group))
    return sorted(cycles)


def _strongly_connected(graph: dict[str, set[str]]) -> list[set[str]]:
    """Tarjan's algorithm, iterative (no recursion limit on a long chain)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    groups = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                group = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.add(member)
                    if member == node:
                        break
                groups.append(group)
    return groups


def _shortest_cycle(graph: dict[str, set[str]], start: str, group: set[str]) -> list[str]:
    """Breadth-first from ``start`` back to itself, inside ``group``."""
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for child in sorted(graph[node] & group):
                if child == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [*reversed(path), start]
                if child not in previous:
                    previous[child] = node
                    following.append(child)
        frontier = following
    raise AssertionError(f"{start} is in a strongly connected group but on no cycle")
