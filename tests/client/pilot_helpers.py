"""Waiting helpers shared by the Pilot tests (static messenger and real stack alike)."""

from __future__ import annotations

import time
from collections.abc import Callable

from textual.pilot import Pilot
from textual.widgets import Static

from client.messenger.api import Connection
from client.tui.screens.chat import ChatScreen
from client.tui.widgets.status_bar import StatusBar


async def until(pilot: Pilot, condition: Callable[[], bool], timeout: float = 20.0) -> None:
    """Let the app run until ``condition`` holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("the screen did not reach the expected state in time")
        await pilot.pause(0.05)


async def chat_ready(pilot: Pilot) -> None:
    """The chat screen is up, bob's conversation is open and the status bar says online
    (the static messenger of the snapshot tests)."""
    await until(pilot, lambda: isinstance(pilot.app.screen, ChatScreen)
                and pilot.app.screen.peer == "bob"
                and "online" in str(pilot.app.screen.query_one("#status", Static).render()))
    await pilot.pause()


async def online(pilot: Pilot) -> ChatScreen:
    """The chat screen of a real messenger, logged in to the relay."""
    await until(pilot, lambda: isinstance(pilot.app.screen, ChatScreen))
    screen = pilot.app.screen
    assert isinstance(screen, ChatScreen)
    await until(pilot, lambda: screen.query_one(StatusBar).state.state is Connection.ONLINE)
    return screen
