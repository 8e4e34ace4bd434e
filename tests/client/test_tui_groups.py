"""Group chats in the TUI, against a real relay, KME pair and the other members' CLI.

alice runs the app in-process (``App.run_test``); bob and carol are separate ``qsecret``
processes, as separate users would be. The demo flow of issue 18: alice makes a group with
bob and carol, all three write in it, alice removes carol, carol is told and gets nothing
further.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import pytest
from textual.widgets import Input, SelectionList

from client.config import load_config
from client.messenger.api import ConversationKind
from client.messenger.profile import ProfileGate, open_profile
from client.tui.app import QsecretApp
from client.tui.screens.chat import ChatScreen
from client.tui.screens.group_dialogs import ChooseMembersScreen, CreateGroupScreen
from client.tui.widgets.contact_list import ContactList
from client.tui.widgets.conversation import Conversation
from tests.client.pilot_helpers import online, until
from tests.e2e.stack import PASSPHRASE, Stack
from tests.network.conftest import logged_in_on_two_nodes

SIZE = (150, 40)
pytestmark = pytest.mark.slow
# Two QKD nodes joined by a link, so every pair of members gets QKD keys (on one node or
# across): a group's sender keys travel between every two members, not only to and from
# one side of a KME pair.
AT = {"alice": "x", "carol": "x", "bob": "y"}
NODES = {"x": ["sae-alice", "sae-carol"], "y": ["sae-bob"]}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A relay, the two nodes and three profiles; each logged in once (prekeys published)
    and alice has bob and carol as contacts."""
    with logged_in_on_two_nodes(tmp_path_factory.mktemp("tui-groups"), AT, NODES) as stack:
        stack.cli("alice", "contacts", "add", "bob", check=True)
        stack.cli("alice", "contacts", "add", "carol", check=True)
        yield stack


def _app(stack: Stack, handle: str) -> QsecretApp:
    config = load_config(stack.profile(handle), relay_url=stack.relay_url)
    return QsecretApp(ProfileGate(config), export_dir=stack.root / "exports",
                      messenger=open_profile(config, PASSPHRASE))


async def _type(pilot, text: str) -> None:  # type: ignore[no-untyped-def]
    await pilot.press(*[c if c != " " else "space" for c in text])


async def _recv(stack: Stack, handle: str) -> list[dict[str, object]]:
    result = await asyncio.to_thread(stack.cli, handle, "recv", "--json", check=True)
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


async def _tick(pilot, selection: SelectionList, wanted: set[str]) -> None:  # type: ignore[no-untyped-def]
    """Tick ``wanted`` in a focused selection list with the keyboard (down, space)."""
    values = [selection.get_option_at_index(i).value for i in range(selection.option_count)]
    if selection.highlighted is None:
        await pilot.press("down")
    while selection.highlighted != 0:
        await pilot.press("up")
    for index, value in enumerate(values):
        if value in wanted:
            await pilot.press("space")
        if index + 1 < len(values):
            await pilot.press("down")
    assert set(selection.selected) == wanted


async def test_create_chat_unread_and_remove_from_the_tui(stack: Stack) -> None:
    app = _app(stack, "alice")
    async with app.run_test(size=SIZE) as pilot:
        screen = await online(pilot)
        contacts = screen.query_one(ContactList)
        conversation = screen.query_one(Conversation)

        # F3: a name and two members ticked among the contacts.
        await pilot.press("f3")
        assert isinstance(app.screen, CreateGroupScreen)
        await _type(pilot, "trio")
        await pilot.press("tab")
        await _tick(pilot, app.screen.query_one(SelectionList), {"bob", "carol"})
        await pilot.press("shift+tab")
        assert isinstance(app.focused, Input)
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, ChatScreen) and screen.group
                    is not None, timeout=60)
        group = screen.group
        assert group is not None and screen.conversation == group.conversation
        assert (group.name, set(group.members), group.admins) == (
            "trio", {"alice", "bob", "carol"}, ("alice",))
        assert "# trio" in contacts.label(group.conversation)
        assert conversation.notes() == ["you created trio with bob, carol"]

        # Typed in the group: bob and carol both get it, marked with the group.
        await _type(pilot, "hello trio")
        await pilot.press("enter")
        await until(pilot, lambda: "hello trio" in conversation.texts(), timeout=60)
        for member in ("bob", "carol"):
            got = await _recv(stack, member)
            assert any(m.get("text") == "hello trio" and m.get("group") == "trio"
                       and m.get("from") == "alice" for m in got), (member, got)

        # carol writes while alice has bob's one-to-one conversation open: the group's
        # unread count goes up; opening the group shows the line with its sender.
        screen.open_conversation("bob")
        assert screen.peer == "bob"
        await asyncio.to_thread(stack.cli, "carol", "send", "@trio", "carol here",
                                check=True)
        await until(pilot, lambda: contacts.unread(group.group_id) == 1, timeout=60)
        assert contacts.label(group.conversation).endswith("(1)")
        assert "carol here" not in conversation.texts()
        contacts.focus()
        contacts.highlighted = contacts.get_option_index(f"group:{group.group_id}")
        await pilot.press("enter")
        await until(pilot, lambda: screen.conversation == group.conversation)
        assert contacts.unread(group.group_id) == 0
        line = next(line for line in conversation._lines.values()
                    if line.message.text == "carol here")
        assert str(line.render()).split(" ", 1)[1] == "carol: carol here"
        assert line.message.conversation.kind is ConversationKind.GROUP

        # F5: remove carol. alice's conversation says so; carol is told she was removed.
        screen.query_one("#message", Input).focus()
        await pilot.press("f5")
        assert isinstance(app.screen, ChooseMembersScreen)
        assert app.screen.candidates == ["bob", "carol"]
        await _tick(pilot, app.screen.query_one(SelectionList), {"carol"})
        await pilot.click("#done")
        await until(pilot, lambda: "you removed carol" in conversation.notes(), timeout=60)
        assert screen.group is not None and "carol" not in screen.group.members
        told = await _recv(stack, "carol")
        assert any(m.get("event") == "group" and m.get("note") == "alice removed you"
                   and m.get("status") == "removed" for m in told), told

        # After the removal: bob gets alice's next message, carol nothing.
        await _type(pilot, "carol is gone")
        await pilot.press("enter")
        await until(pilot, lambda: "carol is gone" in conversation.texts(), timeout=60)
        assert any(m.get("text") == "carol is gone" for m in await _recv(stack, "bob"))
        assert not [m for m in await _recv(stack, "carol") if "text" in m]
        await pilot.press("ctrl+q")


