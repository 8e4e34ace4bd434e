"""The outbox: sealed messages on their way to the relay, and what the relay said of them.

A message is committed to the store's outbox under its conversation's lock (see
sessions.py); it goes to the relay after the lock is released and leaves the outbox when
the relay answers ``stored``. Whatever is still in the outbox goes again at the next login,
so a message is never lost between the two.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Protocol

from client.store.store import OutboxEntry
from relay.wire import Error
from relay.wire.errors import QUOTA_CODES

from . import payload as payloads
from .api import ConversationId, Delivery, DeliveryEvent, ErrorEvent, Event, MessengerError
from .relay_link import RelayError
from .sessions import Sealed, Sessions

log = logging.getLogger(__name__)

# Final refusals; a quota refusal's message says whose quota (the recipient's, this sender's
# share of it, or the relay's whole store), and the error shown carries it.
FAILED_CODES = ("unknown_recipient", "too_large", *QUOTA_CODES)


class OutboxStore(Protocol):
    def outbox(self) -> list[OutboxEntry]: ...
    def mark_sent(self, outbox_id: int) -> None: ...


class EnvelopeSender(Protocol):
    """The relay as the outbox needs it (client.messenger.relay_link.RelayLink)."""

    async def send(self, to: str, body: bytes, msg_id: str) -> None: ...


class Outbox:
    """Seal, commit, send; match the relay's answers to messages."""

    def __init__(self, sessions: Sessions, store: OutboxStore, relay: EnvelopeSender,
                 emit: Callable[[Event], None]) -> None:
        self._sessions = sessions
        self._store = store
        self._relay = relay
        self._emit = emit
        self._outbox_ids: dict[str, int] = {}
        # relay message id -> (conversation, payload id): relay answers become UI events
        self._index: dict[str, tuple[ConversationId, str]] = {}
        self._waiters: dict[str, asyncio.Future[None]] = {}

    async def send(self, conversation: ConversationId, body: payloads.Payload, *,
                   wait: bool, timeout: float) -> Sealed:
        """Seal and send ``body``; with ``wait``, return once the relay holds it durably."""
        sealed = await self._sessions.seal(conversation, body)
        self._outbox_ids[sealed.message_id] = sealed.outbox_id
        self._index[sealed.message_id] = (conversation, body.id)
        waiter: asyncio.Future[None] | None = None
        if wait:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters[sealed.message_id] = waiter
        with contextlib.suppress(RelayError):  # stays in the outbox; resent on login
            await self._relay.send(conversation.peer, sealed.wire, sealed.message_id)
        if waiter is not None:
            try:
                await asyncio.wait_for(waiter, timeout)
            except TimeoutError:
                raise MessengerError(
                    "the relay has not confirmed the message yet; it is kept in the outbox and "
                    "sent when the relay is reachable"
                ) from None
            finally:
                self._waiters.pop(sealed.message_id, None)
        return sealed

    async def resend_all(self) -> None:
        """After a login: everything the relay has not confirmed goes again (the relay
        de-duplicates by message id)."""
        for entry in self._store.outbox():
            self._outbox_ids[entry.message_id] = entry.id
            await self._relay.send(entry.peer, entry.wire, entry.message_id)

    def pending(self, conversation: ConversationId) -> set[str]:
        """Payload ids of this conversation's messages the relay has not confirmed."""
        return {self._index.get(entry.message_id, (None, ""))[1]
                for entry in self._store.outbox() if entry.peer == conversation.peer}

    def on_stored(self, message_id: str) -> None:
        outbox_id = self._outbox_ids.pop(message_id, None)
        if outbox_id is not None:
            self._store.mark_sent(outbox_id)
        waiter = self._waiters.pop(message_id, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        conversation, payload_id = self._index.pop(message_id, (None, None))
        if conversation is not None and payload_id:
            self._emit(DeliveryEvent(payload_id, conversation.peer, Delivery.SENT))

    def on_refused(self, error: Error) -> bool:
        """An error frame about one of our envelopes; True when it was one."""
        if error.msg is None:
            return False
        refused = MessengerError(f"the relay refused the message: {error.message} ({error.code})",
                                 code=error.code, reason=error.message)
        waiter = self._waiters.pop(error.msg, None)
        told = waiter is not None and not waiter.done()
        if told:
            waiter.set_exception(refused)
        conversation, payload_id = self._index.pop(error.msg, (None, None))
        if conversation is not None and payload_id and error.code in FAILED_CODES:
            self._emit(DeliveryEvent(payload_id, conversation.peer, Delivery.FAILED))
            if not told:  # nobody waits (the TUI): the reason, e.g. whose quota, is shown too
                self._emit(ErrorEvent(refused))
        return True

    def stop(self) -> None:
        """Stopping: whoever waits for the relay's answer learns the message stays queued."""
        for waiter in self._waiters.values():
            if not waiter.done():
                waiter.set_exception(MessengerError(
                    "stopped before the relay confirmed the message; it is kept in the "
                    "outbox and sent at the next start"))
        self._waiters.clear()
