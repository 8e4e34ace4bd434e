"""Scrollback of one conversation with timestamps and delivery state."""

from __future__ import annotations

import time

from rich.text import Text
from textual.containers import VerticalScroll
from textual.widgets import Static

from client.messenger.api import Delivery, GroupCounts, MessageView, TransferView
from client.tui.widgets.transfer_list import render_transfer_line

DELIVERY_MARKS = {
    Delivery.PENDING: ("…", "grey50"),
    Delivery.SENT: ("✓", "grey70"),
    Delivery.DELIVERED: ("✓✓", "grey70"),
    Delivery.READ: ("✓✓ read", "cyan"),  # not told apart by colour alone
    Delivery.FAILED: ("✗", "red"),
    Delivery.RECEIVED: ("", ""),
}


def render_message(message: MessageView) -> Text:
    stamp = time.strftime("%H:%M", time.localtime(message.timestamp))
    line = Text()
    line.append(f"{stamp} ", style="grey50")
    who = "me" if message.outgoing else message.peer
    line.append(f"{who}: ", style="bold cyan" if message.outgoing else "bold magenta")
    line.append(message.text)
    if message.receipts is not None:  # our group message: how many got and read it
        counts = message.receipts
        style = "cyan" if counts.recipients and counts.read == counts.recipients else "grey70"
        line.append(f" {counts.describe()}", style=style)
    else:
        mark, style = DELIVERY_MARKS[message.delivery]
        if mark:
            line.append(f" {mark}", style=style)
    if message.mode == "otp":
        line.append(" [OTP]", style="bold yellow")
    return line


class MessageLine(Static):
    def __init__(self, message: MessageView) -> None:
        super().__init__(render_message(message), classes="outgoing" if message.outgoing else "")
        self.message = message

    def set_delivery(self, delivery: Delivery) -> None:
        self.message = MessageView(**{**self.message.__dict__, "delivery": delivery})
        self.update(render_message(self.message))

    def set_receipts(self, counts: GroupCounts) -> None:
        self.message = MessageView(**{**self.message.__dict__, "receipts": counts})
        self.update(render_message(self.message))


class TransferLine(Static):
    """A file transfer with this peer, shown among the messages and updated in place."""

    def __init__(self, transfer: TransferView) -> None:
        super().__init__(render_transfer_line(transfer),
                         classes="transfer-line outgoing" if transfer.outgoing else "transfer-line")
        self.transfer = transfer

    def show(self, transfer: TransferView) -> None:
        self.transfer = transfer
        self.update(render_transfer_line(transfer))


class NoteLine(Static):
    """A line about the conversation itself, e.g. a group's membership change."""

    def __init__(self, text: str, at: float) -> None:
        stamp = time.strftime("%H:%M", time.localtime(at))
        line = Text()
        line.append(f"{stamp} ", style="grey50")
        line.append(f"— {text} —", style="italic yellow")
        super().__init__(line, classes="note-line")
        self.text = text


class Conversation(VerticalScroll):
    """Messages (and file transfers) of the open conversation; updated in place."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.peer: str | None = None
        self._lines: dict[str, MessageLine] = {}
        self._transfers: dict[str, TransferLine] = {}
        self._notes: list[NoteLine] = []

    def show(self, peer: str | None, messages: list[MessageView],
             transfers: list[TransferView] | None = None,
             notes: list[tuple[float, str]] | None = None) -> None:
        """Show one conversation: ``peer`` is the contact's handle or ``#group``; ``notes``
        are (time, text) lines among the messages, e.g. a group's membership changes."""
        self.peer = peer
        self.remove_children()
        self._lines = {}
        self._transfers = {}
        self._notes = []
        if peer is None:
            self.mount(Static("No conversation open. Ctrl+N adds a contact.", classes="hint"))
            return
        if not messages and not transfers:
            self.mount(Static(f"No messages with {peer} yet. Say hello.", classes="hint"))
        timeline: list[tuple[float, int, MessageView | TransferView | tuple[float, str]]] = [
            (m.timestamp, 1, m) for m in messages]
        timeline += [(t.started_at, 2, t) for t in transfers or []]
        timeline += [(note[0], 0, note) for note in notes or []]
        for _, _, item in sorted(timeline, key=lambda entry: entry[:2]):
            if isinstance(item, MessageView):
                self.add(item, scroll=False)
            elif isinstance(item, TransferView):
                self.show_transfer(item, scroll=False)
            else:
                self.add_note(item[1], item[0], scroll=False)
        self.scroll_end(animate=False)

    def add_note(self, text: str, at: float, scroll: bool = True) -> None:
        line = NoteLine(text, at)
        self._notes.append(line)
        self.mount(line)
        if scroll:
            self.scroll_end(animate=False)

    def notes(self) -> list[str]:
        return [line.text for line in self._notes]

    def show_transfer(self, transfer: TransferView, scroll: bool = True) -> None:
        """Add the transfer's line, or update it if it is already shown."""
        line = self._transfers.get(transfer.transfer_id)
        if line is not None:
            line.show(transfer)
            return
        for hint in self.query(".hint"):
            hint.remove()
        line = TransferLine(transfer)
        self._transfers[transfer.transfer_id] = line
        self.mount(line)
        if scroll:
            self.scroll_end(animate=False)

    def transfer_texts(self) -> list[str]:
        return [str(line.render()) for line in self._transfers.values()]

    def add(self, message: MessageView, scroll: bool = True) -> None:
        if message.message_id in self._lines:
            return
        for hint in self.query(".hint"):
            hint.remove()
        line = MessageLine(message)
        self._lines[message.message_id] = line
        self.mount(line)
        if scroll:
            self.scroll_end(animate=False)

    def set_delivery(self, message_id: str, delivery: Delivery) -> None:
        line = self._lines.get(message_id)
        if line is not None:
            line.set_delivery(delivery)

    def set_receipts(self, message_id: str, counts: GroupCounts) -> None:
        """Our group message's delivered/read counts moved."""
        line = self._lines.get(message_id)
        if line is not None:
            line.set_receipts(counts)

    def line_text(self, message_id: str) -> str:
        """The rendered line of one message (what the user sees), "" if not shown."""
        line = self._lines.get(message_id)
        return render_message(line.message).plain if line is not None else ""

    def texts(self) -> list[str]:
        return [line.message.text for line in self._lines.values()]
