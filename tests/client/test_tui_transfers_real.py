"""The TUI's file transfers against the real service, relay and KME (Pilot, in-process).

alice runs the TUI; bob is driven through the real ``qsecret`` CLI (send-file,
receive-files). The bytes that land are compared with the bytes that were sent.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from pathlib import Path

import pytest
from textual.widgets import Input

from client.messenger.api import TransferState
from client.tui.screens.send_files import SendFilesScreen
from client.tui.screens.transfers import TransfersScreen
from client.tui.widgets.conversation import Conversation
from client.tui.widgets.transfer_list import TransferList
from tests.client.pilot_helpers import online, until
from tests.client.test_tui_pilot import SIZE, _app
from tests.e2e.stack import Stack

pytestmark = pytest.mark.slow


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def sessions(stack: Stack) -> Stack:
    """alice and bob have talked once, so both hold a session before any file moves."""
    stack.cli("alice", "send", "bob", "files next", check=True)
    stack.cli("bob", "recv", check=True)
    stack.cli("bob", "send", "alice", "ok", check=True)
    stack.cli("alice", "recv", check=True)
    return stack


async def test_incoming_offer_accepted_in_the_transfers_view(sessions: Stack,
                                                             tmp_path: Path) -> None:
    stack = sessions
    source = tmp_path / "measurements.bin"
    source.write_bytes(os.urandom(3_000_000))
    app = _app(stack)
    async with app.run_test(size=SIZE) as pilot:
        await online(pilot)
        sender = asyncio.create_task(asyncio.to_thread(
            stack.cli, "bob", "send-file", "alice", str(source), "--json", "--timeout", "60",
            timeout=180))
        await until(pilot, lambda: any(
            "bob wants to send you measurements.bin (3.0 MB)" in str(n.message)
            for n in app._notifications), timeout=60)
        await pilot.press("ctrl+j")
        await until(pilot, lambda: isinstance(app.screen, TransfersScreen))
        rows = app.screen.query_one(TransferList)
        offer = rows.selected()
        assert offer is not None and not offer.outgoing
        assert offer.state is TransferState.OFFERED and offer.title == "measurements.bin"
        await pilot.press("a")
        row = rows.row(offer.transfer_id)
        assert row is not None
        await until(pilot, lambda: row.transfer.state is TransferState.COMPLETE
                     or row.transfer.detail != "", timeout=120)
        assert row.transfer.state is TransferState.COMPLETE, (
            row.transfer, (stack.root / "relay.log").read_text()[-3000:])
        assert row.percentage_text() == "100%"
        assert "3.0 MB / 3.0 MB" in row.stats_text()
        landed = [Path(p) for p in row.transfer.paths]
        assert len(landed) == 1 and _digest(landed[0]) == _digest(source)
        result = await sender
        assert result.returncode == 0, result.stderr
        await pilot.press("escape")


async def test_attach_sends_to_bob_who_receives_with_the_cli(sessions: Stack,
                                                            tmp_path: Path) -> None:
    stack = sessions
    source = tmp_path / "draft report.pdf"  # a space: quoted in the modal
    source.write_bytes(os.urandom(1_500_000))
    downloads = tmp_path / "bob-downloads"
    app = _app(stack)
    async with app.run_test(size=SIZE) as pilot:
        screen = await online(pilot)
        assert screen.peer == "bob"
        await pilot.press("ctrl+t")
        await until(pilot, lambda: isinstance(app.screen, SendFilesScreen))
        app.screen.query_one("#paths", Input).value = f"'{source}'"
        await pilot.press("enter")
        conversation = screen.query_one(Conversation)
        await until(pilot, lambda: any("draft report.pdf" in t
                                        for t in conversation.transfer_texts()), timeout=60)
        receiver = await asyncio.to_thread(
            stack.cli, "bob", "receive-files", "--accept", "all", "--count", "1",
            "--downloads", str(downloads), "--json", "--timeout", "60", timeout=180)
        assert receiver.returncode == 0, receiver.stderr
        await pilot.press("ctrl+j")
        await until(pilot, lambda: isinstance(app.screen, TransfersScreen))
        rows = app.screen.query_one(TransferList)
        sent = [r for r in rows.query("TransferRow") if r.transfer.title == "draft report.pdf"]
        assert len(sent) == 1
        await until(pilot, lambda: sent[0].transfer.state is TransferState.COMPLETE,
                     timeout=60)
        assert sent[0].percentage_text() == "100%"
    landed = [p for p in downloads.rglob("*") if p.name == source.name]  # (+ receiver state)
    assert len(landed) == 1
    assert _digest(landed[0]) == _digest(source)
    lines = [json.loads(line) for line in receiver.stdout.splitlines() if line.strip()]
    assert lines, receiver.stdout
