"""Every file transfer, both directions, with live progress; accept, decline or cancel."""

from __future__ import annotations

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import Screen
from textual.widgets import Footer, ListView, Static

from client.messenger.api import Messenger, MessengerError, TransferView
from client.tui.widgets.transfer_list import TransferList, can_accept, can_cancel

EMPTY_HINT = "No file transfers yet. In a conversation, Ctrl+T sends files."
KEYS_HINT = "↑/↓ select · a accept · d decline · c cancel · Esc back"


class TransfersScreen(Screen[None]):
    """Fed by the chat screen with every TransferEvent while it is open."""

    BINDINGS = [
        Binding("a", "accept", "Accept"),
        Binding("d", "decline", "Decline"),
        Binding("c", "cancel_transfer", "Cancel transfer"),
        Binding("escape", "dismiss(None)", "Back"),
    ]

    def __init__(self, messenger: Messenger) -> None:
        super().__init__()
        self.messenger = messenger

    def compose(self) -> ComposeResult:
        with Vertical(id="transfers"):
            yield Static("File transfers", classes="title")
            yield TransferList(id="transfer-list")
            yield Static("", id="transfers-hint", classes="hint")
        yield Footer()

    def on_mount(self) -> None:
        transfers = self.query_one(TransferList)
        views = self.messenger.transfers()
        transfers.set_transfers(views)
        waiting = [t for t in views if can_accept(t)]
        if waiting:  # open on the oldest offer that waits for an answer
            transfers.select(min(waiting, key=lambda t: t.started_at).transfer_id)
        self._update_hint()
        transfers.focus()

    def show_transfer(self, transfer: TransferView) -> None:
        """A TransferEvent arrived (or an action returned): add or update its row."""
        self.query_one(TransferList).show_transfer(transfer)
        self._update_hint()
        self.refresh_bindings()

    def _update_hint(self) -> None:
        rows = self.query_one(TransferList)
        self.query_one("#transfers-hint", Static).update(
            KEYS_HINT if rows.children else EMPTY_HINT)

    @on(ListView.Highlighted, "#transfer-list")
    def highlighted(self) -> None:
        self.refresh_bindings()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """Only the keys that mean something for the selected transfer are offered."""
        if action not in ("accept", "decline", "cancel_transfer"):
            return True
        selected = self.query_one(TransferList).selected()
        if selected is None:
            return False
        if action == "cancel_transfer":
            return can_cancel(selected)
        return can_accept(selected)

    def action_accept(self) -> None:
        selected = self.query_one(TransferList).selected()
        if selected is not None and can_accept(selected):
            self.accept(selected.transfer_id)

    def action_decline(self) -> None:
        selected = self.query_one(TransferList).selected()
        if selected is not None and can_accept(selected):
            self.decline(selected.transfer_id)

    def action_cancel_transfer(self) -> None:
        selected = self.query_one(TransferList).selected()
        if selected is not None and can_cancel(selected):
            self.cancel(selected.transfer_id)

    @work(group="transfer-action")
    async def accept(self, transfer_id: str) -> None:
        try:
            transfer = await self.messenger.accept_transfer(transfer_id)
        except MessengerError as exc:
            self.notify(str(exc), title="Could not accept", severity="error", timeout=8)
            return
        self.show_transfer(transfer)

    @work(group="transfer-action")
    async def decline(self, transfer_id: str) -> None:
        try:
            await self.messenger.decline_transfer(transfer_id)
        except MessengerError as exc:
            self.notify(str(exc), title="Could not decline", severity="error", timeout=8)
            return
        self._reload(transfer_id)

    @work(group="transfer-action")
    async def cancel(self, transfer_id: str) -> None:
        try:
            await self.messenger.cancel_transfer(transfer_id)
        except MessengerError as exc:
            self.notify(str(exc), title="Could not cancel", severity="error", timeout=8)
            return
        self._reload(transfer_id)

    def _reload(self, transfer_id: str) -> None:
        """Show the service's view after an action that returns none (its event may lag)."""
        for transfer in self.messenger.transfers():
            if transfer.transfer_id == transfer_id:
                self.show_transfer(transfer)
                return
