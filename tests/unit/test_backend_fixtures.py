"""End-to-end modules run once per PQ backend: a module-scoped fixture there must depend on
``pq_backend``, or pytest reuses it across backends (one relay, one set of profiles for
both: handles made on one backend are 'taken' on the other)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PER_BACKEND = ("tests/e2e", "tests/tui_tmux")


def _module_fixtures(tree: ast.Module) -> list[ast.FunctionDef]:
    found = []
    for node in tree.body:
        if not isinstance(node, ast.FunctionDef):
            continue
        for deco in node.decorator_list:
            if (isinstance(deco, ast.Call) and any(
                    kw.arg == "scope" and isinstance(kw.value, ast.Constant)
                    and kw.value.value == "module" for kw in deco.keywords)):
                found.append(node)
    return found


def test_every_module_fixture_of_a_per_backend_module_depends_on_the_backend() -> None:
    missing = []
    for folder in PER_BACKEND:
        for path in sorted((ROOT / folder).glob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for fixture in _module_fixtures(tree):
                names = {arg.arg for arg in fixture.args.args}
                if "pq_backend" not in names:
                    missing.append(f"{path.relative_to(ROOT)}:{fixture.lineno} {fixture.name}")
    assert not missing, "module fixtures without pq_backend: " + ", ".join(missing)
