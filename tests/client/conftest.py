"""A real relay + KME pair + users (alice, bob, carol) for the TUI's Pilot tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.stack import Stack, start_stack


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = start_stack(tmp_path_factory.mktemp("tui"), users=("alice", "bob", "carol"))
    try:
        yield stack
    finally:
        stack.stop()
