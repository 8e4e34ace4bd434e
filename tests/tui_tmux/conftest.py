"""tmux for the terminal tests: skipped with a reason when missing, unless required."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.tui_tmux.tmux import TmuxTerminal

REQUIRE_ENV = "QSECRET_REQUIRE_TMUX"


@pytest.fixture(scope="session")
def tmux_binary() -> str:
    binary = shutil.which("tmux")
    if binary is None:
        reason = "tmux is not installed (apt-get install tmux); the real-terminal TUI tests need it"
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"{REQUIRE_ENV}=1 but {reason}")
        pytest.skip(reason)
    return binary


@pytest.fixture
def terminal(tmux_binary: str, tmp_path: Path) -> Iterator[Callable[[str], TmuxTerminal]]:
    """Make private tmux terminals by name; every one is killed at the end of the test."""
    made: list[TmuxTerminal] = []

    def make(name: str) -> TmuxTerminal:
        made.append(TmuxTerminal(tmux_binary, tmp_path, name))
        return made[-1]

    try:
        yield make
    finally:
        for term in made:
            term.close()


@pytest.fixture(scope="module", autouse=True)
def _on_each_backend(pq_backend: str) -> str:
    """The real-terminal tests run once per PQ backend present (tests/conftest.py)."""
    return pq_backend
