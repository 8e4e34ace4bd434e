"""The group actions' bindings, palette entries and dialogs, against the static messenger
(no groups, contacts bob, carol and dave): fast checks of what needs no relay. The real
stack's tests are in test_tui_groups.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from textual.command import CommandPalette
from textual.widgets import Input, Label, SelectionList

from client.messenger.api import MessengerError
from client.tui.app import QsecretApp
from client.tui.screens.chat import ChatScreen
from client.tui.screens.group_actions import GROUP_BINDINGS
from client.tui.screens.group_dialogs import CreateGroupScreen
from client.tui.screens.help import HelpScreen
from tests.client.pilot_helpers import chat_ready, until
from tests.client.static_messenger import StaticMessenger
from tests.client.test_tui_transfers import UnlockedGate

SIZE = (150, 40)


def _app(tmp_path: Path) -> QsecretApp:
    return QsecretApp(UnlockedGate(), export_dir=tmp_path / "exports",
                      messenger=StaticMessenger())


async def test_the_group_bindings_are_in_help_not_in_the_footer(tmp_path: Path) -> None:
    app = _app(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await chat_ready(pilot)
        await pilot.press("f1")
        assert isinstance(app.screen, HelpScreen)
        keys = {b.key for b in app.screen.bindings_list}
        assert {"f3", "f4", "f5", "f6", "f7"} <= keys
        assert not any(b.show for b in GROUP_BINDINGS)


async def test_the_palette_opens_the_new_group_dialog_which_checks_its_input(
        tmp_path: Path) -> None:
    app = _app(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await chat_ready(pilot)
        await pilot.press("ctrl+p")
        await until(pilot, lambda: isinstance(app.screen, CommandPalette))
        await pilot.press(*"new group")
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, CreateGroupScreen))
        dialog = app.screen
        members = dialog.query_one(SelectionList)
        assert [members.get_option_at_index(i).value for i in range(members.option_count)] \
            == ["bob", "carol", "dave"]
        problem = dialog.query_one("#problem", Label)
        await pilot.press("enter")  # no name yet
        assert "name" in str(problem.render())
        await pilot.press(*"crew")
        await pilot.press("enter")  # a name, nobody ticked
        assert "member" in str(problem.render())
        assert app.screen is dialog and dialog.query_one(Input).value == "crew"
        await pilot.press("escape")
        assert isinstance(app.screen, ChatScreen)


async def test_member_actions_without_an_open_group_say_so(tmp_path: Path) -> None:
    app = _app(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await chat_ready(pilot)
        for key in ("f4", "f5", "f6", "f7"):
            app.clear_notifications()
            await pilot.press(key)
            assert isinstance(app.screen, ChatScreen)
            assert [str(n.message) for n in app._notifications] == [
                "Open a group first (F3 makes one)."], key


def test_the_static_messenger_has_no_groups() -> None:
    """What the snapshots rely on: the contact list shows no group."""
    messenger = StaticMessenger()
    assert messenger.group_list() == [] and messenger.group_unread() == {}
    with pytest.raises(MessengerError, match="crew"):
        messenger.mark_group_shown("crew")
