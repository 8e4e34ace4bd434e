"""Shared fixtures of the client tests: a real stack for the TUI's Pilot tests, a pinned
time zone for anything that renders local times (snapshots, transfer lines)."""

from __future__ import annotations

import os
import time
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


@pytest.fixture
def utc_clock() -> Iterator[None]:
    """Times render with time.localtime: pin the zone so output matches anywhere."""
    previous = os.environ.get("TZ")
    os.environ["TZ"] = "UTC"
    time.tzset()
    try:
        yield
    finally:
        if previous is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = previous
        time.tzset()
