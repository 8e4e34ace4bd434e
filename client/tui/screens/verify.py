"""Compare the safety number (digits and QR code) with the peer, then mark verified."""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import Button, Footer, Static

from client.messenger.api import SafetyNumber


class VerifyScreen(Screen[bool | None]):
    BINDINGS = [("escape", "dismiss(None)", "Back"), ("v", "verified", "Mark verified")]

    def __init__(self, peer: str, number: SafetyNumber, verified: bool) -> None:
        super().__init__()
        self.peer, self.number, self.verified = peer, number, verified

    def compose(self) -> ComposeResult:
        with Vertical(id="verify"):
            yield Static(f"Safety number with {self.peer}", classes="title")
            yield Static(
                "Compare these digits with your contact in person or on a call, or scan "
                "their QR code. If they match, nobody is in the middle.",
                classes="hint",
            )
            yield Static(self.number.digits, id="digits")
            yield Static(self.number.qr_text, id="qr")
            state = "verified ✔" if self.verified else "not verified"
            yield Static(f"Currently: {state}", id="state")
            with Horizontal(classes="buttons"):
                yield Button("They match: mark verified", variant="success", id="yes")
                yield Button("Clear verification", variant="warning", id="no")
                yield Button("Back", id="back")
        yield Footer()

    def action_verified(self) -> None:
        self.dismiss(True)

    @on(Button.Pressed, "#yes")
    def yes(self) -> None:
        self.dismiss(True)

    @on(Button.Pressed, "#no")
    def no(self) -> None:
        self.dismiss(False)

    @on(Button.Pressed, "#back")
    def back(self) -> None:
        self.dismiss(None)
