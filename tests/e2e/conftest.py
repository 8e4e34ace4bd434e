"""A shared stack (relay + KME pair + alice and bob) for the end-to-end tests of a module."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.stack import Stack


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root: Path = tmp_path_factory.mktemp("stack")
    stack = Stack(root)
    try:
        stack.start_relay()
        stack.start_kme()
        stack.init("alice")
        stack.init("bob")
        # bob logs in once so his prekeys are on the relay; alice then adds him.
        stack.cli("bob", "recv", check=True)
        stack.cli("alice", "contacts", "add", "bob", check=True)
        yield stack
    finally:
        stack.stop()
