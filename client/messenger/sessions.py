"""Sealing and opening the messages of each conversation.

One lock per conversation guards its session state and the store rows that go with it;
it is never held across a network wait. QKD keys are fetched first, with the lock free,
from a snapshot of the session; under the lock the plan is checked again, and when the
session moved on meanwhile (another message was sealed or opened) the work starts over.
Keys fetched with ``enc_keys`` that a changed plan no longer uses stay in a small spare
pool of that conversation and are used next (a KME hands a key out only once).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from client.protocol import (
    Discarded,
    IdentityMismatch,
    MalformedMessage,
    Message,
    ProtocolError,
    QkdKeys,
    QkdRequired,
    RatchetConfig,
    ReplayedMessage,
    Session,
)
from client.protocol.bundle import PrekeyBundle, PrekeySecrets
from client.protocol.identity import Identity, PublicIdentity
from client.protocol.qkd import MAX_KEYS_PER_MESSAGE
from client.protocol.ratchet import T_PREKEY, parse_header
from client.protocol.session import Outgoing
from client.store.store import Contact

from . import payload as payloads
from .api import ConversationId, MessengerError
from .history import kept_in_history

log = logging.getLogger(__name__)

PLAN_ATTEMPTS = 4  # a session that changes this often while keys are fetched is busy: retry
OTP_KEY_BYTES = 32


class SessionStore(Protocol):
    """The store rows of sessions, contacts and prekeys (client.store.Store)."""

    def load_session(self, peer: str) -> Session | None: ...
    def save_session(self, peer: str, session: Session) -> None: ...
    def contact(self, handle: str) -> Contact | None: ...
    def pin_identity(self, handle: str, identity: PublicIdentity, *,
                     verified: bool = False) -> None: ...
    def load_prekeys(self) -> tuple[PrekeyBundle, PrekeySecrets] | None: ...
    def seen(self, peer: str, message_id: str) -> bool: ...
    def commit_outgoing(self, peer: str, session: Session, outgoing: Outgoing,
                        plaintext: bytes) -> int: ...
    def commit_incoming(self, peer: str, session: Session, message_id: str,
                        messages: list[Message]) -> None: ...
    def accept_session(self, peer: str, session: Session, secrets: PrekeySecrets,
                       bundle: PrekeyBundle, message_id: str, messages: list[Message]) -> None: ...


class KeySource(Protocol):
    """This SAE's KME (client.messenger.qkd_source.QkdSource)."""

    last_error: str | None

    async def enc_keys(self, peer_sae_id: str, number: int) -> QkdKeys | None: ...
    async def dec_keys(self, peer_sae_id: str, key_ids: tuple[str, ...]) -> QkdKeys | None: ...


@dataclass(frozen=True)
class Sealed:
    """A message committed to the outbox, ready for the relay."""

    conversation: ConversationId
    outbox_id: int
    message_id: str
    wire: bytes
    label: str
    otp: bool
    exporter: bytes = field(default=b"", repr=False)  # client.protocol.exporter; not stored


@dataclass(frozen=True)
class Opened:
    """What a delivery gave: messages, whether it was already here, texts to send again."""

    messages: list[Message]
    duplicate: bool = False
    resend: tuple[payloads.Payload, ...] = ()
    new_session: bool = False


class Retry(Exception):
    """The message cannot be opened yet (e.g. QKD keys not available): do not ack."""


class _Changed(Exception):
    """The session moved on while keys were fetched: plan again."""


@dataclass(frozen=True)
class _ReceivePlan:
    sae_id: str
    key_ids: tuple[str, ...]
    prekey: bool  # a prekey message that opens a (new) session


