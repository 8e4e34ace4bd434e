"""Shared fixtures of the client tests: a real stack for the TUI's Pilot tests, a pinned
time zone for anything that renders local times (snapshots, transfer lines)."""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
from textual.pilot import Pilot
from textual.widgets import Input

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


@pytest.fixture
def snap_compare(snap_compare: Callable[..., bool]) -> Callable[..., bool]:
    """pytest-textual-snapshot's ``snap_compare`` with text cursors that do not blink.

    An input's cursor blinks every 0.5 s, so a capture taken later than usual (a busy
    machine) would catch it in the other phase. Blinking off, a focused input always shows
    its cursor.
    """
    def compare(app: Any, *args: Any, run_before: Callable[[Pilot], Awaitable[None]] | None
                = None, **kwargs: Any) -> bool:
        async def steady(pilot: Pilot) -> None:
            if run_before is not None:
                await run_before(pilot)
            for widget in pilot.app.screen.query(Input):
                widget.cursor_blink = False
            await pilot.pause()

        return snap_compare(app, *args, run_before=steady, **kwargs)

    return compare
