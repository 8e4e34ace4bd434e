"""File transfers as rows with a progress bar, size, rate, ETA and state.

Every figure comes from the service's ``TransferView`` (rate and ETA included): the
TUI never times transfers itself, so what it shows matches the CLI and stays the same
when the screen is re-opened.
"""

from __future__ import annotations

import time

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widgets import ListItem, ListView, ProgressBar, Static

from client.messenger.api import TransferState, TransferView

STATE_LABELS = {
    TransferState.OFFERED: ("offered", "bold yellow"),
    TransferState.SENDING: ("sending", "bold cyan"),
    TransferState.WAITING: ("waiting", "yellow"),
    TransferState.COMPLETE: ("complete ✔", "bold green"),
    TransferState.DECLINED: ("declined", "grey50"),
    TransferState.CANCELLED: ("cancelled", "grey50"),
    TransferState.FAILED: ("failed ✗", "bold red"),
}


def format_bytes(count: float) -> str:
    """Decimal units, like the rate (MB/s), so the two can be compared at a glance."""
    if count < 1000:
        return f"{int(count)} B"
    for unit in ("kB", "MB", "GB"):
        count /= 1000
        if count < 1000:
            return f"{count:.1f} {unit}"
    return f"{count / 1000:.1f} TB"


def format_rate(bytes_per_s: float) -> str:
    if bytes_per_s <= 0:
        return "—"
    if bytes_per_s < 100_000:
        return f"{bytes_per_s / 1000:.1f} kB/s"
    return f"{bytes_per_s / 1_000_000:.1f} MB/s"


def format_eta(seconds: float | None) -> str:
    if seconds is None or seconds < 0:
        return "—"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}:{secs:02d}"


def transfer_size(view: TransferView) -> str:
    files = f"{view.files} file{'s' if view.files != 1 else ''}"
    return f"{format_bytes(view.total_bytes)}, {files}"


def can_accept(view: TransferView) -> bool:
    return not view.outgoing and view.state is TransferState.OFFERED


def can_cancel(view: TransferView) -> bool:
    """An incoming offer is declined, not cancelled; a finished transfer is just history."""
    return not view.state.finished and not can_accept(view)


def render_heading(view: TransferView) -> Text:
    text = Text()
    arrow, direction = ("↑", "to") if view.outgoing else ("↓", "from")
    text.append(f"{arrow} ", style="bold cyan" if view.outgoing else "bold magenta")
    text.append(view.title, style="bold")
    text.append(f"  {direction} ", style="grey50")
    text.append(view.peer, style="bold cyan" if view.outgoing else "bold magenta")
    text.append(f"  ({transfer_size(view)})", style="grey50")
    if view.started_at:
        text.append(f"  {time.strftime('%H:%M', time.localtime(view.started_at))}",
                    style="grey50")
    return text


def render_stats(view: TransferView) -> Text:
    """Size done/total, rate and ETA while moving; then the state and its detail."""
    text = Text()
    text.append(f"{format_bytes(view.done_bytes)} / {format_bytes(view.total_bytes)}")
    if view.state is TransferState.SENDING:
        text.append(f"  {format_rate(view.rate_bytes_per_s)}", style="cyan")
        text.append(f"  ETA {format_eta(view.eta_seconds)}", style="cyan")
    label, style = STATE_LABELS[view.state]
    text.append(f"  {label}", style=style)
    if view.state is TransferState.OFFERED:
        hint = "waiting for the peer to accept" if view.outgoing else "a accept · d decline"
        text.append(f"  {hint}", style="grey70")
    elif view.state is TransferState.WAITING:
        text.append("  resumes by itself", style="grey70")
    if view.detail:
        text.append(f"  {view.detail}", style="red" if view.state is TransferState.FAILED
                    else "grey70")
    return text


class TransferRow(ListItem):
    """One transfer: a heading line, then the bar with its figures; updated in place."""

    def __init__(self, view: TransferView) -> None:
        super().__init__(id=f"transfer-{view.transfer_id}")
        self.transfer = view
        self._painted = False

    def compose(self) -> ComposeResult:
        yield Static(render_heading(self.transfer), classes="transfer-heading")
        with Horizontal(classes="transfer-progress"):
            yield ProgressBar(total=self.transfer.total_bytes, show_eta=False)
            yield Static(render_stats(self.transfer), classes="transfer-stats")

    def on_mount(self) -> None:
        self._painted = True
        self.show(self.transfer)

    def show(self, view: TransferView) -> None:
        self.transfer = view
        for state in TransferState:
            self.set_class(view.state is state, f"state-{state.value}")
        self.set_class(view.outgoing, "outgoing")
        if not self._painted:
            return  # not composed yet: on_mount paints the latest view
        self.query_one(".transfer-heading", Static).update(render_heading(view))
        self.query_one(".transfer-stats", Static).update(render_stats(view))
        self.query_one(ProgressBar).update(total=view.total_bytes,
                                           progress=min(view.done_bytes, view.total_bytes))

    def percentage_text(self) -> str:
        """What the bar's percentage label shows (for tests and screen readers)."""
        return str(self.query_one("#percentage").render())

    def stats_text(self) -> str:
        return str(self.query_one(".transfer-stats", Static).render())


class TransferList(ListView):
    """Every transfer, both directions, oldest first; new ones are appended."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self._rows: dict[str, TransferRow] = {}

    def set_transfers(self, views: list[TransferView]) -> None:
        for view in sorted(views, key=lambda v: (v.started_at, v.transfer_id)):
            self.show_transfer(view)

    def show_transfer(self, view: TransferView) -> TransferRow:
        row = self._rows.get(view.transfer_id)
        if row is not None:
            row.show(view)
            return row
        row = TransferRow(view)
        self._rows[view.transfer_id] = row
        self.append(row)
        if self.index is None:
            self.index = 0
        return row

    def row(self, transfer_id: str) -> TransferRow | None:
        return self._rows.get(transfer_id)

    def selected(self) -> TransferView | None:
        item = self.highlighted_child
        return item.transfer if isinstance(item, TransferRow) else None

    def select(self, transfer_id: str) -> None:
        row = self._rows.get(transfer_id)
        if row is not None and row in self.children:
            self.index = list(self.children).index(row)


def render_transfer_line(view: TransferView) -> Text:
    """The one-line note a transfer leaves in its conversation (updated as it moves)."""
    line = Text()
    if view.started_at:
        line.append(f"{time.strftime('%H:%M', time.localtime(view.started_at))} ",
                    style="grey50")
    if view.outgoing:
        line.append("↑ you → ", style="bold cyan")
        line.append(f"{view.peer}: ", style="bold cyan")
    else:
        line.append(f"↓ {view.peer}: ", style="bold magenta")
    line.append(view.title, style="bold")
    line.append(f" ({transfer_size(view)})", style="grey50")
    label, style = STATE_LABELS[view.state]
    if view.state is TransferState.OFFERED:
        if view.outgoing:
            line.append("  offered, waiting for them to accept", style="yellow")
        else:
            line.append("  wants to send you this — ctrl+j to accept or decline",
                        style="bold yellow")
    elif view.state is TransferState.SENDING:
        line.append(f"  {round(view.fraction * 100)}% {format_rate(view.rate_bytes_per_s)}",
                    style="cyan")
    else:
        line.append(f"  {label}", style=style)
        if view.detail:
            line.append(f": {view.detail}", style="grey70")
    return line
