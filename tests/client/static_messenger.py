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

File transfers are the exception, for the TUI side only: ``StaticMessenger`` keeps
transfers in memory with the state rules of the protocol (only an incoming offer can
be accepted or declined, a finished transfer cannot be cancelled, ``send_files``
refuses paths that do not exist) and emits a ``TransferEvent`` on every change, so
tests/client/test_tui_transfers.py can drive the screens through offers, progress and
endings that a real transfer would take seconds (and a second user) to produce. The
transfer itself (chunks, hashes, spool, resume) is tested against the real service.

Safety numbers and QR codes are not made up: the identities come from
``Identity.from_seed`` and go through the real ``safety_number``/``safety_qr``/``qr_text``.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import replace

from client.messenger.api import (
    Connection,
    ConnectionEvent,
    ContactView,
    Delivery,
    Event,
    GroupView,
    KeyPath,
    KeyStatus,
    MessageView,
    MessengerError,
    SafetyNumber,
    TransferEvent,
    TransferState,
    TransferView,
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


def _transfer_id(n: int) -> str:
    return hashlib.sha256(f"qsecret snapshot transfer {n}".encode()).hexdigest()[:32]


def _transfers() -> dict[str, TransferView]:
    seeded = [
        TransferView(_transfer_id(1), "carol", False, ("key-rates.xlsx",), 1, 310_000,
                     310_000, TransferState.COMPLETE, started_at=T0 + 60 * 22,
                     paths=("/home/alice/Downloads/qsecret/carol/key-rates.xlsx",)),
        TransferView(_transfer_id(2), "dave", True, ("detector-photos",), 24, 182_000_000, 0,
                     TransferState.FAILED, started_at=T0 + 60 * 24,
                     detail="the relay's spool for dave is full; try again later"),
        TransferView(_transfer_id(3), "carol", True, ("run-1.csv", "run-2.csv", "run-3.csv"),
                     3, 9_600_000, 2_880_000, TransferState.WAITING, started_at=T0 + 60 * 25,
                     detail="carol is offline"),
        TransferView(_transfer_id(4), "bob", True, ("lab-notes.pdf",), 1, 48_200_000,
                     20_244_000, TransferState.SENDING, rate_bytes_per_s=2_400_000.0,
                     eta_seconds=11.6, started_at=T0 + 60 * 8),
    ]
    return {t.transfer_id: t for t in seeded}


def _size(path: str, limit: int = 100_000) -> tuple[int, int]:
    """(files, bytes) of a file or a folder tree, looking at no more than ``limit`` files."""
    if os.path.isfile(path):
        return 1, os.path.getsize(path)
    files = size = 0
    for folder, _, names in os.walk(path):
        for name in names:
            files += 1
            size += os.path.getsize(os.path.join(folder, name))
            if files >= limit:
                return files, size
    return files, size


class StaticMessenger:
    """Fixed data behind the Messenger protocol; ``link_alarm`` shows the degraded/eve view."""

    def __init__(self, handle: str = "alice", *, link_alarm: bool = False,
                 key_paths: dict[str, KeyPath] | None = None) -> None:
        self.handle = handle
        self.link_alarm = link_alarm
        self.key_paths = key_paths or {}  # peer -> the path its keys took (network view)
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
        self._transfers = _transfers()
        self._next_transfer = len(self._transfers) + 1
        self.sent_files: list[tuple[str, list[str]]] = []  # every send_files call, in order
        self.refuse_sends: str | None = None  # set: send_files fails with this message
        self.stopped = False

    def subscribe(self, callback: Callable[[Event], None]) -> None:
        self._callbacks.append(callback)

    def _emit(self, event: Event) -> None:
        for callback in self._callbacks:
            callback(event)

    async def start(self) -> None:
        self._emit(ConnectionEvent(Connection.ONLINE, RELAY_URL))

    async def stop(self) -> None:
        self.stopped = True
        self._callbacks.clear()

    async def caught_up(self, stall_timeout: float = 30.0) -> None:
        return None  # nothing is ever queued at a relay it does not have

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
            key_path=self.key_paths.get(peer or ""),
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

    # -- file transfers ----------------------------------------------------------------

    def transfers(self) -> list[TransferView]:
        return sorted(self._transfers.values(), key=lambda t: (t.started_at, t.transfer_id))

    def _new_transfer(self, peer: str, outgoing: bool, names: tuple[str, ...], files: int,
                      total: int) -> TransferView:
        self._clock += 60
        transfer = TransferView(_transfer_id(self._next_transfer), peer, outgoing, names, files,
                                total, 0, TransferState.OFFERED, started_at=self._clock)
        self._next_transfer += 1
        return self._store(transfer)

    def _store(self, transfer: TransferView) -> TransferView:
        self._transfers[transfer.transfer_id] = transfer
        self._emit(TransferEvent(transfer))
        return transfer

    def _get(self, transfer_id: str) -> TransferView:
        try:
            return self._transfers[transfer_id]
        except KeyError:
            raise MessengerError(f"no transfer {transfer_id}") from None

    async def send_files(self, peer: str, paths: list[str]) -> TransferView:
        if peer not in self._contacts:
            raise MessengerError(f"{peer} is not a contact")
        if not paths:
            raise MessengerError("nothing to send")
        if self.refuse_sends:
            raise MessengerError(self.refuse_sends)
        for path in paths:
            if not os.path.exists(path):
                raise MessengerError(f"no such file or folder: {path}")
        self.sent_files.append((peer, list(paths)))
        sizes = [_size(path) for path in paths]
        names = tuple(os.path.basename(os.path.normpath(path)) for path in paths)
        return self._new_transfer(peer, True, names, sum(f for f, _ in sizes),
                                  sum(b for _, b in sizes))

    async def accept_transfer(self, transfer_id: str) -> TransferView:
        transfer = self._get(transfer_id)
        if transfer.outgoing or transfer.state is not TransferState.OFFERED:
            raise MessengerError(f"{transfer.title} is not an offer waiting for you")
        return self._store(replace(transfer, state=TransferState.SENDING))

    async def decline_transfer(self, transfer_id: str, reason: str = "declined") -> None:
        transfer = self._get(transfer_id)
        if transfer.outgoing or transfer.state is not TransferState.OFFERED:
            raise MessengerError(f"{transfer.title} is not an offer waiting for you")
        self._store(replace(transfer, state=TransferState.DECLINED, detail=reason))

    async def cancel_transfer(self, transfer_id: str) -> None:
        transfer = self._get(transfer_id)
        if transfer.state.finished:
            raise MessengerError(f"{transfer.title} is already {transfer.state.value}")
        self._store(replace(transfer, state=TransferState.CANCELLED, detail="cancelled by you"))

    def group_list(self) -> list[GroupView]:
        return []  # no groups: the snapshots show the one-to-one screens

    def group_history(self, group: str, limit: int = 500) -> list[MessageView]:
        raise MessengerError(f"no group called {group!r}")

    def group_unread(self) -> dict[str, int]:
        return {}

    def mark_group_shown(self, group: str) -> None:
        raise MessengerError(f"no group called {group!r}")

    # -- what the peer or the network would do (test helpers) --------------------------

    def offer_incoming(self, peer: str, names: tuple[str, ...], total_bytes: int,
                       files: int = 1) -> TransferView:
        """``peer`` offers files to us: an incoming OFFERED transfer and its event."""
        return self._new_transfer(peer, False, names, files, total_bytes)

    def progress(self, transfer_id: str, done_bytes: int, rate_bytes_per_s: float = 0.0,
                 eta_seconds: float | None = None,
                 state: TransferState = TransferState.SENDING, detail: str = "",
                 paths: tuple[str, ...] = ()) -> TransferView:
        """The transfer moved (or ended, with ``state``): update it and emit the event."""
        transfer = self._get(transfer_id)
        return self._store(replace(transfer, done_bytes=done_bytes,
                                   rate_bytes_per_s=rate_bytes_per_s, eta_seconds=eta_seconds,
                                   state=state, detail=detail, paths=paths or transfer.paths))
