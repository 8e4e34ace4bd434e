"""The import graph of client/, relay/ and keysource/: no cycle, and imports flow one way.

The graph is read from the source (tests/unit/import_graph.py says what counts as an edge:
every import statement, lazy and TYPE_CHECKING ones included). A cycle makes two modules one
unit that can only be understood, tested and loaded together, and its import order breaks at
random when a lazy import becomes eager. The direction rule is the layering of the design
(docs: keysource at the bottom, the relay beside the client): ``keysource`` imports neither
``client`` nor ``relay``; ``relay`` imports only ``keysource.pq`` (to verify signatures),
``keysource.lazy`` (the one way to load on first use) and ``keysource.sqlite_schema`` (store
versions); ``client`` imports nothing of the relay but ``relay.wire``, the protocol both
speak.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.unit.import_graph import Import, build_graph, find_cycles, find_modules, imports_of

# (importing package, what it may import from the other packages: module name prefixes).
ALLOWED_ACROSS: dict[str, tuple[str, ...]] = {
    "keysource": (),
    "relay": ("keysource.pq", "keysource.lazy", "keysource.sqlite_schema"),
    "client": ("keysource", "relay.wire"),
}


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def direction_violations(edges: list[Import]) -> list[str]:
    """``source:line -> target`` for each import across packages that the rule forbids."""
    bad = []
    for edge in edges:
        source_top, target_top = edge.source.partition(".")[0], edge.target.partition(".")[0]
        if source_top == target_top:
            continue
        if not any(_within(edge.target, allowed) for allowed in ALLOWED_ACROSS[source_top]):
            bad.append(f"{edge.source}:{edge.line} -> {edge.target}")
    return sorted(set(bad))


def test_no_import_cycle() -> None:
    cycles = [" -> ".join(cycle) for cycle in find_cycles(build_graph())]
    assert cycles == [], "import cycles:\n  " + "\n  ".join(cycles)


def test_imports_flow_one_way() -> None:
    violations = direction_violations(build_graph())
    assert violations == [], "imports against the layering:\n  " + "\n  ".join(violations)


# -- the checks themselves, on a small made-up tree --------------------------------------


def _tree(root: Path, files: dict[str, str]) -> None:
    for name, source in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source)


def test_a_cycle_through_a_lazy_type_checking_and_relative_import_is_named(
        tmp_path: Path) -> None:
    _tree(tmp_path, {
        "client/__init__.py": "",
        "client/cli/__init__.py": "from .entry import main\n",
        "client/cli/entry.py": "def main():\n    from . import files\n",
        "client/cli/files.py": ("from typing import TYPE_CHECKING\n"
                                "if TYPE_CHECKING:\n    from ..messenger import Service\n"),
        "client/messenger/__init__.py": "from client.messenger.service import Service\n",
        "client/messenger/service.py": "import client.cli.entry\n",
        "client/lonely.py": "from client import cli\n",
    })
    cycles = find_cycles(build_graph(tmp_path, ["client"]))
    assert cycles == [["client.cli.entry", "client.cli.files", "client.messenger",
                       "client.messenger.service", "client.cli.entry"]]


def test_a_package_importing_its_submodules_is_no_cycle(tmp_path: Path) -> None:
    _tree(tmp_path, {
        "client/__init__.py": "",
        "client/cli/__init__.py": "from .entry import main\nfrom . import errors\n",
        "client/cli/entry.py": "from .errors import CliError\nfrom client.cli import errors\n",
        "client/cli/errors.py": "class CliError(Exception): ...\n",
    })
    edges = build_graph(tmp_path, ["client"])
    assert {(e.source, e.target) for e in edges} == {
        ("client.cli", "client.cli.entry"), ("client.cli", "client.cli.errors"),
        ("client.cli.entry", "client.cli.errors")}
    assert find_cycles(edges) == []


def test_relative_imports_resolve_from_a_module_and_from_a_package(tmp_path: Path) -> None:
    _tree(tmp_path, {
        "relay/__init__.py": "", "relay/wire/__init__.py": "from .. import config\n",
        "relay/wire/frames.py": "from ..config import LIMIT\nfrom . import binary\n",
        "relay/wire/binary.py": "", "relay/config.py": "LIMIT = 1\n",
    })
    modules = find_modules(tmp_path, ["relay"])
    found = {(e.source, e.target) for name in ("relay.wire", "relay.wire.frames")
             for e in imports_of(modules, name, ast.parse(modules[name].read_text()))}
    assert found == {("relay.wire", "relay.config"), ("relay.wire.frames", "relay.config"),
                     ("relay.wire.frames", "relay.wire.binary")}


def test_the_direction_rule_names_each_forbidden_import() -> None:
    edges = [
        Import("keysource.kme.client", "client.config", 3),
        Import("relay.server", "keysource.pq", 4),
        Import("relay.server", "keysource.kme.pool", 5),
        Import("client.messenger.service", "relay.wire.frames", 6),
        Import("client.cli.demo", "relay.server", 7),
        Import("client.protocol", "keysource.mix", 8),
    ]
    assert direction_violations(edges) == [
        "client.cli.demo:7 -> relay.server",
        "keysource.kme.client:3 -> client.config",
        "relay.server:5 -> keysource.kme.pool",
    ]
