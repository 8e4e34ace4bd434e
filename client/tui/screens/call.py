"""A call on screen: who, how long, the keys, the sound levels, the network; and the ring.

:class:`CallScreen` follows one call (refreshed four times a second: the live figures change
all the time, not only when the call does); ``m`` mutes the microphone, ``r`` rekeys now with
fresh QKD keys (the callee asks the caller to), ``h`` hangs up and
``escape`` goes back to the chats while the call goes on (``ctrl+g`` there comes back).
:class:`IncomingCallScreen` rings: accept or decline.
"""

from __future__ import annotations

import time

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen, Screen
from textual.widgets import Button, Footer, Header, Label, Static

from client.call.levels import SILENCE_DBFS, MeteredSink, MeteredSource
from client.messenger.api import CallState, CallView, Messenger, MessengerError

FULL_SOURCES = "QKD+"
NO_SOUND_HINT = ("calls in the TUI need a microphone and a speaker (pip install "
                 "'qsecret[audio]'; Debian: apt install libportaudio2). Without them: "
                 "qsecret call HANDLE --in FILE.wav --out FILE.wav, and qsecret answer")
METER_CELLS = 30


def meter(dbfs: float) -> str:
    """A bar from -60 dBFS (empty) to 0 dBFS (full) and the figure."""
    filled = round(max(0.0, min(1.0, (dbfs + 60.0) / 60.0)) * METER_CELLS)
    figure = "  -∞ dB" if dbfs <= SILENCE_DBFS else f"{dbfs:5.0f} dB"
    return "█" * filled + "░" * (METER_CELLS - filled) + figure


def describe_state(view: CallView, now: float) -> str:
    if view.state is CallState.ACTIVE and view.answered_at is not None:
        seconds = int(now - view.answered_at)
        return f"connected {seconds // 60:02d}:{seconds % 60:02d}"
    if view.state is CallState.ENDED:
        who = view.peer if view.ended_by_peer else "you"
        return f"ended: {view.reason or 'hung up'}" + (f" ({who})" if view.reason else "")
    if view.state is CallState.RINGING:
        return f"ringing at {view.peer}..." if view.outgoing else f"{view.peer} is calling"
    return f"calling {view.peer}..."


def describe_network(stats: dict[str, object]) -> str:
    if "received" not in stats:
        return "no media yet"
    round_trip = stats.get("media_round_trip_ms")
    rtt = f"{round_trip} ms" if round_trip is not None else "-"
    return (f"loss {float(stats.get('loss', 0.0)):.1%}   jitter {stats.get('jitter_ms', 0)} ms   "
            f"round trip {rtt}   playout delay {stats.get('playout_delay_ms', 0)} ms   "
            f"FEC recovered {stats.get('recovered_fec', 0)}   "
            f"refused frames {stats.get('refused_total', 0)}")


class CallScreen(Screen[None]):
    BINDINGS = [
        Binding("m", "mute", "Mute"),
        Binding("r", "rekey", "Rekey now"),
        Binding("h", "hang_up", "Hang up"),
        Binding("escape", "back", "Back to chats"),
    ]

    def __init__(self, messenger: Messenger, view: CallView, source: MeteredSource,
                 sink: MeteredSink) -> None:
        super().__init__()
        self.messenger = messenger
        self.view = view
        self.source = source
        self.sink = sink

    @property
    def call_id(self) -> str:
        return self.view.call_id

    def compose(self) -> ComposeResult:
        yield Header()
        with Vertical(id="call"):
            yield Label(f"Call with {self.view.peer}", classes="title", id="call-peer")
            yield Static(id="call-state")
            yield Static(id="call-keys")
            yield Static(id="call-mic")
            yield Static(id="call-speaker")
            yield Static(id="call-network")
        yield Footer()

    def on_mount(self) -> None:
        self.refresh_view()
        self.set_interval(0.25, self.refresh_view)

    def refresh_view(self) -> None:
        if self.messenger.stopped:
            return
        try:
            self.view = self.messenger.call_view(self.call_id)
        except MessengerError:
            return
        view = self.view
        self.query_one("#call-state", Static).update(describe_state(view, time.time()))
        sources = view.sources or "keys not agreed yet"
        mark = "" if not view.sources or view.sources.startswith(FULL_SOURCES) else "  ⚠ degraded"
        self.query_one("#call-keys", Static).update(
            f"keys {sources}{mark}   rekeys {view.rekeys}")
        muted = "  (muted)" if self.source.muted else ""
        self.query_one("#call-mic", Static).update(f"you   {meter(self.source.level)}{muted}")
        self.query_one("#call-speaker", Static).update(f"them  {meter(self.sink.level)}")
        self.query_one("#call-network", Static).update(describe_network(view.stats))

    def action_mute(self) -> None:
        self.source.muted = not self.source.muted
        self.refresh_view()

    def action_back(self) -> None:
        self.app.pop_screen()

    @work(group="call")
    async def action_rekey(self) -> None:
        try:
            self.view = await self.messenger.rekey_call(self.call_id)
        except MessengerError as exc:  # not active, or a rekey is already under way
            self.notify(str(exc), severity="warning")
            return
        self.notify("rekeying with fresh QKD keys")
        self.refresh_view()

    @work(group="call")
    async def action_hang_up(self) -> None:
        if self.view.state is CallState.ENDED:
            self.app.pop_screen()
            return
        try:
            self.view = await self.messenger.hang_up(self.call_id)
        except MessengerError as exc:  # it ended meanwhile
            self.notify(str(exc), severity="warning")
        self.refresh_view()


class IncomingCallScreen(ModalScreen[bool]):
    """Ringing: True to answer, False to decline."""

    BINDINGS = [
        Binding("a", "answer", "Answer"),
        Binding("d", "decline", "Decline"),
        Binding("escape", "decline", "Decline", show=False),
    ]

    def __init__(self, view: CallView) -> None:
        super().__init__()
        self.view = view

    @property
    def call_id(self) -> str:
        return self.view.call_id

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog", id="ringing"):
            yield Label(f"{self.view.peer} is calling", classes="title")
            with Horizontal():
                yield Button("Answer (a)", variant="success", id="answer")
                yield Button("Decline (d)", variant="error", id="decline")

    @on(Button.Pressed, "#answer")
    def action_answer(self) -> None:
        self.dismiss(True)

    @on(Button.Pressed, "#decline")
    def action_decline(self) -> None:
        self.dismiss(False)