class Sessions:
    """Every conversation's session: seal, open, start, switch mode."""

    def __init__(self, store: SessionStore, qkd: KeySource, identity: Identity, handle: str,
                 sae_id: str, ratchet_config: RatchetConfig, prekeys_lock: asyncio.Lock,
                 undelivered: Callable[[ConversationId], list[payloads.Payload]]) -> None:
        self._store = store
        self._qkd = qkd
        self._identity = identity
        self._handle = handle
        self._sae_id = sae_id
        self._config = ratchet_config
        self._prekeys_lock = prekeys_lock  # shared with publishing fresh one-time prekeys
        self._undelivered = undelivered
        self._locks: dict[ConversationId, asyncio.Lock] = {}
        self._spare: dict[ConversationId, list[tuple[str, bytes]]] = {}

    def lock(self, conversation: ConversationId) -> asyncio.Lock:
        lock = self._locks.get(conversation)
        if lock is None:
            lock = self._locks[conversation] = asyncio.Lock()
        return lock

    def exists(self, conversation: ConversationId) -> bool:
        return self._store.load_session(conversation.peer) is not None

    def _load(self, conversation: ConversationId) -> Session:
        session = self._store.load_session(conversation.peer)
        if session is None:
            raise MessengerError(
                f"no session with {conversation.peer}: add them as a contact first")
        return session

    # -- sending -----------------------------------------------------------------------

    async def seal(self, conversation: ConversationId, body: payloads.Payload) -> Sealed:
        """Encrypt ``body`` and commit it to the outbox (durable before it may leave)."""
        plaintext = body.encode()
        for _ in range(PLAN_ATTEMPTS):
            session = self._load(conversation)
            need = _keys_needed(session, len(plaintext))
            qkd = await self._take_enc_keys(conversation, session.peer_sae_id, need)
            async with self.lock(conversation):
                session = self._load(conversation)
                if _keys_needed(session, len(plaintext)) != need:
                    self._keep_spare(conversation, qkd)
                    continue
                return self._seal_locked(conversation, session, plaintext, need, qkd)
        raise MessengerError("not sent: the conversation kept changing; try again")

    def _seal_locked(self, conversation: ConversationId, session: Session, plaintext: bytes,
                     need: int, qkd: QkdKeys | None) -> Sealed:
        if session.mode == "otp" and need and qkd is None:
            shortfall = session.otp_shortfall(len(plaintext))
            raise MessengerError(
                f"OTP mode: the QKD pool cannot cover this message ({shortfall} more key bytes"
                f" needed; {self._qkd.last_error or 'KME unreachable'}). Wait for the pool to"
                " refill, or switch to ratchet mode (Ctrl+O)."
            )
        try:
            outgoing = session.encrypt(plaintext, qkd=qkd)
        except QkdRequired as exc:
            raise MessengerError(
                f"not sent: {exc} ({self._qkd.last_error or 'no QKD keys available'})"
            ) from None
        except ProtocolError as exc:
            raise MessengerError(f"not sent: {exc}") from None
        outbox_id = self._store.commit_outgoing(
            conversation.peer, session, outgoing,
            plaintext if kept_in_history(plaintext) else None)
        return Sealed(conversation, outbox_id, outgoing.message_id, outgoing.wire,
                      outgoing.label, outgoing.otp, outgoing.exporter)

    async def _take_enc_keys(self, conversation: ConversationId, sae_id: str,
                             number: int) -> QkdKeys | None:
        if number <= 0:
            return None
        spare = self._spare.get(conversation, [])
        taken, self._spare[conversation] = spare[:number], spare[number:]
        if len(taken) < number:
            fresh = await self._qkd.enc_keys(sae_id, number - len(taken))
            if fresh is None:
                self._spare[conversation] = taken + self._spare[conversation]
                return None
            taken += list(zip(fresh.key_ids, fresh.keys, strict=True))
        return QkdKeys.from_pairs(taken)

    def _keep_spare(self, conversation: ConversationId, qkd: QkdKeys | None) -> None:
        if qkd is None:
            return
        pool = self._spare.setdefault(conversation, [])
        pool.extend(zip(qkd.key_ids, qkd.keys, strict=True))
        del pool[:-MAX_KEYS_PER_MESSAGE]  # the oldest go: the peer's KME gives them up too

    # -- receiving ---------------------------------------------------------------------

    async def open(self, conversation: ConversationId, wire: bytes, msg_id: str) -> Opened:
        """Decrypt (or accept, for a prekey message) and commit; raises ProtocolError or
        ValueError for what can never open, Retry for what may open later."""
        for _ in range(PLAN_ATTEMPTS):
            if self._store.seen(conversation.peer, msg_id):  # its QKD keys are used up
                return Opened([], duplicate=True)
            plan = self._receive_plan(conversation, wire)
            qkd = None
            if plan.key_ids:
                qkd = await self._qkd.dec_keys(plan.sae_id, plan.key_ids)
                if qkd is None:
                    raise Retry(f"QKD keys {', '.join(plan.key_ids)} not available from the "
                                "KME yet")
            async with self.lock(conversation):
                if self._store.seen(conversation.peer, msg_id):
                    return Opened([], duplicate=True)
                locked_plan = self._receive_plan(conversation, wire)
                if locked_plan != plan:
                    continue
                try:
                    return await self._open_locked(conversation, wire, msg_id, plan, qkd)
                except _Changed:
                    continue
        raise Retry("the conversation kept changing while its keys were fetched")

    def _receive_plan(self, conversation: ConversationId, wire: bytes) -> _ReceivePlan:
        """Which QKD keys opening ``wire`` needs, checked before any is fetched."""
        peer = conversation.peer
        session = self._store.load_session(peer)
        if session is not None and not _opens_another_session(session, wire):
            return _ReceivePlan(session.peer_sae_id, session.qkd_needed(wire), False)
        if session is not None and _unanswered(session) and _has_sent(session) \
                and self._handle < peer:
            # Both sides opened a session at once: the smaller handle's session wins on both.
            raise ReplayedMessage("both opened a session; ours wins the tie-break")
        if not _is_prekey(wire):
            raise MalformedMessage(f"a message from {peer} but no session with them")
        initial = Session.peek_initial(wire)
        if initial.initiator_handle != peer:
            raise IdentityMismatch("the opening message names another sender than the relay")
        return _ReceivePlan(initial.initiator_sae_id, tuple(initial.qkd_key_ids), True)

    async def _open_locked(self, conversation: ConversationId, wire: bytes, msg_id: str,
                           plan: _ReceivePlan, qkd: QkdKeys | None) -> Opened:
        peer = conversation.peer
        keys = qkd.select(plan.key_ids) if qkd is not None and plan.key_ids else None
        session = self._store.load_session(peer)
        if not plan.prekey:
            assert session is not None
            events = session.decrypt(wire, qkd=keys)
            messages = [e for e in events if isinstance(e, Message)]
            for event in events:
                if isinstance(event, Discarded):
                    log.warning("discarded a held message from %s: %s", peer, event.reason)
            self._store.commit_incoming(peer, session, msg_id, _for_history(messages))
            return Opened(messages)
        resend: tuple[payloads.Payload, ...] = ()
        if session is not None and _unanswered(session) and _has_sent(session):
            resend = tuple(self._undelivered(conversation))  # ours lost the tie-break
        async with self._prekeys_lock:
            contact = self._store.contact(peer)
            loaded = self._store.load_prekeys()
            if loaded is None:
                raise MessengerError("no prekeys in this profile")
            bundle, secrets = loaded
            session, events = Session.accept(
                wire, self._identity, self._handle, self._sae_id, bundle, secrets, keys,
                config=self._config,
                expected_initiator=contact.identity if contact else None,
            )
            messages = [e for e in events if isinstance(e, Message)]
            if contact is None:
                self._store.pin_identity(peer, session.peer_identity)
            self._store.accept_session(peer, session, secrets, bundle, msg_id,
                                       _for_history(messages))
        return Opened(messages, resend=resend, new_session=True)

    # -- starting and switching --------------------------------------------------------

    async def initiate(self, conversation: ConversationId, bundle: PrekeyBundle,
                       pinned: Contact | None) -> None:
        """Open a session from the peer's bundle (PQXDH + QKD); keys fetched unlocked."""
        qkd = await self._qkd.enc_keys(bundle.sae_id, self._config.qkd_keys_per_turn)
        try:
            session = Session.initiate(self._identity, self._handle, self._sae_id, bundle,
                                       qkd, config=self._config)
        except QkdRequired as exc:
            raise MessengerError(
                f"cannot open a session with {conversation.peer}: {exc} "
                f"({self._qkd.last_error or 'no QKD keys available'})"
            ) from None
        async with self.lock(conversation):
            if self._store.load_session(conversation.peer) is not None:
                return  # the peer's own opening message got here first: keep that session
            if pinned is None:
                self._store.pin_identity(conversation.peer, bundle.identity)
            self._store.save_session(conversation.peer, session)

    async def set_mode(self, conversation: ConversationId, mode: str) -> None:
        async with self.lock(conversation):
            session = self._store.load_session(conversation.peer)
            if session is None:
                raise MessengerError(f"no session with {conversation.peer}")
            try:
                session.set_mode(mode)
            except ValueError as exc:
                raise MessengerError(str(exc)) from None
            self._store.save_session(conversation.peer, session)


