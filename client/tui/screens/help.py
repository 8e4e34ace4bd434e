"""Every key binding, generated from the bindings themselves so it never drifts."""

from __future__ import annotations

from rich.table import Table
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

EXTRA = [
    ("ctrl+p", "Command palette"),
    ("ctrl+q", "Quit"),
    ("tab / shift+tab", "Move focus"),
    ("up / down (in the message box)", "Message history"),
    ("enter", "Send the message / open the selected contact"),
    ("a / d / c (transfers view)", "Accept / decline / cancel a transfer"),
]


def bindings_table(bindings: list[Binding]) -> Table:
    table = Table(title="qsecret key bindings", expand=True)
    table.add_column("Key", style="bold cyan", no_wrap=True)
    table.add_column("Action")
    seen = set()
    for binding in bindings:
        if binding.description and binding.key not in seen:
            seen.add(binding.key)
            table.add_row(binding.key, binding.description)
    for key, description in EXTRA:
        if key not in seen:
            table.add_row(key, description)
    return table


class HelpScreen(ModalScreen[None]):
    BINDINGS = [("escape", "dismiss", "Back"), ("f1", "dismiss", "Back")]

    def __init__(self, bindings: list[Binding]) -> None:
        super().__init__()
        self.bindings_list = bindings

    def compose(self) -> ComposeResult:
        with VerticalScroll(classes="dialog", id="help"):
            yield Static(bindings_table(self.bindings_list))
            yield Static("Esc closes this help.", classes="hint")
