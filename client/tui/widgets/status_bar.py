"""Connection state (with reconnect countdown) and who we are."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from client.messenger.api import Connection, ConnectionEvent

STYLES = {
    Connection.ONLINE: ("● online", "green"),
    Connection.CONNECTING: ("◌ connecting", "yellow"),
    Connection.OFFLINE: ("○ offline", "red"),
}


class StatusBar(Static):
    def __init__(self, handle: str, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.handle = handle
        self.state = ConnectionEvent(Connection.CONNECTING)

    def on_mount(self) -> None:
        self.show(self.state)

    def show(self, event: ConnectionEvent) -> None:
        self.state = event
        label, style = STYLES[event.state]
        text = Text()
        text.append(f" @{self.handle}  ", style="bold")
        text.append(label, style=style)
        if event.detail:
            text.append(f"  {event.detail}", style="grey70")
        if event.retry_in is not None:
            text.append(f"  (retry in {event.retry_in:.0f}s)", style="grey70")
        self.update(text)