def _keys_needed(session: Session, plaintext_length: int) -> int:
    """QKD keys the next encrypt of this session wants from enc_keys."""
    if session.mode == "otp":
        return -(-session.otp_shortfall(plaintext_length) // OTP_KEY_BYTES)
    return session.send_plan().qkd_keys


def _unanswered(session: Session) -> bool:
    """We opened this session and the peer has not answered on it yet."""
    return session.ratchet.prekey_blob is not None and session.status().receiving == "-"


def _opens_another_session(session: Session, wire: bytes) -> bool:
    """A prekey message that did not create ``session`` (so it starts a new one)."""
    if not _is_prekey(wire):
        return False
    digest = session.ratchet.prekey_digest
    return digest is None or hashlib.sha256(parse_header(wire).initial).digest() != digest


def _has_sent(session: Session) -> bool:
    """Anything went out on this session (so the peer will see our handshake)."""
    return session.ratchet.send_n > 0 or session.ratchet.send_turn > 0


def _is_prekey(wire: bytes) -> bool:
    """Whether ``wire`` is a session-opening message (by its header: the initial message
    inside is parsed where it is used, so its refusal keeps its own reason)."""
    try:
        return parse_header(wire).kind == T_PREKEY
    except ProtocolError:
        return False


def _for_history(messages: list[Message]) -> list[Message]:
    """The messages the history keeps (not a call's ringing or rekeys: history.py)."""
    return [message for message in messages if kept_in_history(message.plaintext)]
