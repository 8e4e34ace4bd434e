"""First run (create a profile) and later runs (unlock it with the passphrase)."""

from __future__ import annotations

from textual import on, work
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.screen import Screen
from textual.widgets import Button, Input, Label, Static

from client.messenger.api import Messenger, MessengerError, ProfileGate

MIN_PASSPHRASE = 8


class OnboardingScreen(Screen[Messenger]):
    """Creates the profile on first run; otherwise asks for the passphrase."""

    BINDINGS = [("escape", "app.quit", "Quit")]

    def __init__(self, gate: ProfileGate) -> None:
        super().__init__()
        self.gate = gate
        self.first_run = not gate.profile_exists()

    def compose(self) -> ComposeResult:
        with Vertical(id="onboarding"):
            if self.first_run:
                yield Static("Welcome to qsecret", classes="title")
                yield Static(
                    "Every key you use mixes QKD key material, ML-KEM-768 and X25519.\n"
                    "Pick a handle others will find you by, and a passphrase that seals "
                    "your keys and history on this machine.",
                    classes="hint",
                )
                yield Label("Handle")
                yield Input(placeholder="alice", id="handle")
                yield Label("Passphrase")
                yield Input(password=True, id="passphrase")
                yield Label("Passphrase again")
                yield Input(password=True, id="confirm")
                yield Button("Create profile", variant="primary", id="go")
            else:
                yield Static("Unlock qsecret", classes="title")
                yield Label("Passphrase")
                yield Input(password=True, id="passphrase")
                yield Button("Unlock", variant="primary", id="go")
            yield Static("", id="error")

    @on(Button.Pressed, "#go")
    @on(Input.Submitted)
    def submit(self) -> None:
        error = self.query_one("#error", Static)
        passphrase = self.query_one("#passphrase", Input).value
        if self.first_run:
            handle = self.query_one("#handle", Input).value.strip()
            if not handle:
                error.update("Choose a handle.")
                return
            if len(passphrase) < MIN_PASSPHRASE:
                error.update(f"The passphrase needs at least {MIN_PASSPHRASE} characters.")
                return
            if passphrase != self.query_one("#confirm", Input).value:
                error.update("The two passphrases differ.")
                return
            error.update("Creating your keys and enrolling with the KME…")
            self.open_profile(handle, passphrase)
        else:
            error.update("Unlocking…")
            self.open_profile(None, passphrase)

    @work(exclusive=True)
    async def open_profile(self, handle: str | None, passphrase: str) -> None:
        error = self.query_one("#error", Static)
        try:
            if handle is None:
                messenger = await self.gate.unlock(passphrase)
            else:
                messenger = await self.gate.create(handle, passphrase)
        except MessengerError as exc:
            error.update(str(exc))
            self.query_one("#passphrase", Input).value = ""
            return
        self.dismiss(messenger)
