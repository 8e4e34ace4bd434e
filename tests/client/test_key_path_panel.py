"""The key panel shows the path the open conversation's QKD keys took (issue 16, item 4):
the trusted nodes of a relayed key, ``direct link`` between neighbours, ``same node``.

The messenger's side (the path the KME names, kept per peer) runs against real network
nodes in tests/network/test_network_key_path.py; here ``StaticMessenger`` gives fixed paths,
so the panel's text and look can be pinned.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from textual.pilot import Pilot

from client.config import load_config
from client.messenger.api import KeyPath, KeyStatus
from client.messenger.profile import ProfileGate
from client.tui.app import QsecretApp
from client.tui.screens.chat import ChatScreen
from client.tui.widgets.key_panel import PANEL_TEXT_WIDTH, KeyPanel, render_key_status
from tests.client.pilot_helpers import chat_ready, until
from tests.client.static_messenger import StaticMessenger

SIZE = (150, 40)
PATHS = {
    "bob": KeyPath("alice", "bob", ("hf-5", "hf-1", "hf-3", "hf-7")),
    "carol": KeyPath("carol", "alice", ("hf-6", "hf-5")),
    "dave": KeyPath("alice", "dave", ("hf-5",)),
}

pytestmark = pytest.mark.usefixtures("utc_clock")


def test_a_path_reads_as_who_where_and_through_whom() -> None:
    assert PATHS["bob"].describe() == (
        "alice@hf-5 → hf-1 → hf-3 → bob@hf-7  (3 hops; trusted: hf-1, hf-3)")
    assert PATHS["carol"].describe() == "carol@hf-6 → alice@hf-5  (direct link)"
    assert PATHS["dave"].describe() == "alice@hf-5 → dave@hf-5  (same node)"
    two = KeyPath("alice", "bob", ("hf-1", "hf-3", "hf-5"))
    assert two.describe() == "alice@hf-1 → hf-3 → bob@hf-5  (2 hops; trusted: hf-3)"


def _app(tmp_path: Path) -> QsecretApp:
    gate = ProfileGate(load_config(tmp_path / "profile"))
    return QsecretApp(gate, export_dir=tmp_path / "exports",
                      messenger=StaticMessenger(key_paths=PATHS))






def _panel_text(pilot: Pilot) -> str:
    return str(pilot.app.screen.query_one(KeyPanel).render())


async def test_the_panel_follows_the_open_conversations_path(tmp_path: Path) -> None:
    app = _app(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await chat_ready(pilot)
        text = _panel_text(pilot)
        assert " path  alice@hf-5 → hf-1 → hf-3\n       → bob@hf-7\n" in text, text
        assert "3 hops; trusted: hf-1, hf-3" in text
        screen = app.screen
        assert isinstance(screen, ChatScreen)
        seen = {}
        for _ in range(2):
            await pilot.press("ctrl+down")
            await until(pilot, lambda: screen.peer != "bob" and screen.peer not in seen)
            await pilot.pause()
            seen[screen.peer] = _panel_text(pilot)
        assert " path  carol@hf-6 → alice@hf-5\n       direct link\n" in seen["carol"]
        assert " path  alice@hf-5 → dave@hf-5\n       same node\n" in seen["dave"]


def test_chat_with_a_relayed_key_path(snap_compare: Callable[..., bool],
                                      tmp_path: Path) -> None:
    assert snap_compare(_app(tmp_path), terminal_size=SIZE, run_before=chat_ready)


def test_the_peers_keys_show_only_when_they_came_another_way() -> None:
    out = KeyPath("alice", "bob", ("hf-5", "hf-1", "hf-3", "hf-7"))
    same_way_back = KeyPath("bob", "alice", ("hf-7", "hf-3", "hf-1", "hf-5"))
    other_way = KeyPath("bob", "alice", ("hf-7", "hf-3", "hf-4", "hf-1", "hf-5"))
    text = render_key_status(KeyStatus(key_path=out, key_path_back=same_way_back)).plain
    assert text.count(" path  ") == 1
    text = render_key_status(KeyStatus(key_path=out, key_path_back=other_way)).plain
    assert " path  bob@hf-7 → hf-3 → hf-4\n       → hf-1 → alice@hf-5\n" in text, text
    assert "4 hops; trusted:\n       hf-3, hf-4, hf-1\n" in text, text
    only_back = render_key_status(KeyStatus(key_path_back=other_way)).plain
    assert only_back.count(" path  ") == 1 and " path  bob@hf-7" in only_back
    assert " path  " not in render_key_status(KeyStatus()).plain


def test_a_long_path_wraps_inside_the_panel() -> None:
    path = KeyPath("alice", "bob", ("hf-5", "hf-1", "hf-2", "hf-3", "hf-7"))
    text = render_key_status(KeyStatus(key_path=path)).plain
    assert (" path  alice@hf-5 → hf-1 → hf-2\n       → hf-3 → bob@hf-7\n"
            "       4 hops; trusted:\n       hf-1, hf-2, hf-3\n") in text, text
    assert all(len(line) <= PANEL_TEXT_WIDTH for line in text.splitlines()), text


def test_long_key_sources_wrap_after_a_plus_inside_the_panel() -> None:
    """liboqs adds a second KEM to a session's first keys: the line wraps between names."""
    status = KeyStatus(sources="QKD+ML-KEM-768+FrodoKEM-976-AES+X25519")
    text = render_key_status(status).plain
    assert " keys  QKD+ML-KEM-768+\n       FrodoKEM-976-AES+X25519\n" in text, text
    assert all(len(line) <= PANEL_TEXT_WIDTH for line in text.splitlines()), text
    short = render_key_status(KeyStatus(sources="QKD+ML-KEM-768+X25519")).plain
    assert " keys  QKD+ML-KEM-768+X25519\n" in short


async def test_the_panel_is_as_wide_as_its_text_is_wrapped(tmp_path: Path) -> None:
    """PANEL_TEXT_WIDTH follows app.tcss: the panel's room for text, border and padding off."""
    app = _app(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await chat_ready(pilot)
        assert app.screen.query_one(KeyPanel).content_region.width == PANEL_TEXT_WIDTH
