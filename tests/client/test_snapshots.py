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

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
from textual.pilot import Pilot
from textual.widgets import Static

from client.config import load_config
from client.messenger.profile import ProfileGate, create_profile
from client.tui.app import QsecretApp
from client.tui.screens.search import SearchScreen
from client.tui.screens.verify import VerifyScreen
from tests.client.pilot_helpers import chat_ready, until
from tests.client.static_messenger import StaticMessenger

SIZE = (150, 40)
SnapCompare = Callable[..., bool]


pytestmark = pytest.mark.usefixtures("utc_clock")


def _chat_app(tmp_path: Path, *, link_alarm: bool = False) -> QsecretApp:
    gate = ProfileGate(load_config(tmp_path / "profile"))
    return QsecretApp(gate, export_dir=tmp_path / "exports",
                      messenger=StaticMessenger(link_alarm=link_alarm))






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
        await until(pilot, lambda: "wrong passphrase" in str(error.render()))

    assert snap_compare(app, terminal_size=SIZE, run_before=wrong_passphrase)


def test_chat(snap_compare: SnapCompare, tmp_path: Path) -> None:
    assert snap_compare(_chat_app(tmp_path), terminal_size=SIZE, run_before=chat_ready)


def test_chat_degraded_with_link_alarm(snap_compare: SnapCompare, tmp_path: Path) -> None:
    assert snap_compare(_chat_app(tmp_path, link_alarm=True), terminal_size=SIZE,
                        run_before=chat_ready)


def test_help(snap_compare: SnapCompare, tmp_path: Path) -> None:
    async def help_open(pilot: Pilot) -> None:
        await chat_ready(pilot)
        await pilot.press("f1")
        await until(pilot, lambda: type(pilot.app.screen).__name__ == "HelpScreen")

    assert snap_compare(_chat_app(tmp_path), terminal_size=SIZE, run_before=help_open)


def test_verify(snap_compare: SnapCompare, tmp_path: Path) -> None:
    async def verify_open(pilot: Pilot) -> None:
        await chat_ready(pilot)
        await pilot.press("ctrl+s")
        await until(pilot, lambda: isinstance(pilot.app.screen, VerifyScreen))

    assert snap_compare(_chat_app(tmp_path), terminal_size=SIZE, run_before=verify_open)


def test_search_with_hits(snap_compare: SnapCompare, tmp_path: Path) -> None:
    async def search_keys(pilot: Pilot) -> None:
        await chat_ready(pilot)
        await pilot.press("ctrl+f")
        await until(pilot, lambda: isinstance(pilot.app.screen, SearchScreen))
        await pilot.press(*"key")
        count = pilot.app.screen.query_one("#count", Static)
        await until(pilot, lambda: str(count.render()) == "2 messages")

    assert snap_compare(_chat_app(tmp_path), terminal_size=SIZE, run_before=search_keys)
