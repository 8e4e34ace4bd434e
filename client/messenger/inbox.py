"""The inbox: envelopes the relay delivers, opened, committed, acknowledged, announced.

Nothing is acknowledged to the relay before it is durable here; a message that cannot be
opened yet (its QKD keys are not at our KME yet, or the KME does not answer) is not
acknowledged: it is held and tried again after 1, 2, 4, 8 and 15 s (the keys usually come
within seconds), and the relay delivers it again later anyway. Texts are answered with a
``delivered`` receipt.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Protocol

from client.protocol import Message, ProtocolError
from client.store.sealed import CorruptStore
from relay.wire import Deliver

from . import payload as payloads
from .api import (
    ContactEvent,
    ContactView,
    ConversationId,
    Delivery,
    DeliveryEvent,
    ErrorEvent,
    Event,
    KeyStatus,
    KeyStatusEvent,
    MessageEvent,
    MessageView,
    MessengerError,
)
from .sessions import Retry, Sessions

log = logging.getLogger(__name__)

RETRY_DELAYS_S = (1.0, 2.0, 4.0, 8.0, 15.0)  # then the relay's redelivery takes over
MAX_HELD = 256  # held in memory for retries; beyond, only the relay's redelivery retries


class Acker(Protocol):
    """The relay as the inbox needs it (client.messenger.relay_link.RelayLink)."""

    async def ack(self, seqs: list[int]) -> None: ...


class Replies(Protocol):
    """What the inbox asks of the rest of the messenger, without knowing it."""

    async def send_quietly(self, conversation: ConversationId,
                           body: payloads.Payload) -> None: ...
    def contact_view(self, conversation: ConversationId) -> ContactView: ...
    def key_status_of(self, conversation: ConversationId | None) -> KeyStatus: ...


TransferHandler = Callable[[ConversationId, payloads.TransferMessage], Awaitable[None]]
# a call payload, and the exporter secret of the message that carried it (an offer's keys
# derive from it: client.protocol.exporter)
CallHandler = Callable[[ConversationId, payloads.CallPayload, bytes], Awaitable[None]]
Spawn = Callable[[Coroutine[Any, Any, Any], str], "asyncio.Task[Any] | None"]


class Inbox:
    def __init__(self, sessions: Sessions, relay: Acker, replies: Replies,
                 on_transfer: TransferHandler, emit: Callable[[Event], None],
                 spawn: Spawn | None = None, on_call: CallHandler | None = None,
                 on_new_session: Callable[[ConversationId], None] | None = None) -> None:
        self._sessions = sessions
        self._relay = relay
        self._replies = replies
        self._on_transfer = on_transfer
        self._on_call = on_call
        self._on_new_session = on_new_session  # e.g. groups send their sender keys again
        self._emit = emit
        self._spawn = spawn
        self._held: dict[int, Deliver] = {}  # relay seq -> a delivery waiting for its keys
        self._reopening: set[int] = set()  # held ones being tried again right now
        self._retrying = False

    @property
    def held(self) -> int:
        """Messages waiting for their QKD keys (tried again soon), counting one that is
        being tried again at this moment (it is held again if its keys are still missing)."""
        return len(self._held.keys() | self._reopening)

    def holds_from(self, sender: str) -> bool:
        """Whether a message from ``sender`` waits here for its keys (it may be the one
        that opens the session, so what follows it from them must wait too)."""
        return any(deliver.sender == sender for deliver in self._held.values())

    async def receive(self, deliver: Deliver) -> None:
        if self._held.pop(deliver.seq, None) is None:
            await self._receive(deliver)
            return
        self._reopening.add(deliver.seq)
        try:
            await self._receive(deliver)
        finally:
            self._reopening.discard(deliver.seq)

    async def _receive(self, deliver: Deliver) -> None:
        conversation = ConversationId.direct(deliver.sender)
        try:
            opened = await self._sessions.open(conversation, deliver.body, deliver.msg)
        except Retry as exc:
            log.info("message from %s held for later: %s", deliver.sender, exc)
            self._hold(deliver)
            self._emit(KeyStatusEvent(self._replies.key_status_of(conversation)))
            return
        except (ProtocolError, ValueError) as exc:
            # Forged, tampered, replayed or malformed: it can never decrypt, so it is
            # acked (not redelivered forever) and dropped, loudly; no state changed.
            log.warning("dropped a message from %s: %s: %s", deliver.sender,
                        type(exc).__name__, exc)
            await self._relay.ack([deliver.seq])
            return
        except CorruptStore as exc:
            # This conversation's stored state is damaged: the message stays at the relay
            # (never acked, so a restored profile can still read it); the others go on.
            log.error("a message from %s left at the relay: %s", deliver.sender, exc)
            self._emit(ErrorEvent(MessengerError(str(exc))))
            return
        await self._relay.ack([deliver.seq])
        if opened.duplicate:
            return
        if opened.new_session:
            self._emit(ContactEvent(self._replies.contact_view(conversation)))
            if self._on_new_session is not None:
                self._on_new_session(conversation)
        await self._announce(conversation, opened.messages)
        for body in opened.resend:
            await self._replies.send_quietly(conversation, body)

    def _hold(self, deliver: Deliver) -> None:
        if len(self._held) < MAX_HELD:
            self._held[deliver.seq] = deliver
        if self._retrying or self._spawn is None or not self._held:
            return
        self._retrying = True
        if self._spawn(self._retry_held(), "inbox-retry") is None:  # stopping
            self._retrying = False

    async def _retry_held(self) -> None:
        """Open the held messages again after each delay, until none is left."""
        try:
            for delay in RETRY_DELAYS_S:
                await asyncio.sleep(delay)  # a back-off, not a synchronisation
                for deliver in list(self._held.values()):
                    if self._held.get(deliver.seq) is deliver:  # not opened meanwhile
                        await self.receive(deliver)
                if not self._held:
                    return
            self._held.clear()  # the relay delivers them again (and they are held again)
        finally:
            self._retrying = False

    async def _announce(self, conversation: ConversationId, messages: list[Message]) -> None:
        peer = conversation.peer
        delivered: list[str] = []
        for message in messages:
            try:
                body = payloads.decode(message.plaintext)
            except payloads.PayloadError as exc:
                log.warning("undecodable payload from %s: %s", peer, exc)
                continue
            if isinstance(body, payloads.Text):
                delivered.append(body.id)
                self._emit(MessageEvent(MessageView(
                    body.id, peer, False, body.text, body.ts, Delivery.RECEIVED,
                    message.label, "otp" if message.otp else "ratchet",
                )))
            elif isinstance(body, payloads.Receipt):
                state = Delivery.READ if body.state == "read" else Delivery.DELIVERED
                for payload_id in body.ids:
                    self._emit(DeliveryEvent(payload_id, peer, state))
            elif isinstance(body, payloads.CallPayload):
                if self._on_call is not None:
                    await self._on_call(conversation, body, message.exporter)
            else:
                await self._on_transfer(conversation, body)
        if delivered:  # a receipt that cannot go now (e.g. policy 'require', no QKD) is skipped
            with contextlib.suppress(MessengerError):
                await self._replies.send_quietly(conversation,
                                                 payloads.receipt("delivered", delivered))
        self._emit(KeyStatusEvent(self._replies.key_status_of(conversation)))
