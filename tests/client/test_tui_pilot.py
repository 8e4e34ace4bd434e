"""Pilot tests of every screen and key binding, driving the real messenger service.

The app runs in-process (``App.run_test``) as alice against real relay and KME
processes; bob and carol are driven through the real CLI.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from textual.command import CommandPalette
from textual.widgets import Input, OptionList

from client.config import load_config
from client.messenger.profile import ProfileGate, open_profile
from client.tui.app import QsecretApp
from client.tui.screens.chat import ChatScreen
from client.tui.screens.help import HelpScreen
from client.tui.screens.modals import AddContactScreen, ExportScreen
from client.tui.screens.onboarding import OnboardingScreen
from client.tui.screens.search import SearchScreen
from client.tui.screens.verify import VerifyScreen
from client.tui.widgets.contact_list import ContactList
from client.tui.widgets.conversation import Conversation
from client.tui.widgets.key_panel import KeyPanel
from tests.client.pilot_helpers import online, until
from tests.conftest import active_full_sources
from tests.e2e.stack import PASSPHRASE, Stack

SIZE = (150, 40)
pytestmark = pytest.mark.slow


def _app(stack: Stack, handle: str = "alice") -> QsecretApp:
    config = load_config(stack.profile(handle), relay_url=stack.relay_url)
    messenger = open_profile(config, PASSPHRASE)
    return QsecretApp(ProfileGate(config), export_dir=stack.root / "exports",
                      messenger=messenger)


async def _type(pilot, text: str) -> None:  # type: ignore[no-untyped-def]
    await pilot.press(*[c if c != " " else "space" for c in text])


async def test_send_and_receive(stack: Stack) -> None:
    app = _app(stack)
    async with app.run_test(size=SIZE) as pilot:
        screen = await online(pilot)
        assert screen.peer == "bob"
        await _type(pilot, "hello from pilot")
        await pilot.press("enter")
        conversation = screen.query_one(Conversation)
        await until(pilot, lambda: "hello from pilot" in conversation.texts())
        received = await asyncio.to_thread(stack.cli, "bob", "recv", "--json", check=True)
        texts = [json.loads(line)["text"] for line in received.stdout.splitlines()]
        assert "hello from pilot" in texts
        # bob answers; alice's open conversation shows it without any key press
        await asyncio.to_thread(stack.cli, "bob", "send", "alice", "pilot, bob here",
                                check=True)
        await until(pilot, lambda: "pilot, bob here" in conversation.texts())
        panel = screen.query_one(KeyPanel)
        assert panel.status.sources in active_full_sources()
        assert not panel.status.degraded
        await pilot.press("ctrl+q")
    assert app.return_code in (0, None)


async def test_message_history_on_up_arrow(stack: Stack) -> None:
    app = _app(stack)
    async with app.run_test(size=SIZE) as pilot:
        screen = await online(pilot)
        await _type(pilot, "first line")
        await pilot.press("enter")
        box = screen.query_one("#message", Input)
        await until(pilot, lambda: box.value == "")
        await pilot.press("up")
        assert box.value == "first line"
        await pilot.press("down")
        assert box.value == ""


async def test_help_lists_every_binding_and_escape_closes(stack: Stack) -> None:
    app = _app(stack)
    async with app.run_test(size=SIZE) as pilot:
        await online(pilot)
        await pilot.press("f1")
        assert isinstance(app.screen, HelpScreen)
        keys = {b.key for b in app.screen.bindings_list}
        assert {"ctrl+n", "ctrl+s", "ctrl+f", "ctrl+e", "ctrl+o", "ctrl+k", "f1",
                "ctrl+q"} <= keys
        await pilot.press("escape")
        assert isinstance(app.screen, ChatScreen)


async def test_add_contact_unknown_and_known(stack: Stack) -> None:
    app = _app(stack, "carol")
    async with app.run_test(size=SIZE) as pilot:
        screen = await online(pilot)
        contacts = screen.query_one(ContactList)
        await pilot.press("ctrl+n")
        assert isinstance(app.screen, AddContactScreen)
        await pilot.press("escape")
        assert isinstance(app.screen, ChatScreen)
        await pilot.press("ctrl+n")
        await _type(pilot, "nobody")
        await pilot.press("enter")
        await until(pilot, lambda: any("nobody" in str(n.message)
                                        for n in app._notifications))
        assert "nobody" not in contacts.handles()
        await pilot.press("ctrl+n")
        await _type(pilot, "alice")
        await pilot.press("enter")
        await until(pilot, lambda: "alice" in contacts.handles())
        assert screen.peer == "alice"


async def test_cycle_conversations(stack: Stack) -> None:
    app = _app(stack, "carol")
    async with app.run_test(size=SIZE) as pilot:
        screen = await online(pilot)
        handles = screen.query_one(ContactList).handles()
        if len(handles) < 2:
            await screen.messenger.add_contact("alice")
            screen.query_one(ContactList).set_contacts(screen.messenger.contacts())
        handles = screen.query_one(ContactList).handles()
        assert handles == ["alice", "bob"]
        first = screen.peer
        await pilot.press("ctrl+down")
        assert screen.peer != first
        await pilot.press("ctrl+up")
        assert screen.peer == first


async def test_verify_screen_marks_verified(stack: Stack) -> None:
    app = _app(stack)
    async with app.run_test(size=SIZE) as pilot:
        screen = await online(pilot)
        await pilot.press("ctrl+s")
        assert isinstance(app.screen, VerifyScreen)
        expected = screen.messenger.safety_number("bob")
        assert app.screen.number == expected
        assert len(expected.digits.replace(" ", "")) == 60
        await pilot.press("v")
        await until(pilot, lambda: isinstance(app.screen, ChatScreen))
        await until(pilot, lambda: next(c for c in screen.messenger.contacts()
                                         if c.handle == "bob").verified)
        await pilot.press("ctrl+s")
        await pilot.press("escape")
        assert isinstance(app.screen, ChatScreen)


async def test_search_opens_the_conversation(stack: Stack) -> None:
    app = _app(stack)
    async with app.run_test(size=SIZE) as pilot:
        screen = await online(pilot)
        await _type(pilot, "needle in a haystack")
        await pilot.press("enter")
        await until(pilot, lambda: "needle in a haystack" in screen.query_one(
            Conversation).texts())
        await pilot.press("ctrl+f")
        assert isinstance(app.screen, SearchScreen)
        await _type(pilot, "haystack")
        hits = app.screen.query_one("#hits", OptionList)
        await until(pilot, lambda: hits.option_count >= 1)
        await pilot.press("enter")  # focus the hits
        await pilot.press("enter")  # open the highlighted hit
        await until(pilot, lambda: isinstance(app.screen, ChatScreen))
        assert screen.peer == "bob"


async def test_export_writes_json(stack: Stack) -> None:
    app = _app(stack)
    async with app.run_test(size=SIZE) as pilot:
        await online(pilot)
        await pilot.press("ctrl+e")
        assert isinstance(app.screen, ExportScreen)
        await pilot.click("#json")
        await pilot.click("#export")
        path = stack.root / "exports" / "bob.json"
        await until(pilot, path.exists)
        exported = json.loads(Path(path).read_text())
        assert exported and {"id", "from", "to", "text", "keys"} <= set(exported[0])


async def test_otp_toggle_and_key_panel_toggle(stack: Stack) -> None:
    app = _app(stack)
    async with app.run_test(size=SIZE) as pilot:
        screen = await online(pilot)
        panel = screen.query_one(KeyPanel)
        await pilot.press("ctrl+o")
        await until(pilot, lambda: panel.status.mode == "otp")
        await _type(pilot, "one time pad message")
        await pilot.press("enter")
        conversation = screen.query_one(Conversation)
        await until(pilot, lambda: "one time pad message" in conversation.texts())
        line = next(m for m in conversation._lines.values()
                    if m.message.text == "one time pad message")
        assert line.message.mode == "otp"
        received = await asyncio.to_thread(stack.cli, "bob", "recv", "--json", check=True)
        otp = [json.loads(x) for x in received.stdout.splitlines()
               if json.loads(x)["text"] == "one time pad message"]
        assert otp and otp[0]["mode"] == "otp"
        await pilot.press("ctrl+o")
        await until(pilot, lambda: panel.status.mode == "ratchet")
        await pilot.press("ctrl+k")
        assert not panel.display
        await pilot.press("ctrl+k")
        assert panel.display


async def test_command_palette_opens(stack: Stack) -> None:
    app = _app(stack)
    async with app.run_test(size=SIZE) as pilot:
        await online(pilot)
        await pilot.press("ctrl+p")
        await until(pilot, lambda: isinstance(app.screen, CommandPalette))
        await _type(pilot, "verify")
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, VerifyScreen))


async def test_onboarding_validates_and_creates(stack: Stack, tmp_path: Path) -> None:
    from dataclasses import replace

    pki = stack.root / "kme" / "pki"
    config = replace(
        load_config(tmp_path / "dave", relay_url=stack.relay_url),
        kme_url=f"https://127.0.0.1:{stack.port_a}", kme_ca=str(pki / "ca.pem"),
    )
    from keysource.kme.pki import Pki

    paths = Pki(pki).issue_sae("sae-dave")
    config = replace(config, sae_id="sae-dave", sae_cert=str(paths.cert), sae_key=str(paths.key))
    app = QsecretApp(ProfileGate(config), export_dir=tmp_path / "exports")
    async with app.run_test(size=SIZE) as pilot:
        assert isinstance(app.screen, OnboardingScreen)
        error = app.screen.query_one("#error")
        await pilot.click("#handle")
        await _type(pilot, "dave")
        await pilot.click("#passphrase")
        await _type(pilot, "short")
        await pilot.click("#go")
        assert "at least 8" in str(error.render())
        app.screen.query_one("#passphrase", Input).value = "long-enough-1"
        await pilot.click("#confirm")
        await _type(pilot, "different-one")
        await pilot.click("#go")
        assert "differ" in str(error.render())
        confirm = app.screen.query_one("#confirm", Input)
        confirm.value = "long-enough-1"
        confirm.focus()
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, ChatScreen), timeout=30)
        await pilot.press("ctrl+q")
    # unlocking afterwards: a wrong passphrase is refused on screen, the right one opens
    app = QsecretApp(ProfileGate(config), export_dir=tmp_path / "exports")
    async with app.run_test(size=SIZE) as pilot:
        assert isinstance(app.screen, OnboardingScreen) and not app.screen.first_run
        await pilot.click("#passphrase")
        await _type(pilot, "wrong-passphrase")
        await pilot.press("enter")
        error = app.screen.query_one("#error")
        await until(pilot, lambda: "wrong passphrase" in str(error.render()))
        app.screen.query_one("#passphrase", Input).value = "long-enough-1"
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, ChatScreen), timeout=30)
        await pilot.press("ctrl+q")
