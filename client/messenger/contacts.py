"""Contacts: who you talk to, whether you verified them, and adding one from the relay's
prekey directory."""

from __future__ import annotations

import time
from typing import Protocol

from client.protocol import ProtocolError, parse_bundle_parts, qr_text, safety_number, safety_qr
from client.protocol.identity import Identity, PublicIdentity
from client.store.sealed import DamagedRow
from client.store.store import Contact
from relay.wire import Bundle

from .api import ContactView, ConversationId, MessengerError, SafetyNumber
from .history import History
from .relay_link import RelayError
from .sessions import Sessions

RECENTLY_ACTIVE_S = 300.0


class ContactStore(Protocol):
    def contact(self, handle: str) -> Contact | None: ...
    def pin_identity(self, handle: str, identity: PublicIdentity, *,
                     verified: bool = False, added_by_me: bool = False) -> None: ...


class BundleDirectory(Protocol):
    """The relay's prekey directory (client.messenger.relay_link.RelayLink)."""

    @property
    def ready(self) -> bool: ...
    async def wait_ready(self, timeout: float) -> None: ...
    async def fetch_bundle(self, handle: str) -> Bundle: ...


class Contacts:
    def __init__(self, store: ContactStore, history: History, sessions: Sessions,
                 directory: BundleDirectory, handle: str, identity: Identity) -> None:
        self._store = store
        self._history = history
        self._sessions = sessions
        self._directory = directory
        self._handle = handle
        self._identity = identity

    def view(self, conversation: ConversationId) -> ContactView:
        peer = conversation.peer
        try:
            contact = self._store.contact(peer)
        except DamagedRow:  # logged by the store; listed as not verified, the rest still shows
            contact = None
        history = self._history.messages(conversation)
        unread = len(self._history.unread(conversation))
        last = history[-1] if history else None
        # The relay keeps presence private; a message from the peer in the last few
        # minutes is the only (honest) online hint, otherwise "unknown".
        heard = max((m.timestamp for m in history if not m.outgoing), default=0.0)
        online = True if time.time() - heard < RECENTLY_ACTIVE_S else None
        return ContactView(
            peer, unread, bool(contact and contact.verified), online,
            last.text if last else "", last.timestamp if last else 0.0,
        )

    def all(self) -> list[ContactView]:
        return [self.view(c) for c in self._history.conversations()]

    async def add(self, handle: str) -> ContactView:
        """Fetch ``handle``'s bundle from the relay and open a session with it; either way
        the contact is marked "added by me" (their calls ring: :meth:`added_by_me`)."""
        if handle == self._handle:
            raise MessengerError("that is your own handle")
        conversation = ConversationId.direct(handle)
        if self._sessions.exists(conversation):
            self._mark_added(handle)
            return self.view(conversation)
        try:
            if not self._directory.ready:
                await self._directory.wait_ready(10)
            answer = await self._directory.fetch_bundle(handle)
        except RelayError as exc:
            raise MessengerError(f"cannot add {handle}: {exc}",
                                 code=getattr(exc, "code", None),
                                 reason=getattr(exc, "reason", "")) from None
        pinned = self._store.contact(handle)
        wire_bundle = answer.bundle
        try:
            bundle = parse_bundle_parts(
                handle, wire_bundle.identity, wire_bundle.signed, wire_bundle.signed_sig,
                [(o.key_id, o.key, o.sig) for o in wire_bundle.one_time],
                expected_identity=pinned.identity if pinned else None,
            )
        except ProtocolError as exc:
            raise MessengerError(f"{handle}'s prekey bundle was rejected: {exc}") from None
        await self._sessions.initiate(conversation, bundle, pinned)
        self._mark_added(handle)
        return self.view(conversation)

    def _mark_added(self, handle: str) -> None:
        try:
            contact = self._store.contact(handle)
        except DamagedRow:  # its pinned identity is unknown: never re-pinned blindly
            raise MessengerError(f"the stored contact record of {handle} is damaged") from None
        if contact is not None and not contact.added_by_me:
            self._store.pin_identity(handle, contact.identity, verified=contact.verified,
                                     added_by_me=True)

    def set_verified(self, conversation: ConversationId, verified: bool) -> ContactView:
        contact = self._store.contact(conversation.peer)
        if contact is None:
            raise MessengerError(f"{conversation.peer} is not a contact")
        self._store.pin_identity(conversation.peer, contact.identity, verified=verified,
                                 added_by_me=contact.added_by_me)
        return self.view(conversation)

    def verified(self, conversation: ConversationId) -> bool:
        contact = self._store.contact(conversation.peer)
        return bool(contact and contact.verified)

    def added_by_me(self, conversation: ConversationId) -> bool:
        """Whether the user added this contact themselves (not only: they wrote to us)."""
        try:
            contact = self._store.contact(conversation.peer)
        except DamagedRow:  # logged by the store: not known to be added
            return False
        return bool(contact and contact.added_by_me)

    def safety_number(self, conversation: ConversationId) -> SafetyNumber:
        peer = conversation.peer
        contact = self._store.contact(peer)
        if contact is None:
            raise MessengerError(f"{peer} is not a contact")
        me = self._identity.public
        digits = safety_number(self._handle, me, peer, contact.identity)
        code = safety_qr(self._handle, me, peer, contact.identity)
        return SafetyNumber(digits, qr_text(code))
