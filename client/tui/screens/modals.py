"""Small modal dialogs: add a contact, export a conversation."""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, RadioButton, RadioSet


class AddContactScreen(ModalScreen[str | None]):
    BINDINGS = [("escape", "dismiss(None)", "Back")]

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label("Add a contact by handle")
            yield Input(placeholder="bob", id="handle")
            yield Button("Add", variant="primary", id="add")

    @on(Input.Submitted)
    @on(Button.Pressed, "#add")
    def add(self) -> None:
        handle = self.query_one("#handle", Input).value.strip()
        if handle:
            self.dismiss(handle)


class ExportScreen(ModalScreen[str | None]):
    """Choose the export format; the app writes the file and says where."""

    BINDINGS = [("escape", "dismiss(None)", "Back")]

    def __init__(self, peer: str) -> None:
        super().__init__()
        self.peer = peer

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(f"Export the conversation with {self.peer}")
            with RadioSet(id="format"):
                yield RadioButton("Text", value=True, id="text")
                yield RadioButton("JSON", id="json")
            yield Button("Export", variant="primary", id="export")

    @on(Button.Pressed, "#export")
    def export(self) -> None:
        pressed = self.query_one("#format", RadioSet).pressed_button
        self.dismiss(pressed.id if pressed is not None else "text")