async def test_the_removed_member_sees_it_and_a_non_admin_is_refused(stack: Stack) -> None:
    """carol runs the app: the group alice made appears with its unread count, carol (no
    admin) cannot remove bob, and when alice removes her the conversation says so, the
    group is marked removed, her input refuses and nothing sent afterwards reaches her."""
    await asyncio.to_thread(stack.cli, "alice", "group", "create", "pair", "bob", "carol",
                            check=True)
    app = _app(stack, "carol")
    async with app.run_test(size=SIZE) as pilot:
        screen = await online(pilot)
        contacts = screen.query_one(ContactList)
        conversation = screen.query_one(Conversation)
        await until(pilot, lambda: any(g.name == "pair" for g in contacts.groups()),
                    timeout=60)
        group = next(g for g in contacts.groups() if g.name == "pair")
        if screen.conversation == group.conversation:  # nothing was open: it opened itself
            screen.open_conversation("alice")
        await asyncio.to_thread(stack.cli, "bob", "send", "@pair", "from bob", check=True)
        await until(pilot, lambda: contacts.unread(group.group_id) == 1, timeout=60)
        screen.open_group(group.group_id)
        assert "from bob" in conversation.texts()
        assert "alice created pair with bob, you" in conversation.notes()

        # Not an admin: the removal is refused, said clearly, and the roster is unchanged.
        await pilot.press("f5")
        assert isinstance(app.screen, ChooseMembersScreen)
        await _tick(pilot, app.screen.query_one(SelectionList), {"bob"})
        await pilot.click("#done")
        await until(pilot, lambda: any("admin" in str(n.message)
                                        for n in app._notifications), timeout=30)
        assert screen.group is not None and "bob" in screen.group.members

        # alice removes carol: carol's open conversation says who did it.
        await asyncio.to_thread(stack.cli, "alice", "group", "remove", "pair", "carol",
                                check=True)
        await until(pilot, lambda: "alice removed you" in conversation.notes(), timeout=60)
        assert conversation.notes()[-1].startswith("you were removed by alice")
        assert contacts.label(group.conversation).startswith("# pair (removed)")
        box = screen.query_one("#message", Input)
        assert "no longer" in box.placeholder
        await _type(pilot, "still here?")
        await pilot.press("enter")
        await until(pilot, lambda: any("not a member" in str(n.message)
                                        for n in app._notifications), timeout=30)

        # alice writes to the group, then to carol directly: the direct message arrives
        # (the relay keeps carol's queue in order), the group message never does.
        await asyncio.to_thread(stack.cli, "alice", "send", "@pair", "after carol",
                                check=True)
        await asyncio.to_thread(stack.cli, "alice", "send", "carol", "marker", check=True)
        await until(pilot, lambda: any(c.handle == "alice" and c.last_text == "marker"
                                       for c in screen.messenger.contacts()), timeout=60)
        assert "after carol" not in [m.text for m in screen.messenger.group_history(
            group.group_id)]
        assert "after carol" not in conversation.texts()
        await pilot.press("ctrl+q")


async def _carol_unread(stack: Stack, name: str, *, open_it: bool = False) -> int:
    """Start carol's app, read the unread count of group ``name`` as it starts (from her
    store), open the group if asked, quit."""
    app = _app(stack, "carol")
    async with app.run_test(size=SIZE) as pilot:
        screen = await online(pilot)
        contacts = screen.query_one(ContactList)
        group = next(g for g in contacts.groups() if g.name == name)
        unread = contacts.unread(group.group_id)
        if open_it:
            screen.open_group(group.group_id)
            assert contacts.unread(group.group_id) == 0
        await pilot.press("ctrl+q")
    return unread


async def test_group_unread_counts_are_kept_across_restarts(stack: Stack) -> None:
    await asyncio.to_thread(stack.cli, "alice", "group", "create", "later", "bob", "carol",
                            check=True)
    app = _app(stack, "carol")
    async with app.run_test(size=SIZE) as pilot:
        screen = await online(pilot)
        contacts = screen.query_one(ContactList)
        await until(pilot, lambda: any(g.name == "later" for g in contacts.groups()),
                    timeout=60)
        group = next(g for g in contacts.groups() if g.name == "later")
        if screen.conversation == group.conversation:
            screen.open_conversation("alice")
        await asyncio.to_thread(stack.cli, "bob", "send", "@later", "unread one", check=True)
        await until(pilot, lambda: contacts.unread(group.group_id) == 1, timeout=60)
        await pilot.press("ctrl+q")
    assert await _carol_unread(stack, "later", open_it=True) == 1
    assert await _carol_unread(stack, "later") == 0
