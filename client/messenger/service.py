"""The messenger: sessions, store, relay and KME wired together for one user.

Sending:   payload -> (QKD keys from enc_keys) -> Session.encrypt -> store.commit_outgoing
           -> relay send -> relay ``stored`` -> outbox entry dropped (SENT).
Receiving: relay ``deliver`` -> (QKD keys from dec_keys) -> Session.decrypt/accept
           -> store.commit_incoming -> ack to the relay -> UI event -> delivery receipt.
Nothing is acknowledged to the relay before it is durable here, and nothing leaves
before the session state that sealed it is durable (see client.store).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import replace

from client.config import ClientConfig
from client.protocol import (
    Discarded,
    IdentityMismatch,
    MalformedMessage,
    Message,
    ProtocolError,
    QkdRequired,
    RatchetConfig,
    ReplayedMessage,
    Session,
    parse_bundle_parts,
    qr_text,
    safety_number,
    safety_qr,
)
from client.protocol.bundle import OneTimePrekey, PrekeySecrets, one_time_message
from client.protocol.identity import Identity
from client.protocol.ratchet import parse_header
from client.store.store import Store
from client.transfer import BuiltManifest
from keysource.mix import QkdPolicy
from keysource.pq import get_kem
from relay.wire import AuthOk, BinaryFrame, Deliver, Error, Event, PrekeysLow, Stored

from . import payload as payloads
from .api import (
    Connection,
    ConnectionEvent,
    ContactEvent,
    ContactView,
    Delivery,
    DeliveryEvent,
    KeyStatus,
    KeyStatusEvent,
    MessageEvent,
    MessageView,
    MessengerError,
    SafetyNumber,
    TransferView,
)
from .api import (
    Event as UiEvent,
)
from .qkd_source import QkdSource
from .relay_link import RelayCallbacks, RelayError, RelayLink
from .transfers import TransferManager

log = logging.getLogger(__name__)

KEY_STATUS_INTERVAL_S = 2.0
SEND_TIMEOUT_S = 15.0
RECENTLY_ACTIVE_S = 300.0
PREKEYS_LOW = 10  # publish a fresh batch of one-time prekeys below this many at the relay
PREKEYS_BATCH = 50


class MessengerService:
    """One unlocked profile, online. Implements :class:`client.messenger.api.Messenger`."""

    def __init__(self, config: ClientConfig, store: Store, handle: str, identity: Identity,
                 *, save_config: Callable[[ClientConfig], None] | None = None) -> None:
        self.config = config
        self.store = store
        self.handle = handle
        self.identity = identity
        self.policy = QkdPolicy.parse(config.qkd_policy)
        self.ratchet_config = RatchetConfig(policy=self.policy)
        self.qkd = QkdSource(config)
        self._save_config = save_config
        self._subscribers: list[Callable[[UiEvent], None]] = []
        self._sent_waiters: dict[str, asyncio.Future[None]] = {}
        self._outbox_ids: dict[str, int] = {}
        # relay message id -> (peer, payload id), to turn relay acks into UI delivery events
        self._outgoing_index: dict[str, tuple[str, str]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._resend_due: dict[str, list[payloads.Payload]] = {}
        self._lock = asyncio.Lock()  # one protocol operation at a time (sessions + store)
        self._link_stats: dict | None = None
        self.connection = ConnectionEvent(Connection.CONNECTING)
        self.relay = RelayLink(
            config.relay_url,
            handle,
            identity.public.signing_key,
            identity.sign,
            RelayCallbacks(self._on_ready, self._on_relay_event, self._on_state, self._on_pin),
            pinned_fingerprint=config.relay_fingerprint,
        )
        self.files = TransferManager(self, self._emit)

    # -- lifecycle ---------------------------------------------------------------------

    def subscribe(self, callback: Callable[[UiEvent], None]) -> None:
        self._subscribers.append(callback)

    def _emit(self, event: UiEvent) -> None:
        for callback in list(self._subscribers):
            try:
                callback(event)
            except Exception:  # a broken UI callback must not stop the messenger
                log.exception("event subscriber failed")

    async def start(self) -> None:
        if self._tasks:
            return
        self._tasks = [
            asyncio.create_task(self.relay.run(), name="relay"),
            asyncio.create_task(self._key_status_loop(), name="key-status"),
        ]

    async def stop(self) -> None:
        await self.files.close()
        await self.relay.close()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []
        await self.qkd.aclose()
        self.store.close()

    async def wait_online(self, timeout: float = 10.0) -> None:
        try:
            await self.relay.wait_ready(timeout)
        except RelayError as exc:
            raise MessengerError(str(exc)) from None

    # -- relay callbacks ---------------------------------------------------------------

    def _on_state(self, event: ConnectionEvent) -> None:
        self.connection = event
        if event.state is Connection.OFFLINE:
            self.files.on_disconnect()
        self._emit(event)

    def _on_pin(self, fingerprint: str) -> None:
        log.warning("pinned the relay's TLS certificate on first use: %s", fingerprint)
        self.config = replace(self.config, relay_fingerprint=fingerprint)
        if self._save_config:
            self._save_config(self.config)

    async def _on_ready(self, auth: AuthOk) -> None:
        if auth.new:
            await self._publish_prekeys()
        elif auth.prekeys < PREKEYS_LOW:
            await self._replenish_prekeys()
        for entry in self.store.outbox():
            self._outbox_ids[entry.message_id] = entry.id
            await self.relay.send(entry.peer, entry.wire, entry.message_id)
        self.files.on_ready()

    async def _publish_prekeys(self) -> None:
        loaded = self.store.load_prekeys()
        if loaded is None:
            raise MessengerError("this profile has no prekeys: run 'qsecret init' again")
        bundle, secrets = loaded
        one_time = [o for o in bundle.one_time if o.key_id in secrets.one_time]
        published = replace(bundle, one_time=tuple(one_time))
        with contextlib.suppress(RelayError):
            await self.relay.upload_prekeys(published.to_relay())

    async def _replenish_prekeys(self) -> None:
        """Publish fresh one-time prekeys (never re-publish ones the relay may have handed out)."""
        async with self._lock:
            loaded = self.store.load_prekeys()
            if loaded is None:
                return
            bundle, secrets = loaded
            start = max((o.key_id for o in bundle.one_time), default=0) + 1
            fresh = await asyncio.to_thread(self._one_time_prekeys, start, secrets)
            bundle = replace(bundle, one_time=bundle.one_time + fresh)
            self.store.save_prekeys(bundle, secrets)  # durable before anyone can use them
        with contextlib.suppress(RelayError):
            await self.relay.upload_prekeys(replace(bundle, one_time=fresh).to_relay())

    def _one_time_prekeys(self, start: int, secrets: PrekeySecrets) -> tuple[OneTimePrekey, ...]:
        kem = get_kem("ML-KEM-768")
        out = []
        for key_id in range(start, start + PREKEYS_BATCH):
            pair = kem.generate_keypair()
            secrets.one_time[key_id] = pair.secret_key
            signature = self.identity.sign(one_time_message(
                self.handle, self.identity.signing_public, key_id, pair.public_key))
            out.append(OneTimePrekey(key_id, pair.public_key, signature))
        return tuple(out)

    async def _on_relay_event(self, event: Event) -> None:
        if isinstance(event, BinaryFrame):
            await self.files.on_binary(event)
        elif isinstance(event, Deliver):
            await self._receive(event)
        elif isinstance(event, Stored):
            self._sent(event.msg)
        elif isinstance(event, Error):
            if not self.files.on_error(event):
                self._relay_error(event)
        elif isinstance(event, PrekeysLow):
            log.info("relay reports %d one-time prekeys left: publishing more", event.remaining)
            await self._replenish_prekeys()

    def _sent(self, message_id: str) -> None:
        outbox_id = self._outbox_ids.pop(message_id, None)
        if outbox_id is not None:
            self.store.mark_sent(outbox_id)
        waiter = self._sent_waiters.pop(message_id, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        peer, payload_id = self._outgoing_index.pop(message_id, (None, None))
        if peer and payload_id:
            self._emit(DeliveryEvent(payload_id, peer, Delivery.SENT))

    def _relay_error(self, error: Error) -> None:
        if error.msg is None:
            log.info("relay error %s", error.code)
            return
        waiter = self._sent_waiters.pop(error.msg, None)
        if waiter is not None and not waiter.done():
            waiter.set_exception(MessengerError(f"the relay refused the message: {error.message}"))
        peer, payload_id = self._outgoing_index.pop(error.msg, (None, None))
        if peer and payload_id and error.code in ("unknown_recipient", "quota_exceeded",
                                                  "too_large"):
            self._emit(DeliveryEvent(payload_id, peer, Delivery.FAILED))

    # -- receiving ---------------------------------------------------------------------

    async def _receive(self, deliver: Deliver) -> None:
        peer = deliver.sender
        async with self._lock:
            if self.store.seen(peer, deliver.msg):
                await self.relay.ack([deliver.seq])
                return
            try:
                messages = await self._open(peer, deliver)
            except _Retry as exc:
                # Not acked: the relay redelivers it later (e.g. when the KME is back).
                log.info("message from %s held for later: %s", peer, exc)
                self._emit(KeyStatusEvent(self.key_status(peer)))
                return
            except (ProtocolError, ValueError) as exc:
                # Forged, tampered, replayed or malformed: it can never decrypt, so it is
                # acked (not redelivered forever) and dropped, loudly; no state changed.
                log.warning("dropped a message from %s: %s: %s", peer, type(exc).__name__, exc)
                await self.relay.ack([deliver.seq])
                return
        await self.relay.ack([deliver.seq])
        await self._announce(peer, messages)
        resend, self._resend_due = self._resend_due, {}
        for target, bodies in resend.items():
            await self._resend(target, bodies)

    async def _open(self, peer: str, deliver: Deliver) -> list[Message]:
        session = self.store.load_session(peer)
        wire = deliver.body
        resend: list[payloads.Payload] = []
        if session is not None:
            if not _opens_another_session(session, wire):
                return await self._decrypt(peer, session, deliver)
            # A prekey message of another handshake (checked before any QKD key is fetched
            # for it). Either the peer started over, or both sides opened a session at once:
            # then the smaller handle's session wins on both sides, and the loser resends
            # what the winner dropped.
            if _unanswered(session) and _has_sent(session):
                if self.handle < peer:
                    raise ReplayedMessage("both opened a session; ours wins the tie-break")
                resend = self._undelivered(peer)
        if not _is_prekey(wire):
            raise MalformedMessage(f"a message from {peer} but no session with them")
        messages = await self._accept(peer, wire, deliver.msg)
        if resend:  # sent once this delivery is handled and the lock is free
            self._resend_due[peer] = resend
        return messages

    def _undelivered(self, peer: str) -> list[payloads.Payload]:
        delivered = self._receipted(peer, "delivered", outgoing=False) | self._receipted(
            peer, "read", outgoing=False)
        return [body for direction, body, _ in self._entries(peer)
                if direction == "out" and body.kind == "text" and body.id not in delivered]

    async def _resend(self, peer: str, bodies: list[payloads.Payload]) -> None:
        for body in bodies:
            with contextlib.suppress(MessengerError):
                await self._send_payload(peer, body, wait=False)

    async def _decrypt(self, peer: str, session: Session, deliver: Deliver) -> list[Message]:
        wire = deliver.body
        ids = session.qkd_needed(wire)
        qkd = await self.qkd.dec_keys(session.peer_sae_id, ids) if ids else None
        if ids and qkd is None:
            raise _Retry(f"QKD keys {', '.join(ids)} not available from the KME yet")
        events = session.decrypt(wire, qkd=qkd)
        messages = [e for e in events if isinstance(e, Message)]
        for event in events:
            if isinstance(event, Discarded):
                log.warning("discarded a held message from %s: %s", peer, event.reason)
        self.store.commit_incoming(peer, session, deliver.msg, messages)
        return messages

    async def _accept(self, peer: str, wire: bytes, msg_id: str) -> list[Message]:
        initial = Session.peek_initial(wire)
        if initial.initiator_handle != peer:
            raise IdentityMismatch("the opening message names another sender than the relay")
        contact = self.store.contact(peer)
        loaded = self.store.load_prekeys()
        if loaded is None:
            raise MessengerError("no prekeys in this profile")
        bundle, secrets = loaded
        ids = tuple(initial.qkd_key_ids)
        qkd = await self.qkd.dec_keys(initial.initiator_sae_id, ids) if ids else None
        if ids and qkd is None:
            raise _Retry("QKD keys of the opening message not available from the KME yet")
        session, events = Session.accept(
            wire, self.identity, self.handle, self.config.sae_id, bundle, secrets, qkd,
            config=self.ratchet_config,
            expected_initiator=contact.identity if contact else None,
        )
        messages = [e for e in events if isinstance(e, Message)]
        if contact is None:
            self.store.pin_identity(peer, session.peer_identity)
        self.store.accept_session(peer, session, secrets, bundle, msg_id, messages)
        self._emit(ContactEvent(self._contact_view(peer)))
        return messages

    async def _announce(self, peer: str, messages: list[Message]) -> None:
        delivered: list[str] = []
        for message in messages:
            try:
                body = payloads.decode(message.plaintext)
            except payloads.PayloadError as exc:
                log.warning("undecodable payload from %s: %s", peer, exc)
                continue
            if body.kind == "text":
                delivered.append(body.id)
                self._emit(MessageEvent(MessageView(
                    body.id, peer, False, body.text, body.ts, Delivery.RECEIVED,
                    message.label, "otp" if message.otp else "ratchet",
                )))
            elif body.kind == "receipt":
                state = Delivery.READ if body.state == "read" else Delivery.DELIVERED
                for payload_id in body.ids:
                    self._emit(DeliveryEvent(payload_id, peer, state))
            elif body.kind == "transfer":
                await self.files.on_payload(peer, body)
        if delivered:  # a receipt that cannot go now (e.g. policy 'require', no QKD) is skipped
            with contextlib.suppress(MessengerError):
                await self._send_payload(peer, payloads.receipt("delivered", delivered),
                                         wait=False)
        self._emit(KeyStatusEvent(self.key_status(peer)))

    # -- sending -----------------------------------------------------------------------

    async def send(self, peer: str, text: str) -> MessageView:
        try:
            body = payloads.text(text)
        except payloads.PayloadError as exc:
            raise MessengerError(str(exc)) from None
        if self.store.load_session(peer) is None:
            await self.add_contact(peer)
        label, mode = await self._send_payload(peer, body, wait=False)
        return MessageView(body.id, peer, True, text, body.ts, Delivery.PENDING, label, mode)

    async def send_and_wait(self, peer: str, text: str, timeout: float = SEND_TIMEOUT_S) -> str:
        """Send and return once the relay holds the message durably (for scripts)."""
        body = payloads.text(text)
        if self.store.load_session(peer) is None:
            await self.add_contact(peer)
        await self._send_payload(peer, body, wait=True, timeout=timeout)
        return body.id

    async def _send_payload(self, peer: str, body: payloads.Payload, *, wait: bool,
                            timeout: float = SEND_TIMEOUT_S) -> tuple[str, str]:
        async with self._lock:
            session = self.store.load_session(peer)
            if session is None:
                raise MessengerError(f"no session with {peer}: add them as a contact first")
            plaintext = body.encode()
            qkd = None
            if session.mode == "otp":
                shortfall = session.otp_shortfall(len(plaintext))
                if shortfall:
                    count = -(-shortfall // 32)
                    qkd = await self.qkd.enc_keys(session.peer_sae_id, count)
                    if qkd is None:
                        raise MessengerError(
                            f"OTP mode: the QKD pool cannot cover this message ({shortfall} "
                            f"more key bytes needed; {self.qkd.last_error or 'KME unreachable'})."
                            " Wait for the pool to refill, or switch to ratchet mode (Ctrl+O)."
                        )
            else:
                plan = session.send_plan()
                if plan.qkd_keys:
                    qkd = await self.qkd.enc_keys(session.peer_sae_id, plan.qkd_keys)
            try:
                outgoing = session.encrypt(plaintext, qkd=qkd)
            except QkdRequired as exc:
                raise MessengerError(
                    f"not sent: {exc} ({self.qkd.last_error or 'no QKD keys available'})"
                ) from None
            except ProtocolError as exc:
                raise MessengerError(f"not sent: {exc}") from None
            outbox_id = self.store.commit_outgoing(peer, session, outgoing, plaintext)
            self._outbox_ids[outgoing.message_id] = outbox_id
            self._outgoing_index[outgoing.message_id] = (peer, body.id)
            waiter: asyncio.Future[None] | None = None
            if wait:
                waiter = asyncio.get_running_loop().create_future()
                self._sent_waiters[outgoing.message_id] = waiter
            with contextlib.suppress(RelayError):  # stays in the outbox; resent on login
                await self.relay.send(peer, outgoing.wire, outgoing.message_id)
        if waiter is not None:
            try:
                await asyncio.wait_for(waiter, timeout)
            except TimeoutError:
                raise MessengerError(
                    "the relay has not confirmed the message yet; it is kept in the outbox and "
                    "sent when the relay is reachable"
                ) from None
        self._emit(KeyStatusEvent(self.key_status(peer)))
        return outgoing.label, "otp" if outgoing.otp else "ratchet"

    async def send_transfer_payload(self, peer: str, body: payloads.Payload) -> None:
        """An offer, decline or cancel of a file transfer, end-to-end encrypted."""
        await self._send_payload(peer, body, wait=False)

    # -- file transfers ----------------------------------------------------------------

    def transfers(self) -> list[TransferView]:
        return self.files.transfers()

    async def send_files(self, peer: str, paths: list[str], *,
                         limit_bytes_per_s: float = 0.0) -> TransferView:
        if peer == self.handle:
            raise MessengerError("that is your own handle")
        return await self.files.send_files(peer, paths, limit_bytes_per_s=limit_bytes_per_s)

    async def send_built(self, peer: str, built: BuiltManifest, *,
                         limit_bytes_per_s: float = 0.0) -> TransferView:
        """Like ``send_files`` with the files already hashed (e.g. while logging in)."""
        if peer == self.handle:
            raise MessengerError("that is your own handle")
        return await self.files.send_built(peer, built, limit_bytes_per_s=limit_bytes_per_s)

    async def accept_transfer(self, transfer_id: str) -> TransferView:
        return await self.files.accept(transfer_id)

    async def decline_transfer(self, transfer_id: str, reason: str = "declined") -> None:
        await self.files.decline(transfer_id, reason)

    async def cancel_transfer(self, transfer_id: str) -> None:
        await self.files.cancel(transfer_id)

    # -- contacts ----------------------------------------------------------------------

    async def add_contact(self, handle: str) -> ContactView:
        if handle == self.handle:
            raise MessengerError("that is your own handle")
        if self.store.load_session(handle) is not None:
            return self._contact_view(handle)
        if not self.relay.ready:
            await self.wait_online(10)
        try:
            answer = await self.relay.fetch_bundle(handle)
        except RelayError as exc:
            raise MessengerError(f"cannot add {handle}: {exc}") from None
        pinned = self.store.contact(handle)
        wire_bundle = answer.bundle
        try:
            bundle = parse_bundle_parts(
                handle, wire_bundle.identity, wire_bundle.signed, wire_bundle.signed_sig,
                [(o.key_id, o.key, o.sig) for o in wire_bundle.one_time],
                expected_identity=pinned.identity if pinned else None,
            )
        except ProtocolError as exc:
            raise MessengerError(f"{handle}'s prekey bundle was rejected: {exc}") from None
        qkd = await self.qkd.enc_keys(bundle.sae_id, self.ratchet_config.qkd_keys_per_turn)
        try:
            session = Session.initiate(self.identity, self.handle, self.config.sae_id, bundle,
                                       qkd, config=self.ratchet_config)
        except QkdRequired as exc:
            raise MessengerError(
                f"cannot open a session with {handle}: {exc} "
                f"({self.qkd.last_error or 'no QKD keys available'})"
            ) from None
        async with self._lock:
            if pinned is None:
                self.store.pin_identity(handle, bundle.identity)
            self.store.save_session(handle, session)
        view = self._contact_view(handle)
        self._emit(ContactEvent(view))
        return view

    def contacts(self) -> list[ContactView]:
        return [self._contact_view(peer) for peer in sorted(self.store.peers())]

    def _contact_view(self, peer: str) -> ContactView:
        contact = self.store.contact(peer)
        unread = len(self.unread(peer))
        history = self.history(peer)
        last = history[-1] if history else None
        # The relay keeps presence private; a message from the peer in the last few
        # minutes is the only (honest) online hint, otherwise "unknown".
        heard = max((m.timestamp for m in history if not m.outgoing), default=0.0)
        online = True if time.time() - heard < RECENTLY_ACTIVE_S else None
        return ContactView(
            peer, unread, bool(contact and contact.verified), online,
            last.text if last else "", last.timestamp if last else 0.0,
        )

    async def set_verified(self, peer: str, verified: bool) -> None:
        contact = self.store.contact(peer)
        if contact is None:
            raise MessengerError(f"{peer} is not a contact")
        self.store.pin_identity(peer, contact.identity, verified=verified)
        self._emit(ContactEvent(self._contact_view(peer)))

    def safety_number(self, peer: str) -> SafetyNumber:
        contact = self.store.contact(peer)
        if contact is None:
            raise MessengerError(f"{peer} is not a contact")
        me = self.identity.public
        digits = safety_number(self.handle, me, peer, contact.identity)
        code = safety_qr(self.handle, me, peer, contact.identity)
        return SafetyNumber(digits, qr_text(code))

    # -- history and views -------------------------------------------------------------

    def _entries(self, peer: str, limit: int = 2000) -> list[tuple[str, payloads.Payload, str]]:
        out = []
        for entry in self.store.history(peer, limit):
            try:
                out.append((entry.direction, payloads.decode(entry.plaintext), entry.label))
            except payloads.PayloadError:
                continue
        return out

    def _receipted(self, peer: str, state: str, *, outgoing: bool) -> set[str]:
        direction = "out" if outgoing else "in"
        ids: set[str] = set()
        for d, body, _ in self._entries(peer):
            if d == direction and body.kind == "receipt" and body.state == state:
                ids.update(body.ids)
        return ids

    def history(self, peer: str, limit: int = 500) -> list[MessageView]:
        entries = self._entries(peer)
        read = self._receipted(peer, "read", outgoing=False)
        delivered = self._receipted(peer, "delivered", outgoing=False) | read
        pending = {self._outgoing_index.get(e.message_id, ("", ""))[1]
                   for e in self.store.outbox() if e.peer == peer}
        views = []
        seen: set[str] = set()
        for direction, body, label in entries:
            if body.kind != "text" or body.id in seen:  # a resent message shows once
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
            mode = "otp" if label == "QKD one-time pad" else "ratchet"
            views.append(MessageView(body.id, peer, outgoing, body.text, body.ts, state,
                                     label, mode))
        return views[-limit:]

    def unread(self, peer: str) -> list[MessageView]:
        """Incoming messages not yet marked read (no read receipt sent for them)."""
        already = self._receipted(peer, "read", outgoing=True)
        return [m for m in self.history(peer) if not m.outgoing and m.message_id not in already]

    async def mark_read(self, peer: str) -> None:
        fresh = [m.message_id for m in self.unread(peer)]
        if fresh:
            with contextlib.suppress(MessengerError):
                await self._send_payload(peer, payloads.receipt("read", fresh), wait=False)

    def search(self, query: str) -> list[MessageView]:
        needle = query.casefold().strip()
        if not needle:
            return []
        return [m for peer in self.store.peers() for m in self.history(peer)
                if needle in m.text.casefold()]

    def export(self, peer: str, fmt: str) -> str:
        messages = self.history(peer, limit=100_000)
        if fmt == "json":
            return json.dumps([{
                "id": m.message_id, "from": self.handle if m.outgoing else peer,
                "to": peer if m.outgoing else self.handle, "text": m.text,
                "time": m.timestamp, "delivery": m.delivery.value, "keys": m.sources,
                "mode": m.mode,
            } for m in messages], indent=2, ensure_ascii=False)
        lines = [f"# qsecret conversation between {self.handle} and {peer}"]
        for m in messages:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(m.timestamp))
            who = self.handle if m.outgoing else peer
            lines.append(f"[{stamp}] {who}: {m.text}")
        return "\n".join(lines) + "\n"

    # -- modes and key status ----------------------------------------------------------

    async def set_mode(self, peer: str, mode: str) -> None:
        async with self._lock:
            session = self.store.load_session(peer)
            if session is None:
                raise MessengerError(f"no session with {peer}")
            try:
                session.set_mode(mode)
            except ValueError as exc:
                raise MessengerError(str(exc)) from None
            self.store.save_session(peer, session)

    def key_status(self, peer: str | None = None) -> KeyStatus:
        stats = self._link_stats or {}
        pool, link = stats.get("pool", {}), stats.get("link", {})
        qber = link.get("last_qber")
        threshold = float(link.get("qber_threshold", 0.11))
        alarm = None
        if qber is not None and qber > threshold:
            alarm = f"QBER {qber:.1%} above {threshold:.0%}: blocks aborted (eavesdropper?)"
        elif stats and not link.get("connected", True):
            alarm = "QKD link down"
        elif self.qkd.last_error:
            alarm = self.qkd.last_error
        sources, degraded, mode = "", False, "ratchet"
        session = self.store.load_session(peer) if peer else None
        if session is not None:
            status = session.status()
            mode = status.mode
            label = status.sending if status.sending != "-" else status.handshake
            if status.receiving != "-" and status.sending == "-":
                label = status.receiving
            sources, degraded = label, "degraded" in label
            if mode == "otp":
                sources = "QKD one-time pad"
        return KeyStatus(
            pool_keys=pool.get("stored"), pool_max=pool.get("max_key_count"),
            key_rate=link.get("key_rate_per_s"), qber=qber, qber_threshold=threshold,
            link_alarm=alarm, sources=sources, degraded=degraded, mode=mode,
            algorithms=("ML-KEM-768", "X25519", "Ed25519 + ML-DSA-65", "AES-256-GCM"),
            kme=f"{self.config.sae_id} @ {self.config.kme_url}" if self.qkd.configured else "",
        )

    async def _key_status_loop(self) -> None:
        while True:
            stats = await self.qkd.stats()
            if stats is not None:
                self._link_stats = stats
            self._emit(KeyStatusEvent(self.key_status()))
            await asyncio.sleep(KEY_STATUS_INTERVAL_S)


class _Retry(Exception):
    """The message cannot be opened yet (e.g. QKD keys not available): do not ack."""


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
    try:
        Session.peek_initial(wire)
    except ProtocolError:
        return False
    return True

