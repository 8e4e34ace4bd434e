"""SVG snapshots of the TUI's main screens (pytest-textual-snapshot).

These pin the *look* of each screen at a fixed terminal size. Onboarding and unlock run
against the real ``ProfileGate`` (a real sealed profile, real wrong-passphrase error);
the chat screens use ``StaticMessenger``, a display fixture with fixed data, because a
live service would put changing clock times, ports and pool levels on screen.
Behaviour is tested against the real service in test_tui_pilot.py and tests/tui_tmux/.

After an intended change of the UI, regenerate and review:
    .venv/bin/pytest tests/client/test_snapshots.py --snapshot-update
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
from textual.pilot import Pilot
from textual.widgets import Static

from client.config import load_config
from client.messenger.profile import ProfileGate, create_profile
from client.tui.app import QsecretApp
from client.tui.screens.chat import ChatScreen
from client.tui.screens.search import SearchScreen
from client.tui.screens.verify import VerifyScreen
from tests.client.static_messenger import StaticMessenger

SIZE = (150, 40)
SnapCompare = Callable[..., bool]


pytestmark = pytest.mark.usefixtures("utc_clock")


def _chat_app(tmp_path: Path, *, link_alarm: bool = False) -> QsecretApp:
    gate = ProfileGate(load_config(tmp_path / "profile"))
    return QsecretApp(gate, export_dir=tmp_path / "exports",
                      messenger=StaticMessenger(link_alarm=link_alarm))


async def _until(pilot: Pilot, condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("the screen did not reach the expected state in time")
        await pilot.pause(0.05)


async def _chat_ready(pilot: Pilot) -> None:
    """The chat screen is up, bob's conversation is open and the status bar says online."""
    await _until(pilot, lambda: isinstance(pilot.app.screen, ChatScreen)
                 and pilot.app.screen.peer == "bob"
                 and "online" in str(pilot.app.screen.query_one("#status", Static).render()))
    await pilot.pause()


def test_onboarding_first_run(snap_compare: SnapCompare, tmp_path: Path) -> None:
    app = QsecretApp(ProfileGate(load_config(tmp_path / "new")), export_dir=tmp_path)
    assert snap_compare(app, terminal_size=SIZE)


def test_unlock_wrong_passphrase(snap_compare: SnapCompare, tmp_path: Path) -> None:
    config = replace(load_config(tmp_path / "alice"), sae_id="sae-alice")
    create_profile(config, "alice", "the right passphrase")
    app = QsecretApp(ProfileGate(config), export_dir=tmp_path)

    async def wrong_passphrase(pilot: Pilot) -> None:
        await pilot.press(*"not-the-passphrase", "enter")
        error = pilot.app.screen.query_one("#error", Static)
        await _until(pilot, lambda: "wrong passphrase" in str(error.render()))

    assert snap_compare(app, terminal_size=SIZE, run_before=wrong_passphrase)


def test_chat(snap_compare: SnapCompare, tmp_path: Path) -> None:
    assert snap_compare(_chat_app(tmp_path), terminal_size=SIZE, run_before=_chat_ready)


def test_chat_degraded_with_link_alarm(snap_compare: SnapCompare, tmp_path: Path) -> None:
    assert snap_compare(_chat_app(tmp_path, link_alarm=True), terminal_size=SIZE,
                        run_before=_chat_ready)


def test_help(snap_compare: SnapCompare, tmp_path: Path) -> None:
    async def help_open(pilot: Pilot) -> None:
        await _chat_ready(pilot)
        await pilot.press("f1")
        await _until(pilot, lambda: type(pilot.app.screen).__name__ == "HelpScreen")

    assert snap_compare(_chat_app(tmp_path), terminal_size=SIZE, run_before=help_open)


def test_verify(snap_compare: SnapCompare, tmp_path: Path) -> None:
    async def verify_open(pilot: Pilot) -> None:
        await _chat_ready(pilot)
        await pilot.press("ctrl+s")
        await _until(pilot, lambda: isinstance(pilot.app.screen, VerifyScreen))

    assert snap_compare(_chat_app(tmp_path), terminal_size=SIZE, run_before=verify_open)


def test_search_with_hits(snap_compare: SnapCompare, tmp_path: Path) -> None:
    async def search_keys(pilot: Pilot) -> None:
        await _chat_ready(pilot)
        await pilot.press("ctrl+f")
        await _until(pilot, lambda: isinstance(pilot.app.screen, SearchScreen))
        await pilot.press(*"key")
        count = pilot.app.screen.query_one("#count", Static)
        await _until(pilot, lambda: str(count.render()) == "2 messages")

    assert snap_compare(_chat_app(tmp_path), terminal_size=SIZE, run_before=search_keys)
