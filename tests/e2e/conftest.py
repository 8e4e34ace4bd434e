"""A shared stack (relay + KME pair + alice and bob) for the end-to-end tests of a module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.stack import Stack, start_stack


@pytest.fixture(scope="module", autouse=True)
def _on_each_backend(pq_backend: str) -> str:
    """Every end-to-end module runs once per PQ backend present (tests/conftest.py)."""
    return pq_backend


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, pq_backend: str) -> Iterator[Stack]:
    stack = start_stack(tmp_path_factory.mktemp("stack"))
    try:
        yield stack
    finally:
        stack.stop()
