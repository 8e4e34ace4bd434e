"""A deterministic display fixture for the TUI's SVG snapshot tests — not a messenger.

The real ``MessengerService`` talks to a relay and a KME, so what it shows changes on
every run: clock times, ports, pool levels, key rates, QBER. A snapshot of that could
never match twice. ``StaticMessenger`` implements the ``client.messenger.api.Messenger``
protocol over fixed, in-memory data (fixed timestamps, fixed key-panel figures) so the
screens render the same pixels every time.

Only *appearance* is tested with it. *Behaviour* (sending, receiving, receipts,
verification, search, export, degraded keys, reconnects) is tested against the real
service and real relay/KME processes: tests/client/test_tui_pilot.py (Pilot),
tests/e2e/ (CLI) and tests/tui_tmux/ (the real ``qsecret chat`` binary in tmux).

Safety numbers and QR codes are not made up: the identities come from
``Identity.from_seed`` and go through the real ``safety_number``/``safety_qr``/``qr_text``.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import replace

from client.messenger.api import (
    Connection,
    ConnectionEvent,
    ContactView,
    Delivery,
    Event,
    KeyStatus,
    MessageView,
    MessengerError,
    SafetyNumber,
)
from client.protocol.identity import Identity, qr_text, safety_number, safety_qr

# Saturday 4 May 2024, 09:00:00 UTC: the conversation's clock (the tests pin TZ=UTC).
T0 = 1_714_813_200.0
RELAY_URL = "ws://127.0.0.1:8765"
KME = "sae-alice @ https://127.0.0.1:8441"
ALGORITHMS = ("ML-KEM-768", "X25519", "Ed25519 + ML-DSA-65", "AES-256-GCM")
FULL_SOURCES = "QKD+ML-KEM-768+X25519"
DEGRADED_SOURCES = "ML-KEM-768+X25519 (degraded: no QKD)"


def seeded_identity(handle: str) -> Identity:
    """The same identity for ``handle`` on every run (so the safety number is stable)."""
    seed = hashlib.sha256(b"qsecret snapshot identity " + handle.encode()).digest()
    return Identity.from_seed(seed)


def _message(n: int, peer: str, outgoing: bool, text: str, minutes: float,
             delivery: Delivery = Delivery.RECEIVED, sources: str = FULL_SOURCES,
             mode: str = "ratchet") -> MessageView:
    return MessageView(f"{peer}-{n:03d}", peer, outgoing, text, T0 + 60 * minutes, delivery,
                       sources, mode)


def _conversations() -> dict[str, list[MessageView]]:
    bob = [
        _message(1, "bob", True, "Hi Bob! Is the new link up?", 0, Delivery.READ),
        _message(2, "bob", False, "Yes: 12 km of fibre, QBER around 1%.", 1.5),
        _message(3, "bob", True, "Then the keys here mix QKD, ML-KEM-768 and X25519.", 2,
                 Delivery.READ),
        _message(4, "bob", False, "I compared our safety numbers on the phone; they match.", 4),
        _message(5, "bob", True, "Switching this conversation to the one-time pad.", 6,
                 Delivery.DELIVERED, "QKD one-time pad", "otp"),
        _message(6, "bob", True, "See you at the lab at ten.", 7, Delivery.SENT),
        _message(7, "bob", True, "Bring the spare detector.", 7.5, Delivery.PENDING),
    ]
    carol = [
        _message(1, "carol", False, "Are the key rates in the report final?", 20),
        _message(2, "carol", False, "I need them before noon.", 21),
    ]
    return {"bob": bob, "carol": carol, "dave": []}


class StaticMessenger:
    """Fixed data behind the Messenger protocol; ``link_alarm`` shows the degraded/eve view."""

    def __init__(self, handle: str = "alice", *, link_alarm: bool = False) -> None:
        self.handle = handle
        self.link_alarm = link_alarm
        self._callbacks: list[Callable[[Event], None]] = []
        self._messages = _conversations()
        self._contacts = {
            "bob": ContactView("bob", 0, verified=True, online=True),
            "carol": ContactView("carol", 2, verified=False, online=False),
            "dave": ContactView("dave", 0, verified=False, online=None),
        }
        self._modes = {"bob": "ratchet", "carol": "ratchet", "dave": "ratchet"}
        self._identities = {h: seeded_identity(h) for h in (handle, *self._contacts)}
        self._clock = T0 + 60 * 30

    def subscribe(self, callback: Callable[[Event], None]) -> None:
        self._callbacks.append(callback)

    def _emit(self, event: Event) -> None:
        for callback in self._callbacks:
            callback(event)

    async def start(self) -> None:
        self._emit(ConnectionEvent(Connection.ONLINE, RELAY_URL))

    async def stop(self) -> None:
        self._callbacks.clear()

    def contacts(self) -> list[ContactView]:
        views = []
        for handle in sorted(self._contacts):
            last = self._messages[handle][-1:] or None
            contact = self._contacts[handle]
            if last:
                contact = replace(contact, last_text=last[0].text, last_at=last[0].timestamp)
            views.append(contact)
        return views

    def history(self, peer: str, limit: int = 500) -> list[MessageView]:
        return list(self._messages.get(peer, []))[-limit:]

    async def add_contact(self, handle: str) -> ContactView:
        if handle in self._contacts:
            raise MessengerError(f"{handle} is already a contact")
        contact = ContactView(handle)
        self._contacts[handle] = contact
        self._messages[handle] = []
        self._modes[handle] = "ratchet"
        self._identities[handle] = seeded_identity(handle)
        return contact

    async def send(self, peer: str, text: str) -> MessageView:
        if peer not in self._contacts:
            raise MessengerError(f"{peer} is not a contact")
        self._clock += 60
        mode = self._modes[peer]
        message = MessageView(f"{peer}-{len(self._messages[peer]) + 1:03d}", peer, True, text,
                              self._clock, Delivery.PENDING,
                              "QKD one-time pad" if mode == "otp" else self._sources(), mode)
        self._messages[peer].append(message)
        return message

    async def mark_read(self, peer: str) -> None:
        if peer in self._contacts:
            self._contacts[peer] = replace(self._contacts[peer], unread=0)

    def safety_number(self, peer: str) -> SafetyNumber:
        if peer not in self._contacts:
            raise MessengerError(f"{peer} is not a contact")
        me, them = self._identities[self.handle].public, self._identities[peer].public
        return SafetyNumber(safety_number(self.handle, me, peer, them),
                            qr_text(safety_qr(self.handle, me, peer, them)))

    async def set_verified(self, peer: str, verified: bool) -> None:
        self._contacts[peer] = replace(self._contacts[peer], verified=verified)

    def _sources(self) -> str:
        return DEGRADED_SOURCES if self.link_alarm else FULL_SOURCES

    def key_status(self, peer: str | None = None) -> KeyStatus:
        mode = self._modes.get(peer or "", "ratchet")
        sources = ""
        if peer and self._messages.get(peer):
            sources = "QKD one-time pad" if mode == "otp" else self._sources()
        if self.link_alarm:
            return KeyStatus(
                pool_keys=0, pool_max=100_000, key_rate=0.0, qber=0.248,
                link_alarm="QBER 24.8% above 11%: blocks aborted (eavesdropper?)",
                sources=sources, degraded=bool(sources), mode=mode,
                algorithms=ALGORITHMS, kme=KME,
            )
        return KeyStatus(
            pool_keys=3410, pool_max=100_000, key_rate=249.3, qber=0.0103,
            sources=sources, degraded=False, mode=mode, algorithms=ALGORITHMS, kme=KME,
        )

    async def set_mode(self, peer: str, mode: str) -> None:
        if not self._messages.get(peer):
            raise MessengerError(f"no session with {peer}")
        self._modes[peer] = mode

    def search(self, query: str) -> list[MessageView]:
        needle = query.casefold().strip()
        if not needle:
            return []
        return [m for peer in sorted(self._messages) for m in self._messages[peer]
                if needle in m.text.casefold()]

    def export(self, peer: str, fmt: str) -> str:
        messages = self.history(peer)
        if fmt == "json":
            return json.dumps([{"id": m.message_id, "text": m.text, "time": m.timestamp}
                               for m in messages], indent=2)
        return "".join(f"[{time.strftime('%H:%M', time.gmtime(m.timestamp))}] {m.text}\n"
                       for m in messages)
