"""Library code changes no process-wide interpreter setting; only entry points may.

A setting such as the GIL switch interval belongs to the whole process: a library module
that turns it changes every other thread's behaviour (and raced with a test observing it).
An entry point (the ``qsecret`` script's main, a server's command) may set one, once at
start, documented where it does.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("client", "relay", "keysource")
# sys / gc / threading calls that change the interpreter for everyone in the process.
PROCESS_WIDE = {
    "setswitchinterval", "setrecursionlimit", "setprofile", "settrace",
    "set_int_max_str_digits", "setdlopenflags", "set_asyncgen_hooks",
    "set_coroutine_origin_tracking_depth", "stack_size", "set_event_loop_policy",
    "set_threshold", "freeze",
}
# Modules that are a process's entry point: each sets what it sets once, at start.
ENTRY_POINTS = {
    "client/cli/entry.py", "client/__main__.py", "client/cli/__main__.py",
    "relay/cli.py", "relay/__main__.py", "keysource/kme/cli.py", "keysource/qkd/cli.py",
}
# Library functions that only an entry point calls, once at start (checked below).
START_UP_HELPERS = {("relay/housekeeping.py", "tune_gc")}


def _modules() -> dict[str, ast.Module]:
    return {path.relative_to(ROOT).as_posix(): ast.parse(path.read_text(encoding="utf-8"))
            for top in PACKAGES for path in sorted((ROOT / top).rglob("*.py"))}


def _calls(tree: ast.AST, names: set[str]) -> list[tuple[int, str, str]]:
    """(line, called name, enclosing top-level function or '') of calls to ``names``."""
    found = []

    def visit(node: ast.AST, function: str) -> None:
        for child in ast.iter_child_nodes(node):
            inner = function
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) and not function:
                inner = child.name
            if isinstance(child, ast.Call):
                func = child.func
                name = func.attr if isinstance(func, ast.Attribute) else \
                    func.id if isinstance(func, ast.Name) else ""
                if name in names:
                    found.append((child.lineno, name, function))
            visit(child, inner)

    visit(tree, "")
    return found


def process_wide_calls() -> list[str]:
    """``path:line name`` for every call of a process-wide setter in library code."""
    return [f"{path}:{line} {name}" for path, tree in _modules().items()
            if path not in ENTRY_POINTS
            for line, name, function in _calls(tree, PROCESS_WIDE)
            if (path, function) not in START_UP_HELPERS]


def test_library_code_changes_no_process_wide_setting() -> None:
    assert process_wide_calls() == []


def test_start_up_helpers_are_called_from_entry_points_only() -> None:
    helpers = {name for _, name in START_UP_HELPERS}
    callers = {path for path, tree in _modules().items() if _calls(tree, helpers)}
    assert callers <= ENTRY_POINTS, callers - ENTRY_POINTS


def test_the_check_sees_a_setter_in_a_library_function() -> None:
    source = "import sys\n\ndef hash_files():\n    sys.setswitchinterval(0.0005)\n"
    assert _calls(ast.parse(source), PROCESS_WIDE) == [(4, "setswitchinterval", "hash_files")]
