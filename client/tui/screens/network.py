"""The QKD network, live: every link's km, key rate, QBER, free keys and state (the alarm of an
attacked link stands out), sparklines of each link's rate and QBER over the last minutes,
every node's SAEs and relay counts, and the path the open conversation's keys took.

The figures are those of ``qsecret network status`` (keysource.kme.network_status: the
network's ``network.json`` and each node's ``/kme/v1/stats``), asked with the profile's own
SAE certificate, in a worker thread every REFRESH_S so the screen never waits on a node.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static

if TYPE_CHECKING:
    from client.messenger.api import KeyPath, Messenger
    from keysource.kme.network_status import NetworkSource, NetworkView

REFRESH_S = 2.0
HISTORY = 90  # samples per sparkline: three minutes at REFRESH_S
BARS = "▁▂▃▄▅▆▇█"
LINK_COLUMNS = ("link", "km", "keys/s", "rate", "QBER", "QBER trend", "free keys", "state")
NODE_COLUMNS = ("node", "role", "SAEs", "relayed", "forwarded", "received", "refused",
                "state")


def sparkline(values: list[float], top: float | None = None, width: int = 24) -> str:
    """The last ``width`` values as bars (0 at the bottom, ``top`` or their max at the top)."""
    shown = values[-width:]
    if not shown:
        return ""
    peak = top if top is not None else max(shown)
    if peak <= 0:
        return BARS[0] * len(shown)
    return "".join(BARS[min(len(BARS) - 1, int(v / peak * (len(BARS) - 1) + 0.5))]
                   for v in shown)


def describe_path(path: KeyPath | None) -> str:
    return path.describe() if path is not None else "no QKD keys fetched yet"


class NetworkScreen(Screen[None]):
    """Opened from the chat screen (F2, or the command palette)."""

    BINDINGS = [Binding("escape", "dismiss(None)", "Back"),
                Binding("f2", "dismiss(None)", "Back", show=False)]
    DEFAULT_CSS = """
    #network { padding: 1 2; }
    #network DataTable { height: auto; margin: 0 0 1 0; }
    #network-alarm { color: $error; text-style: bold; }
    """

    def __init__(self, source: NetworkSource | None, messenger: Messenger | None = None,
                 peer: str | None = None) -> None:
        super().__init__()
        self.source = source
        self.messenger = messenger
        self.peer = peer
        self.view: NetworkView | None = None
        self.rates: dict[str, deque[float]] = {}
        self.qbers: dict[str, deque[float]] = {}

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="network"):
            yield Static("QKD network", id="network-title", classes="title")
            yield Static("", id="network-alarm")
            yield Static("", id="network-path")
            yield DataTable(id="network-links", cursor_type="row", zebra_stripes=True)
            yield DataTable(id="network-nodes", cursor_type="row", zebra_stripes=True)
            yield Static(f"Refreshed every {REFRESH_S:.0f} s · Esc back", classes="hint")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#network-links", DataTable).add_columns(*LINK_COLUMNS)
        self.query_one("#network-nodes", DataTable).add_columns(*NODE_COLUMNS)
        self._show_path()
        if self.source is None:
            self.query_one("#network-title", Static).update(
                "QKD network: this profile's KME has no CA (a plain-HTTP KME), so there is "
                "no network to show")
            return
        self.refresh_figures()
        self.set_interval(REFRESH_S, self.refresh_figures)

    @work(thread=True, exclusive=True, group="network-status")
    def refresh_figures(self) -> None:
        """Ask every node (blocking I/O, in a thread); the screen updates on the UI thread."""
        from keysource.kme.network_status import NetworkUnknown

        assert self.source is not None
        try:
            view = self.source.fetch()
        except NetworkUnknown as exc:
            self.app.call_from_thread(self._unknown, str(exc))
            return
        except (KeyError, TypeError, ValueError) as exc:  # a node's figures in another shape
            self.app.call_from_thread(self._unknown, f"unreadable figures ({exc!r})")
            return
        self.app.call_from_thread(self.show_view, view)

    def _unknown(self, why: str) -> None:
        if not self.is_attached:  # dismissed while the figures were being fetched
            return
        self.query_one("#network-title", Static).update(
            f"QKD network: {why} (or set $QSECRET_NETWORK_DIR to its --data directory)")

    def show_view(self, view: NetworkView) -> None:
        """New figures: the tables, the sparklines' next sample, the alarm line."""
        import time

        if not self.is_attached:  # dismissed while the figures were being fetched
            return
        self.view = view
        self.query_one("#network-title", Static).update(
            f"QKD network {view.name}: {view.nodes_up}/{len(view.nodes)} nodes up, "
            f"{len(view.links)} links · {time.strftime('%H:%M:%S', time.localtime(view.at))}")
        links = self.query_one("#network-links", DataTable)
        links.clear()
        alarms = []
        for link in view.links:
            rates = self.rates.setdefault(link.name, deque(maxlen=HISTORY))
            qbers = self.qbers.setdefault(link.name, deque(maxlen=HISTORY))
            rates.append(link.rate or 0.0)
            qbers.append(link.qber or 0.0)
            style = "bold red" if link.alarm else ("yellow" if link.state != "up" else "")
            qber = "-" if link.qber is None else f"{link.qber * 100:.2f}%"
            links.add_row(
                link.name, f"{link.km:.0f}" + (" ☄" if link.medium == "free-space" else ""),
                "-" if link.rate is None else f"{link.rate:.1f}", sparkline(list(rates)),
                Text(qber, style=style), Text(sparkline(list(qbers), top=0.25), style=style),
                "-" if link.free is None else str(link.free), Text(link.state, style=style),
                key=link.name)
            if link.alarm:
                alarms.append(f"⚠ ALARM on {link.name}: QBER {qber} (an eavesdropper?); "
                              "relays avoid it")
        self.query_one("#network-alarm", Static).update("\n".join(alarms))
        nodes = self.query_one("#network-nodes", DataTable)
        nodes.clear()
        for node in view.nodes:
            counts = ("-",) * 4 if node.down is not None else (
                str(node.relayed), str(node.forwarded), str(node.received), str(node.refused))
            state = Text("up") if node.down is None else Text(f"down: {node.down}",
                                                              style="bold red")
            nodes.add_row(node.name, node.role, ", ".join(node.saes) or "-", *counts, state,
                          key=node.name)
        self._show_path()

    def _show_path(self) -> None:
        if self.messenger is None or self.peer is None or self.messenger.stopped:
            text = "Keys: open a conversation to see the path its keys took."
        else:
            status = self.messenger.key_status(self.peer)
            text = f"Keys with {self.peer}: {describe_path(status.key_path)}"
            back = status.key_path_back
            if back is not None and (status.key_path is None or tuple(
                    reversed(back.nodes)) != status.key_path.nodes):
                text += f"\n  and back: {back.describe()}"
        self.query_one("#network-path", Static).update(text)
