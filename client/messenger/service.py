"""The messenger of one unlocked profile: small parts wired together, one way.

Sending:   payload -> sessions.seal (QKD keys fetched outside the conversation's lock,
           committed to the outbox under it) -> outbox -> relay -> ``stored`` -> SENT.
Receiving: relay ``deliver`` -> inbox -> sessions.open (dec_keys outside the lock, commit
           under it) -> ack to the relay -> UI event -> delivery receipt.
Nothing is acknowledged to the relay before it is durable here, and nothing leaves
before the session state that sealed it is durable (see client.store).

The parts (sessions, outbox, inbox, contacts, history, key status, prekeys, transfers,
calls) know each other only through narrow interfaces; this module builds them and is the one
object the UIs hold (client.messenger.api.Messenger). ``stop`` ends everything in order
before the store closes (see lifecycle.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import replace

from client.call.signalling import REKEY_EVERY_S
from client.config import ClientConfig
from client.protocol import RatchetConfig
from client.protocol.identity import Identity
from client.store.store import Store
from client.transfer import BuiltManifest
from keysource.mix import QkdPolicy
from relay.wire import (
    KIND_MEDIA,
    AuthOk,
    BinaryFrame,
    Deliver,
    Error,
    Event,
    PrekeysLow,
    Stored,
    StoredGroup,
    StreamClose,
)

from . import payload as payloads
from .api import (
    CallState,
    CallView,
    Connection,
    ConnectionEvent,
    ContactEvent,
    ContactView,
    ConversationId,
    Delivery,
    ErrorEvent,
    GroupView,
    KeyStatus,
    KeyStatusEvent,
    MessageView,
    MessengerError,
    SafetyNumber,
    TransferView,
)
from .api import (
    Event as UiEvent,
)
from .calls import CallManager, Sink, Source
from .contacts import Contacts
from .groups import Groups, is_group_envelope
from .history import History
from .inbox import Inbox
from .key_status import KeyStatusTracker
from .lifecycle import EventBus, Lifecycle
from .outbox import Outbox
from .prekeys import PREKEYS_LOW, Prekeys
from .qkd_source import QkdSource
from .relay_link import RelayCallbacks, RelayError, RelayLink
from .sessions import Sessions
from .transfers import TransferManager, TransferSettings

log = logging.getLogger(__name__)

SEND_TIMEOUT_S = 15.0
STOP_GRACE_S = 10.0
KME_CLOSE_S = 2.0  # operations under way at stop: a KME or relay time-out ends each sooner


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
        self._life = Lifecycle()
        self._events = EventBus()
        self._started = False
        self._login_error: MessengerError | None = None
        self._logged_in = asyncio.Event()
        # The relay's backlog for us at the last login, and how many deliveries were handled
        # since (opened, dropped or held for QKD keys): caught_up() compares the two.
        self._backlog = 0
        self._handled = 0
        self._progress = asyncio.Event()  # set whenever the two counts above change
        self.connection = ConnectionEvent(Connection.CONNECTING)
        self.relay = RelayLink(
            config.relay_url, handle, identity.public.signing_key, identity.sign,
            RelayCallbacks(self._on_ready, self._on_relay_event, self._on_state, self._on_pin,
                           on_login=self._on_login),
            pinned_fingerprint=config.relay_fingerprint,
            spawn=self._life.spawn,
        )
        prekeys_lock = asyncio.Lock()
        self._history = History(store, handle, self._pending)
        self._sessions = Sessions(store, self.qkd, identity, handle, config.sae_id,
                                  self.ratchet_config, prekeys_lock,
                                  self._history.undelivered)
        self._outbox = Outbox(self._sessions, store, self.relay, self._emit)
        self._contacts = Contacts(store, self._history, self._sessions, self.relay, handle,
                                  identity)
        self._keys = KeyStatusTracker(self.qkd, store, f"{config.sae_id} @ {config.kme_url}",
                                      handle)
        self._prekeys = Prekeys(store, self.relay, identity, handle, prekeys_lock,
                                spawn=self._life.spawn,
                                on_error=lambda exc: self._emit(ErrorEvent(exc)))
        self.files = TransferManager(
            TransferSettings(handle, config.downloads_path, config.auto_accept, self.policy),
            store, self.relay, self.qkd, self, self._emit)
        self.calls = CallManager(self.relay, self.qkd, self, self._emit, self.policy,
                                 spawn=self._life.spawn)
        self.groups = Groups(store, identity, handle, self, self.relay, self._emit,
                             spawn=self._life.spawn)
        self._inbox = Inbox(self._sessions, self.relay, self, self._on_payload,
                            self._emit, spawn=self._life.spawn, on_call=self.calls.on_payload,
                            on_new_session=self.groups.on_new_session)

    # -- lifecycle ---------------------------------------------------------------------

    @property
    def stopped(self) -> bool:
        return self._life.stopping

    def subscribe(self, callback: Callable[[UiEvent], None]) -> None:
        self._events.subscribe(callback)

    def _emit(self, event: UiEvent) -> None:
        self._events.emit(event)

    async def start(self) -> None:
        self._life.check()
        if self._started:
            return
        self._started = True
        self._life.spawn(self.relay.run(), "relay")
        self._life.spawn(self._keys.run(self._emit), "key-status")

    async def stop(self) -> None:
        """Stop in order: refuse new work, stop the relay link and every task (key status,
        login work, transfers), let operations under way commit, stop delivering events,
        close the KME client, and only then the store."""
        if self._life.stopping:
            return
        self._life.stopping = True
        await self.calls.close()  # live calls hang up while the outbox can still say so
        self._outbox.stop()
        self.groups.stop()
        await self.relay.close()
        await self._life.cancel_tasks()  # relay read loop, login work, key status
        await self.files.close()  # transfer tasks end; their positions are saved
        await self._life.cancel_tasks()  # anything the transfers started while ending
        await self._life.finish_operations(STOP_GRACE_S)
        self._events.muted = True
        try:  # a KME that stopped answering must not keep us from closing
            await asyncio.wait_for(self.qkd.aclose(), KME_CLOSE_S)
        except TimeoutError:
            log.info("the KME connection did not close within %ss: dropped", KME_CLOSE_S)
        self._life.stopped = True
        self.store.close()

    async def wait_online(self, timeout: float = 10.0) -> None:
        """Until logged in and this login's work (prekey upload, outbox) is done; a refusal
        by the relay on the way is raised here (so a CLI command exits non-zero)."""
        try:
            await self.relay.wait_ready(timeout)
            await asyncio.wait_for(self._logged_in.wait(), timeout)
        except RelayError as exc:
            raise MessengerError(str(exc)) from None
        except TimeoutError:
            raise MessengerError(
                f"logged in to the relay, but the login work did not finish within "
                f"{timeout:.0f}s") from None
        if self._login_error is not None:
            raise self._login_error

    async def caught_up(self, stall_timeout: float = 30.0) -> None:
        """Until every envelope the relay held for us at login has been handled (opened,
        dropped as bad, or held for QKD keys). Waits as long as deliveries keep coming;
        ``MessengerError`` when none was handled for ``stall_timeout`` seconds, saying how
        many are still at the relay (nothing is lost: they come at the next login)."""
        await self.wait_online()
        while self._handled < self._backlog:
            before = self._handled
            self._progress.clear()
            try:
                await asyncio.wait_for(self._progress.wait(), stall_timeout)
            except TimeoutError:
                if self._handled == before:
                    left = self._backlog - self._handled
                    raise MessengerError(
                        f"{left} message(s) still at the relay: none arrived within "
                        f"{stall_timeout:.0f}s (they stay queued for the next login)"
                    ) from None
        await self.groups.settle()  # changes just received: forwarded, new keys sent

    # -- relay callbacks ---------------------------------------------------------------

    def _on_state(self, event: ConnectionEvent) -> None:
        self.connection = event
        if event.state is Connection.OFFLINE:
            self._logged_in.clear()
            self.files.on_disconnect()
            self.calls.on_disconnect()
        self._emit(event)

    def _on_pin(self, fingerprint: str) -> None:
        log.warning("pinned the relay's TLS certificate on first use: %s", fingerprint)
        self.config = replace(self.config, relay_fingerprint=fingerprint)
        if self._save_config:
            self._save_config(self.config)

    def _on_login(self, auth: AuthOk) -> None:
        """The relay's backlog at this login; deliveries are counted from here on.

        Runs in the read loop before any frame read after the login is dispatched: the
        login work task (``_on_ready``) may start only after several deliveries that were
        read together with the login have been handled, and counting from there forgot
        them (``caught_up`` then waited for messages already handled).
        """
        self._backlog, self._handled = auth.queued, 0
        self._progress.set()

    async def _on_ready(self, auth: AuthOk) -> None:
        """Login work, beside the relay's read loop: prekeys, then the outbox, then the
        transfers; ``wait_online`` returns (or raises the refusal) once it is done."""
        self._login_error = None
        try:
            try:
                if auth.new:
                    await self._prekeys.publish()
                elif auth.prekeys < PREKEYS_LOW:
                    await self._prekeys.replenish()
            except MessengerError as exc:
                log.error("%s", exc)
                self._login_error = exc
                self._emit(ErrorEvent(exc))
            try:
                await self._outbox.resend_all()
                await self.groups.resend_all()
            except RelayError as exc:  # the connection dropped again: the next login resends
                log.info("outbox not resent: %s", exc)
            self.files.on_ready()
        finally:
            self._logged_in.set()

    async def _on_relay_event(self, event: Event) -> None:
        if isinstance(event, BinaryFrame):
            if event.kind == KIND_MEDIA:
                self.calls.on_binary(event)
            else:
                await self.files.on_binary(event)
        elif isinstance(event, StreamClose):
            self.calls.on_stream_closed(bytes.fromhex(event.stream))
        elif isinstance(event, Deliver):
            try:
                if is_group_envelope(event.body):
                    await self.groups.receive(event)
                else:
                    await self._inbox.receive(event)
            finally:
                self._handled += 1
                self._progress.set()
        elif isinstance(event, Stored):
            self._outbox.on_stored(event.msg)
        elif isinstance(event, StoredGroup):
            self.groups.on_stored(event)
        elif isinstance(event, Error):
            if (not self.calls.on_error(event) and not self.files.on_error(event)
                    and not self.groups.on_error(event)
                    and not self._outbox.on_refused(event)):
                self._refused(event)
        elif isinstance(event, PrekeysLow):
            # Never awaited here: this is the relay's read loop, which must stay free to
            # deliver the upload's answer and everyone's messages.
            log.info("relay reports %d one-time prekeys left: publishing more", event.remaining)
            self._prekeys.request_refill()

    def _refused(self, error: Error) -> None:
        """An error frame about nothing we track: still the user's to see."""
        log.warning("the relay refused something: %s (%s)", error.message, error.code)
        self._emit(ErrorEvent(MessengerError(
            f"the relay refused a request: {error.message} ({error.code})",
            code=error.code, reason=error.message)))

    # -- what the parts ask of the whole (inbox.Replies, transfers.Conversations) -------

    def _pending(self, conversation: ConversationId) -> set[str]:
        return self._outbox.pending(conversation)

    async def send_quietly(self, conversation: ConversationId,
                           body: payloads.Payload) -> None:
        """A receipt or a resend: goes when it can, never raises."""
        with contextlib.suppress(MessengerError):
            await self._outbox.send(conversation, body, wait=False, timeout=SEND_TIMEOUT_S)

    async def _on_payload(self, conversation: ConversationId,
                          body: payloads.Payload) -> None:
        """A payload that is neither a text, a receipt nor a call: a group's change, sender
        key (with the keys it rode on) or receipt, else a file transfer's."""
        if isinstance(body, payloads.GroupChanges | payloads.SenderKey | payloads.GroupReceipt):
            session = self.store.load_session(conversation.peer)
            label = session.status().receiving if session is not None else "?"
            await self.groups.on_payload(conversation, body, label)
        elif isinstance(body, payloads.TransferMessage):
            await self.files.on_payload(conversation, body)

    async def send_pairwise(self, conversation: ConversationId, body: payloads.Payload,
                            *, wait: bool) -> None:
        """A group's change or sender key, through the pairwise session (groups.Pairwise)."""
        await self._outbox.send(conversation, body, wait=wait, timeout=SEND_TIMEOUT_S)

    def pairwise_held_from(self, peer: str) -> bool:
        """Whether a pairwise message from ``peer`` waits in the inbox for its keys
        (groups.Pairwise: their group messages then wait too)."""
        return self._inbox.holds_from(peer)

    def contact_view(self, conversation: ConversationId) -> ContactView:
        return self._contacts.view(conversation)

    def key_status_of(self, conversation: ConversationId | None) -> KeyStatus:
        return self._keys.status(conversation)

    def peer_sae_id(self, conversation: ConversationId) -> str | None:
        session = self.store.load_session(conversation.peer)
        return session.peer_sae_id if session is not None else None

    async def ensure_session(self, conversation: ConversationId) -> str:
        if not self._sessions.exists(conversation):
            await self._add_contact(conversation.peer)
        sae_id = self.peer_sae_id(conversation)
        if sae_id is None:
            raise MessengerError(f"no session with {conversation.peer}")
        return sae_id

    def verified(self, conversation: ConversationId) -> bool:
        return self._contacts.verified(conversation)

    def group(self, name_or_id: str) -> GroupView:
        """A group's roster as this member sees it (transfers.Conversations)."""
        return self.groups.get(name_or_id)

    def known_caller(self, conversation: ConversationId) -> bool:
        """Whether the peer may ring us: a verified contact, one the user added, or one we
        exchanged anything with beyond their own call signalling (docs/protocol.md §14);
        others are refused."""
        return (self._contacts.verified(conversation)
                or self._contacts.added_by_me(conversation)
                or self._history.exchanged(conversation))

    async def send_transfer_message(self, conversation: ConversationId,
                                    body: payloads.TransferMessage, *,
                                    wait: bool = False) -> None:
        """An offer, decline or cancel of a file transfer, end-to-end encrypted; ``wait``:
        until the relay holds it durably (a group file's offers)."""
        await self._outbox.send(conversation, body, wait=wait, timeout=SEND_TIMEOUT_S)

    async def send_call_message(self, conversation: ConversationId,
                                body: payloads.CallPayload, *, wait: bool = False) -> bytes:
        """A call's signalling message, end-to-end encrypted (queued at the relay for an
        offline peer, like a text); ``wait``: until the relay holds it durably. Returns the
        sealed message's exporter secret (an offer's call keys derive from it)."""
        sealed = await self._outbox.send(conversation, body, wait=wait, timeout=SEND_TIMEOUT_S)
        return sealed.exporter

    # -- calls -------------------------------------------------------------------------

    async def place_call(self, peer: str, source: Source, sink: Sink | None, *,
                         rekey_every: float = REKEY_EVERY_S) -> CallView:
        """Call ``peer`` with sound from ``source`` into ``sink`` (client.call.audio)."""
        if peer == self.handle:
            raise MessengerError("that is your own handle")
        async with self._life.operation():
            return await self.calls.place(peer, source, sink, rekey_every=rekey_every)

    async def answer_call(self, call_id: str | None, source: Source,
                          sink: Sink | None) -> CallView:
        async with self._life.operation():
            return await self.calls.answer(call_id, source, sink)

    async def decline_call(self, call_id: str | None, busy: bool = False) -> None:
        async with self._life.operation():
            await self.calls.decline(call_id, busy=busy)

    async def hang_up(self, call_id: str | None = None) -> CallView:
        async with self._life.operation():
            return await self.calls.hang_up(call_id)

    async def rekey_call(self, call_id: str | None = None) -> CallView:
        """Rekey the call now with fresh QKD keys (a new KID each way); see CallManager.rekey."""
        async with self._life.operation():
            return await self.calls.rekey(call_id)

    def call_view(self, call_id: str) -> CallView:
        """The call now, with its live statistics (MessengerError if there is none)."""
        return self.calls.view(call_id)

    def live_call(self) -> CallView | None:
        """The call not ended yet (there is at most one), if any."""
        live = [view for view in self.calls.calls() if view.state is not CallState.ENDED]
        return live[0] if live else None

    # -- sending -----------------------------------------------------------------------

    async def send(self, peer: str, text: str) -> MessageView:
        async with self._life.operation():
            conversation, body = await self._text_for(peer, text)
            sealed = await self._outbox.send(conversation, body, wait=False,
                                             timeout=SEND_TIMEOUT_S)
            self._emit(KeyStatusEvent(self._keys.status(conversation)))
            return MessageView(body.id, peer, True, text, body.ts, Delivery.PENDING,
                               sealed.label, "otp" if sealed.otp else "ratchet")

    async def send_and_wait(self, peer: str, text: str, timeout: float = SEND_TIMEOUT_S) -> str:
        """Send and return once the relay holds the message durably (for scripts)."""
        async with self._life.operation():
            conversation, body = await self._text_for(peer, text)
            await self._outbox.send(conversation, body, wait=True, timeout=timeout)
            return body.id

    async def _text_for(self, peer: str, text: str) -> tuple[ConversationId, payloads.Text]:
        """The text payload and its conversation, adding ``peer`` as a contact if new."""
        try:
            body = payloads.text(text)
        except payloads.PayloadError as exc:
            raise MessengerError(str(exc)) from None
        conversation = ConversationId.direct(peer)
        if not self._sessions.exists(conversation):
            await self._add_contact(peer)
        return conversation, body

    # -- groups ------------------------------------------------------------------------

    async def create_group(self, name: str, members: list[str]) -> GroupView:
        async with self._life.operation():
            return await self.groups.create(name, members)

    async def add_to_group(self, group: str, members: list[str]) -> GroupView:
        async with self._life.operation():
            return await self.groups.add(group, members)

    async def remove_from_group(self, group: str, members: list[str]) -> GroupView:
        async with self._life.operation():
            return await self.groups.remove(group, members)

    async def leave_group(self, group: str) -> GroupView:
        async with self._life.operation():
            return await self.groups.leave(group)

    async def rename_group(self, group: str, name: str) -> GroupView:
        async with self._life.operation():
            return await self.groups.rename(group, name)

    async def set_group_admin(self, group: str, members: list[str], admin: bool) -> GroupView:
        async with self._life.operation():
            return await self.groups.set_admin(group, members, admin)

    def group_list(self) -> list[GroupView]:
        self._life.check()
        return self.groups.list()

    def group_history(self, group: str, limit: int = 500) -> list[MessageView]:
        self._life.check()
        return self.groups.history(group, limit)

    def group_unread(self) -> dict[str, int]:
        """Group ID -> messages received and not shown yet (by the TUI or ``recv``)."""
        self._life.check()
        return dict(Counter(m.group_id for m in self.groups.unread()))

    def mark_group_shown(self, group: str) -> None:
        self._life.check()
        self.groups.mark_shown(group)

    async def send_group(self, group: str, text: str, *, wait: bool = True) -> MessageView:
        """Seal once with this member's sender key, upload once for every member; with
        ``wait``, return once the relay holds every copy."""
        async with self._life.operation():
            return await self.groups.send(group, text, wait=wait)

    # -- file transfers ----------------------------------------------------------------

    def transfers(self) -> list[TransferView]:
        return self.files.transfers()

    async def send_files(self, peer: str, paths: list[str], *,
                         limit_bytes_per_s: float = 0.0) -> TransferView:
        if peer == self.handle:
            raise MessengerError("that is your own handle")
        async with self._life.operation():
            if peer.startswith("@"):  # a group file: uploaded once, spooled per member
                return await self.files.send_group_files(
                    peer[1:], paths, limit_bytes_per_s=limit_bytes_per_s)
            return await self.files.send_files(peer, paths, limit_bytes_per_s=limit_bytes_per_s)

    async def send_built(self, peer: str, built: BuiltManifest, *,
                         limit_bytes_per_s: float = 0.0,
                         relay_timeout: float = 10.0) -> TransferView:
        """Like ``send_files`` with the files already listed; it may start before the
        relay login finished (it waits up to ``relay_timeout`` for it)."""
        if peer == self.handle:
            raise MessengerError("that is your own handle")
        async with self._life.operation():
            if peer.startswith("@"):
                return await self.files.send_group_built(
                    peer[1:], built, limit_bytes_per_s=limit_bytes_per_s,
                    relay_timeout=relay_timeout)
            return await self.files.send_built(peer, built, limit_bytes_per_s=limit_bytes_per_s,
                                               relay_timeout=relay_timeout)

    async def accept_transfer(self, transfer_id: str) -> TransferView:
        async with self._life.operation():
            return await self.files.accept(transfer_id)

    async def decline_transfer(self, transfer_id: str, reason: str = "declined") -> None:
        async with self._life.operation():
            await self.files.decline(transfer_id, reason)

    async def cancel_transfer(self, transfer_id: str) -> None:
        async with self._life.operation():
            await self.files.cancel(transfer_id)

    # -- contacts ----------------------------------------------------------------------

    async def add_contact(self, handle: str) -> ContactView:
        async with self._life.operation():
            return await self._add_contact(handle)

    async def _add_contact(self, handle: str) -> ContactView:
        view = await self._contacts.add(handle)
        self._emit(ContactEvent(view))
        return view

    def contacts(self) -> list[ContactView]:
        self._life.check()
        return self._contacts.all()

    async def set_verified(self, peer: str, verified: bool) -> None:
        async with self._life.operation():
            view = self._contacts.set_verified(ConversationId.direct(peer), verified)
            self._emit(ContactEvent(view))

    def safety_number(self, peer: str) -> SafetyNumber:
        self._life.check()
        return self._contacts.safety_number(ConversationId.direct(peer))

    # -- history and views -------------------------------------------------------------

    def history(self, peer: str, limit: int = 500) -> list[MessageView]:
        self._life.check()
        return self._history.messages(ConversationId.direct(peer), limit)

    def held_for_keys(self) -> int:
        """Messages here but not readable yet: waiting for their QKD keys (tried again
        within seconds) or, in a group, for the sender key that travels beside them."""
        self._life.check()
        return self._inbox.held + self.groups.held

    def unread(self, peer: str) -> list[MessageView]:
        """Incoming messages not yet marked read (no read receipt sent for them)."""
        self._life.check()
        return self._history.unread(ConversationId.direct(peer))

    async def mark_read(self, peer: str) -> None:
        async with self._life.operation():
            conversation = ConversationId.direct(peer)
            fresh = [m.message_id for m in self._history.unread(conversation)]
            if fresh:
                await self.send_quietly(conversation, payloads.receipt("read", fresh))

    def search(self, query: str) -> list[MessageView]:
        self._life.check()
        return self._history.search(query)

    def export(self, peer: str, fmt: str) -> str:
        self._life.check()
        return self._history.export(ConversationId.direct(peer), fmt)

    # -- modes and key status ----------------------------------------------------------

    async def set_mode(self, peer: str, mode: str) -> None:
        async with self._life.operation():
            await self._sessions.set_mode(ConversationId.direct(peer), mode)

    def key_status(self, peer: str | None = None) -> KeyStatus:
        self._life.check()
        return self._keys.status(ConversationId.direct(peer) if peer else None)
