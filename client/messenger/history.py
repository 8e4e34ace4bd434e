"""A conversation's history as the UIs see it: texts with their delivery state, unread
messages, search and export. Reads only: it never changes the store."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Protocol

from client.call.signalling import CallMessage, Kind, SignallingError
from client.store.store import HistoryEntry

from . import payload as payloads
from .api import ConversationId, Delivery, MessageView

OTP_LABEL = "QKD one-time pad"
MAX_ENTRIES = 2000


def call_line(body: payloads.CallPayload, peer: str, outgoing: bool,
              label: str) -> MessageView | None:
    """A missed or refused call as a line of the conversation (the other call messages are
    not shown): the callee was offline, did not answer in time, or refused the caller (who
    is not a contact)."""
    try:
        message = CallMessage.decode(body.data)
    except SignallingError:
        return None
    why = f" ({message.reason})" if message.reason else ""
    if message.kind is Kind.DECLINE and message.reason:  # refused, e.g. not a contact
        text = f"refused a call from {peer}{why}" if outgoing else f"call declined by {peer}{why}"
        delivery = Delivery.SENT if outgoing else Delivery.RECEIVED
        return MessageView(body.id, peer, outgoing, text, body.ts, delivery, label)
    if message.kind is not Kind.MISSED:
        return None
    text = f"call not answered{why}" if outgoing else f"missed call from {peer}{why}"
    delivery = Delivery.SENT if outgoing else Delivery.RECEIVED
    return MessageView(body.id, peer, outgoing, text, body.ts, delivery, label)


# Call signalling kept in the history: what a call was and how it ended. Ringing and the
# rekey messages (one or more a minute) would only fill it.
HISTORY_CALL_KINDS = frozenset({Kind.OFFER, Kind.ANSWER, Kind.DECLINE, Kind.BUSY, Kind.HANGUP,
                                Kind.MISSED})


def kept_in_history(plaintext: bytes) -> bool:
    """Whether a payload goes into the history (all but the passing call signalling)."""
    try:
        body = payloads.decode(plaintext)
    except payloads.PayloadError:
        return True  # stored as it came; the views skip it
    if isinstance(body, payloads.SenderKey):
        return False  # a chain key: kept in the group's key state only, erased as it moves
    if isinstance(body, payloads.GroupReceipt):
        return False  # counted in the group's receipts table (the sender's), not a line here
    if not isinstance(body, payloads.CallPayload):
        return True
    try:
        return CallMessage.decode(body.data).kind in HISTORY_CALL_KINDS
    except SignallingError:
        return False


def _placed_call(body: payloads.CallPayload) -> bool:
    try:
        return CallMessage.decode(body.data).kind in (Kind.OFFER, Kind.MISSED)
    except SignallingError:
        return False


class HistoryStore(Protocol):
    def history(self, peer: str, limit: int = 200) -> list[HistoryEntry]: ...
    def peers(self) -> list[str]: ...


class History:
    """Views of the store's history rows; ``pending`` names texts still in the outbox."""

    def __init__(self, store: HistoryStore, handle: str,
                 pending: Callable[[ConversationId], set[str]]) -> None:
        self._store = store
        self._handle = handle
        self._pending = pending

    def conversations(self) -> list[ConversationId]:
        return [ConversationId.direct(peer) for peer in sorted(self._store.peers())]

    def _entries(self, conversation: ConversationId,
                 limit: int = MAX_ENTRIES) -> list[tuple[str, payloads.Payload, str]]:
        out = []
        for entry in self._store.history(conversation.peer, limit):
            try:
                out.append((entry.direction, payloads.decode(entry.plaintext), entry.label))
            except payloads.PayloadError:
                continue
        return out

    def _receipted(self, entries: list[tuple[str, payloads.Payload, str]], state: str, *,
                   outgoing: bool) -> set[str]:
        direction = "out" if outgoing else "in"
        ids: set[str] = set()
        for d, body, _ in entries:
            if d == direction and isinstance(body, payloads.Receipt) and body.state == state:
                ids.update(body.ids)
        return ids

    def exchanged(self, conversation: ConversationId) -> bool:
        """Whether anything but the peer's own call signalling passed in this conversation: a
        text, a file, a receipt, or a call we placed (what makes a caller a contact)."""
        for direction, body, _label in self._entries(conversation):
            if not isinstance(body, payloads.CallPayload):
                return True
            if direction == "out" and _placed_call(body):
                return True
        return False

    def messages(self, conversation: ConversationId, limit: int = 500) -> list[MessageView]:
        entries = self._entries(conversation)
        read = self._receipted(entries, "read", outgoing=False)
        delivered = self._receipted(entries, "delivered", outgoing=False) | read
        pending = self._pending(conversation)
        views = []
        seen: set[str] = set()
        for direction, body, label in entries:
            if isinstance(body, payloads.CallPayload) and body.id not in seen:
                line = call_line(body, conversation.peer, direction == "out", label)
                if line is not None:
                    seen.add(body.id)
                    views.append(line)
                continue
            if not isinstance(body, payloads.Text) or body.id in seen:  # a resent text: once
                continue
            seen.add(body.id)
            outgoing = direction == "out"
            if not outgoing:
                state = Delivery.RECEIVED
            elif body.id in read:
                state = Delivery.READ
            elif body.id in delivered:
                state = Delivery.DELIVERED
            elif body.id in pending:
                state = Delivery.PENDING
            else:
                state = Delivery.SENT
            mode = "otp" if label == OTP_LABEL else "ratchet"
            views.append(MessageView(body.id, conversation.peer, outgoing, body.text, body.ts,
                                     state, label, mode))
        return views[-limit:]

    def unread(self, conversation: ConversationId) -> list[MessageView]:
        """Incoming messages not yet marked read (no read receipt sent for them)."""
        already = self._receipted(self._entries(conversation), "read", outgoing=True)
        return [m for m in self.messages(conversation)
                if not m.outgoing and m.message_id not in already]

    def undelivered(self, conversation: ConversationId) -> list[payloads.Payload]:
        """Our texts the peer never confirmed (resent when the peer's session won a tie)."""
        entries = self._entries(conversation)
        confirmed = self._receipted(entries, "delivered", outgoing=False) | self._receipted(
            entries, "read", outgoing=False)
        return [body for direction, body, _ in entries
                if direction == "out" and isinstance(body, payloads.Text)
                and body.id not in confirmed]

    def search(self, query: str) -> list[MessageView]:
        needle = query.casefold().strip()
        if not needle:
            return []
        return [m for conversation in self.conversations()
                for m in self.messages(conversation) if needle in m.text.casefold()]

    def export(self, conversation: ConversationId, fmt: str) -> str:
        peer = conversation.peer
        messages = self.messages(conversation, limit=100_000)
        if fmt == "json":
            return json.dumps([{
                "id": m.message_id, "from": self._handle if m.outgoing else peer,
                "to": peer if m.outgoing else self._handle, "text": m.text,
                "time": m.timestamp, "delivery": m.delivery.value, "keys": m.sources,
                "mode": m.mode,
            } for m in messages], indent=2, ensure_ascii=False)
        lines = [f"# qsecret conversation between {self._handle} and {peer}"]
        for m in messages:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(m.timestamp))
            who = self._handle if m.outgoing else peer
            lines.append(f"[{stamp}] {who}: {m.text}")
        return "\n".join(lines) + "\n"
