"""Pilot tests of the TUI's file transfers: attach, the transfers view, offers, progress.

The app runs in-process against ``StaticMessenger``, whose in-memory transfers follow
the protocol's state rules and emit a ``TransferEvent`` on every change (see its
docstring for why transfers are driven this way here). The paths sent are real files.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from textual.command import CommandPalette
from textual.pilot import Pilot
from textual.widgets import Input, Static

from client.messenger.api import Messenger, TransferState
from client.tui.app import QsecretApp
from client.tui.screens.chat import ChatScreen
from client.tui.screens.help import HelpScreen
from client.tui.screens.send_files import SendFilesScreen, parse_paths
from client.tui.screens.transfers import TransfersScreen
from client.tui.widgets.conversation import Conversation
from client.tui.widgets.transfer_list import (
    TransferList,
    format_bytes,
    format_eta,
    format_rate,
)
from tests.client.static_messenger import StaticMessenger

SIZE = (150, 40)
SnapCompare = Callable[..., bool]


pytestmark = pytest.mark.usefixtures("utc_clock")


class UnlockedGate:
    """The app gets an already unlocked messenger here, so the gate is never asked.

    (Not the real ProfileGate: these tests need no profile on disk and stay independent
    of the service module.)
    """

    def profile_exists(self) -> bool:
        return True

    async def create(self, handle: str, passphrase: str) -> Messenger:
        raise AssertionError("the transfers tests start with an unlocked messenger")

    async def unlock(self, passphrase: str) -> Messenger:
        raise AssertionError("the transfers tests start with an unlocked messenger")


def _app(tmp_path: Path, messenger: StaticMessenger | None = None) -> QsecretApp:
    return QsecretApp(UnlockedGate(), export_dir=tmp_path / "exports",
                      messenger=messenger or StaticMessenger())


async def _until(pilot: Pilot, condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("the screen did not reach the expected state in time")
        await pilot.pause(0.05)


async def _attach(pilot: Pilot) -> SendFilesScreen:
    """Ctrl+T from the chat: the attach dialog."""
    await pilot.press("ctrl+t")
    await _until(pilot, lambda: isinstance(pilot.app.screen, SendFilesScreen))
    screen = pilot.app.screen
    assert isinstance(screen, SendFilesScreen)
    return screen


async def _chat(pilot: Pilot) -> ChatScreen:
    await _until(pilot, lambda: isinstance(pilot.app.screen, ChatScreen)
                 and pilot.app.screen.peer == "bob"
                 and "online" in str(pilot.app.screen.query_one("#status", Static).render()))
    screen = pilot.app.screen
    assert isinstance(screen, ChatScreen)
    return screen


async def _transfers_view(pilot: Pilot) -> TransfersScreen:
    await pilot.press("ctrl+j")
    await _until(pilot, lambda: isinstance(pilot.app.screen, TransfersScreen))
    screen = pilot.app.screen
    assert isinstance(screen, TransfersScreen)
    await pilot.pause()
    return screen


def _notified(app: QsecretApp, text: str) -> bool:
    return any(text in str(n.message) for n in app._notifications)


async def _type(pilot: Pilot, text: str) -> None:
    await pilot.press(*[c if c != " " else "space" for c in text])


def test_formatting() -> None:
    assert format_bytes(999) == "999 B"
    assert format_bytes(12_300_000) == "12.3 MB"
    assert format_bytes(1_500_000_000) == "1.5 GB"
    assert format_bytes(2_500_000_000_000) == "2.5 TB"
    assert format_rate(2_400_000) == "2.4 MB/s"
    assert format_rate(52_000) == "52.0 kB/s"
    assert format_rate(0) == "—"
    assert format_eta(None) == "—"
    assert format_eta(65) == "1:05"
    assert format_eta(3 * 3600 + 120) == "3h02m"


def test_parse_paths(tmp_path: Path) -> None:
    home = os.path.expanduser("~")
    assert parse_paths("~/a.txt 'my file.pdf' b\\ c") == [
        Path(home, "a.txt"), Path("my file.pdf"), Path("b c")]
    with pytest.raises(ValueError, match="quote"):
        parse_paths("'unclosed")
    with pytest.raises(ValueError, match="at least one"):
        parse_paths("   ")


async def test_attach_sends_a_real_file(tmp_path: Path) -> None:
    report = tmp_path / "report.pdf"
    report.write_bytes(os.urandom(123_456))
    messenger = StaticMessenger()
    app = _app(tmp_path, messenger)
    async with app.run_test(size=SIZE) as pilot:
        chat = await _chat(pilot)
        await _attach(pilot)
        await _type(pilot, str(report))
        await pilot.press("enter")
        await _until(pilot, lambda: messenger.sent_files != [])
        assert messenger.sent_files == [("bob", [str(report)])]
        assert isinstance(app.screen, ChatScreen)
        await _until(pilot, lambda: _notified(app, "Offered report.pdf (123.5 kB) to bob"))
        conversation = chat.query_one(Conversation)
        await _until(pilot, lambda: any("report.pdf" in t and "waiting for them to accept" in t
                                        for t in conversation.transfer_texts()))
        screen = await _transfers_view(pilot)
        sent = [t for t in messenger.transfers() if t.title == "report.pdf"]
        assert len(sent) == 1 and sent[0].outgoing and sent[0].state is TransferState.OFFERED
        assert sent[0].total_bytes == 123_456
        row = screen.query_one(TransferList).row(sent[0].transfer_id)
        assert row is not None
        assert "offered" in row.stats_text()
        assert "waiting for the peer to accept" in row.stats_text()
        # an outgoing offer cannot be accepted or declined by its sender, only cancelled
        screen.query_one(TransferList).select(sent[0].transfer_id)
        await pilot.press("a", "d")
        await pilot.pause()
        assert messenger.transfers()[-1].state is TransferState.OFFERED
        await pilot.press("c")
        await _until(pilot, lambda: "cancelled" in row.stats_text())
        assert messenger.transfers()[-1].state is TransferState.CANCELLED
        await pilot.press("escape")
        assert isinstance(app.screen, ChatScreen)


async def test_attach_space_separated_paths_and_a_folder(tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(3):
        (folder / f"p{i}.jpg").write_bytes(b"x" * 1000)
    spaced = tmp_path / "my notes.txt"
    spaced.write_text("hello")
    messenger = StaticMessenger()
    app = _app(tmp_path, messenger)
    async with app.run_test(size=SIZE) as pilot:
        await _chat(pilot)
        await _attach(pilot)
        app.screen.query_one("#paths", Input).value = f"{folder} '{spaced}'"
        await pilot.click("#send")
        await _until(pilot, lambda: messenger.sent_files != [])
        assert messenger.sent_files == [("bob", [str(folder), str(spaced)])]
        offered = messenger.transfers()[-1]
        assert offered.files == 4 and offered.title == "photos (+1 more)"


async def test_attach_missing_path_shows_error_and_sends_nothing(tmp_path: Path) -> None:
    real = tmp_path / "real.txt"
    real.write_text("x")
    messenger = StaticMessenger()
    app = _app(tmp_path, messenger)
    async with app.run_test(size=SIZE) as pilot:
        await _chat(pilot)
        await _attach(pilot)
        modal = app.screen
        missing = tmp_path / "no-such-report.pdf"
        await _type(pilot, f"{real} {missing}")
        await pilot.press("enter")
        await pilot.pause()
        error = modal.query_one("#paths-error", Static)
        assert str(error.render()) == f"No such file or folder: {missing}"
        assert app.screen is modal
        # typing clears the error; an unclosed quote is explained, not guessed at
        modal.query_one("#paths", Input).value = "'unclosed"
        await pilot.pause()
        assert str(error.render()) == ""
        await pilot.press("enter")
        await pilot.pause()
        assert "quote names with spaces" in str(error.render())
        await pilot.press("enter")
        modal.query_one("#paths", Input).value = ""
        await pilot.press("enter")
        await pilot.pause()
        assert "at least one" in str(error.render())
        await pilot.press("escape")
        assert isinstance(app.screen, ChatScreen)
        await pilot.pause()
        assert messenger.sent_files == []


async def test_send_refused_by_the_service_is_an_error_notification(tmp_path: Path) -> None:
    real = tmp_path / "big.iso"
    real.write_bytes(b"\0" * 4096)
    messenger = StaticMessenger()
    messenger.refuse_sends = "the relay's spool for bob is full; try again later"
    app = _app(tmp_path, messenger)
    async with app.run_test(size=SIZE) as pilot:
        await _chat(pilot)
        before = len(messenger.transfers())
        await _attach(pilot)
        app.screen.query_one("#paths", Input).value = str(real)
        await pilot.press("enter")
        await _until(pilot, lambda: _notified(app, "spool for bob is full"))
        errors = [n for n in app._notifications if "spool" in str(n.message)]
        assert errors[0].severity == "error"
        assert len(messenger.transfers()) == before


async def test_incoming_offer_is_announced_and_accepted(tmp_path: Path) -> None:
    messenger = StaticMessenger()
    app = _app(tmp_path, messenger)
    async with app.run_test(size=SIZE) as pilot:
        chat = await _chat(pilot)
        offer = messenger.offer_incoming("bob", ("report.pdf",), 12_000_000)
        await _until(pilot, lambda: _notified(
            app, "bob wants to send you report.pdf (12.0 MB) — ctrl+j to accept or decline"))
        conversation = chat.query_one(Conversation)
        assert any("report.pdf" in t and "wants to send you" in t
                   for t in conversation.transfer_texts())
        screen = await _transfers_view(pilot)
        rows = screen.query_one(TransferList)
        assert rows.selected() is not None
        assert rows.selected().transfer_id == offer.transfer_id  # the waiting offer
        await pilot.press("a")
        await _until(pilot, lambda: messenger._transfers[offer.transfer_id].state
                     is TransferState.SENDING)
        row = rows.row(offer.transfer_id)
        assert row is not None
        await _until(pilot, lambda: "sending" in row.stats_text())
        # progress events move the bar, the sizes, the rate and the ETA
        messenger.progress(offer.transfer_id, 3_000_000, 2_400_000.0, 3.75)
        await _until(pilot, lambda: row.percentage_text() == "25%")
        stats = row.stats_text()
        assert "3.0 MB / 12.0 MB" in stats
        assert "2.4 MB/s" in stats and "ETA 0:04" in stats
        messenger.progress(offer.transfer_id, 9_000_000, 3_100_000.0, 65.0)
        await _until(pilot, lambda: row.percentage_text() == "75%")
        assert "3.1 MB/s" in row.stats_text() and "ETA 1:05" in row.stats_text()
        # a declined/accepted offer offers no accept/decline any more
        await pilot.press("d")
        await pilot.pause()
        assert messenger._transfers[offer.transfer_id].state is TransferState.SENDING
        landed = "/home/alice/Downloads/qsecret/bob/report.pdf"
        messenger.progress(offer.transfer_id, 12_000_000, state=TransferState.COMPLETE,
                           paths=(landed,))
        await _until(pilot, lambda: row.percentage_text() == "100%")
        assert "complete" in row.stats_text()
        await _until(pilot, lambda: _notified(app, f"saved as {landed}"))
        await pilot.press("escape")
        assert any("report.pdf" in t and "complete" in t for t in conversation.transfer_texts())


async def test_incoming_offer_declined(tmp_path: Path) -> None:
    messenger = StaticMessenger()
    app = _app(tmp_path, messenger)
    async with app.run_test(size=SIZE) as pilot:
        await _chat(pilot)
        offer = messenger.offer_incoming("carol", ("holiday.mov", "notes.txt"), 2_000_000_000,
                                         files=2)
        await _until(pilot, lambda: _notified(
            app, "carol wants to send you holiday.mov (+1 more) (2.0 GB)"))
        screen = await _transfers_view(pilot)
        rows = screen.query_one(TransferList)
        assert rows.selected().transfer_id == offer.transfer_id
        await pilot.press("d")
        await _until(pilot, lambda: messenger._transfers[offer.transfer_id].state
                     is TransferState.DECLINED)
        row = rows.row(offer.transfer_id)
        assert row is not None
        await _until(pilot, lambda: "declined" in row.stats_text())
        # nothing more to do with it: a, d and c are no longer offered
        await pilot.press("a", "c")
        await pilot.pause()
        assert messenger._transfers[offer.transfer_id].state is TransferState.DECLINED
        footer_keys = {b.key for _, b, enabled, _ in screen.active_bindings.values() if enabled}
        assert not {"a", "d", "c"} & footer_keys


async def test_cancel_a_running_transfer_and_keys_follow_the_selection(tmp_path: Path) -> None:
    messenger = StaticMessenger()
    app = _app(tmp_path, messenger)
    async with app.run_test(size=SIZE) as pilot:
        await _chat(pilot)
        screen = await _transfers_view(pilot)
        rows = screen.query_one(TransferList)
        running = next(t for t in messenger.transfers() if t.state is TransferState.SENDING)
        complete = next(t for t in messenger.transfers() if t.state is TransferState.COMPLETE)
        # rows are painted from the service's figures as soon as the view opens
        assert rows.row(running.transfer_id).percentage_text() == "42%"
        assert rows.row(complete.transfer_id).percentage_text() == "100%"
        assert "20.2 MB / 48.2 MB  2.4 MB/s  ETA 0:12  sending" in \
            rows.row(running.transfer_id).stats_text()
        rows.select(complete.transfer_id)
        await pilot.pause()
        assert not screen.check_action("cancel_transfer", ())
        await pilot.press("c")
        await pilot.pause()
        assert messenger._transfers[complete.transfer_id].state is TransferState.COMPLETE
        # arrow keys move the selection; the running transfer is the oldest, at the top
        await pilot.press("up", "up", "up", "up")
        await pilot.pause()
        assert rows.selected().transfer_id == running.transfer_id
        assert screen.check_action("cancel_transfer", ())
        assert not screen.check_action("accept", ())
        await pilot.press("c")
        await _until(pilot, lambda: messenger._transfers[running.transfer_id].state
                     is TransferState.CANCELLED)
        row = rows.row(running.transfer_id)
        assert row is not None
        await _until(pilot, lambda: "cancelled" in row.stats_text())
        assert "42%" == row.percentage_text()  # what was sent before the cancel


async def test_offer_pending_at_start_is_announced(tmp_path: Path) -> None:
    messenger = StaticMessenger()
    messenger.offer_incoming("dave", ("firmware.bin",), 4_200_000)  # before the app runs
    app = _app(tmp_path, messenger)
    async with app.run_test(size=SIZE) as pilot:
        await _chat(pilot)
        assert _notified(app, "dave wants to send you firmware.bin (4.2 MB)")


async def test_palette_and_help_know_transfers(tmp_path: Path) -> None:
    app = _app(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await _chat(pilot)
        await pilot.press("f1")
        assert isinstance(app.screen, HelpScreen)
        keys = {b.key: b.description for b in app.screen.bindings_list}
        assert keys["ctrl+t"] == "Send file" and keys["ctrl+j"] == "Transfers"
        await pilot.press("escape")
        await pilot.press("ctrl+p")
        await _until(pilot, lambda: isinstance(app.screen, CommandPalette))
        await _type(pilot, "file transfers")
        await pilot.press("enter")
        await _until(pilot, lambda: isinstance(app.screen, TransfersScreen))
        await pilot.press("escape")
        await pilot.press("ctrl+p")
        await _until(pilot, lambda: isinstance(app.screen, CommandPalette))
        await _type(pilot, "send files")
        await pilot.press("enter")
        await _until(pilot, lambda: isinstance(app.screen, SendFilesScreen))


def test_transfers_view_snapshot(snap_compare: SnapCompare, tmp_path: Path) -> None:
    async def transfers_open(pilot: Pilot) -> None:
        await _chat(pilot)
        await _transfers_view(pilot)

    assert snap_compare(_app(tmp_path), terminal_size=SIZE, run_before=transfers_open)
