"""Calls of one messenger: the thin asyncio layer around client.call's sans-I/O cores.

Signalling (client.call.signalling) travels as ``call`` payloads inside the conversation's
end-to-end session, through the outbox like a text. The call's session secret (in every
epoch's transcript) is exported from the ratchet message that carries the offer
(client.protocol.exporter): the caller learns it when the outbox seals the offer, the
callee when the inbox opens it, so it binds the call's keys to this conversation's current
ratchet state and nothing secret rides in the offer. Each epoch's keys mix
fresh QKD keys (``enc_keys`` at the caller, ``dec_keys`` at the callee, the same KME client
and policy as messages), a fresh ML-KEM-768 encapsulation and a fresh X25519 agreement.

Media goes as binary frames on a live relay ``media`` stream whose id is the call id. The
caller opens the stream before anything else, so a peer who is offline is known at once (the
relay answers ``recipient_offline``): the call ends "offline" and a ``missed`` message waits
at the relay for the peer, a missed-call line in both histories.

One clock task per call ticks every 20 ms on absolute deadlines (no drift): it gives the
signalling machine the time (ring time-out, a rekey every 60 s) and, while the call is
active, seals one frame of the source and plays one frame into the sink. Opus, PyAV and
numpy load only when a call's keys are installed (client.call.media).

Rekeys: the caller fetches fresh QKD keys and proposes; the callee installs the new receive
key at once, but keeps sealing under its old KID until a frame under the new caller KID
arrives (the proof the caller holds the new keys; after a grace it switches anyway), so no
frame is sealed under a key the other side does not hold yet. Old receive KIDs are retired
after the grace.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Protocol

from client.call.signalling import (
    CALL_ID_BYTES,
    OUTDATED,
    REKEY_EVERY_S,
    REKEY_GRACE_S,
    RING_TIMEOUT_S,
    VERSION,
    Call,
    CallMessage,
    Effect,
    Ended,
    InstallKeys,
    Kind,
    NeedQkd,
    QkdKeys,
    Send,
    SignallingError,
    State,
    call_secret,
    declined,
    refuse_outdated,
)
from keysource.mix import QkdPolicy
from relay.wire import KIND_MEDIA, BinaryFrame, Error

from . import payload as payloads
from .api import (
    CallEvent,
    CallState,
    CallView,
    ConversationId,
    Event,
    MessageEvent,
    MessengerError,
)
from .history import call_line
from .relay_link import RelayError, StreamRefused
from .sessions import KeySource

log = logging.getLogger(__name__)

FRAME_S = 0.020
STREAM_GONE_GRACE_S = 1.0  # the media stream closed: the hang-up message may still come
BEHIND_RESET_S = 0.5  # the clock fell this far behind (a suspended process): start afresh
QKD_KEYS_PER_EPOCH = 1
KEEP_ENDED_CALLS = 32  # ended calls kept for their views (the newest)
OFFLINE = "offline"
NOT_A_CONTACT = "not a contact"
_STATE = {State.OFFERING: CallState.CALLING, State.RINGING: CallState.RINGING,
          State.ACTIVE: CallState.ACTIVE, State.ENDED: CallState.ENDED}

Spawn = Callable[[Coroutine[Any, Any, Any], str], "asyncio.Task[Any] | None"]


class CallRelay(Protocol):
    """The relay's live streams (client.messenger.relay_link.RelayLink)."""

    @property
    def ready(self) -> bool: ...
    async def open_stream(self, stream: bytes, to: str, kind: str = "file") -> None: ...
    async def close_stream(self, stream: bytes) -> None: ...
    async def send_binary(self, kind: int, stream: bytes, seq: int, payload: bytes) -> None: ...


class CallConversations(Protocol):
    """What calls ask of the rest of the messenger (client.messenger.service)."""

    async def ensure_session(self, conversation: ConversationId) -> str: ...
    async def send_call_message(self, conversation: ConversationId,
                                body: payloads.CallPayload, *, wait: bool = False) -> bytes:
        """Seal and send; returns the sealed message's exporter secret."""
        ...
    def known_caller(self, conversation: ConversationId) -> bool: ...


class Source(Protocol):  # client.call.audio.Source, without importing numpy here
    def read(self) -> Any: ...


class Sink(Protocol):
    def write(self, frame: Any) -> None: ...


@dataclass
class _Call:
    """Everything the manager tracks about one call."""

    core: Call
    peer: str
    sae_id: str
    started_at: float
    source: Source | None = None
    sink: Sink | None = None
    sender: Any = None  # client.call.media.MediaSender, once keyed
    receiver: Any = None  # client.call.media.MediaReceiver, once keyed
    deferred: tuple[bytes, int, int, float] | None = None  # callee: key, KID, proof KID, by
    sources: str = ""
    reason: str = ""
    by_peer: bool = False
    stream_open: bool = False
    answered_at: float | None = None
    offer: CallMessage | None = None
    clock: asyncio.Task[None] | None = None
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    source_done: asyncio.Event = field(default_factory=asyncio.Event)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    timers: list[asyncio.TimerHandle] = field(default_factory=list)
    frames_sent: int = 0
    frames_played: int = 0
    stray_frames: int = 0  # media frames before the keys, or after the end: dropped
    clock_stalls: int = 0  # times the 20 ms clock fell over two frames behind (a starved
    clock_stall_max_s: float = 0.0  # process): it catches up, the peer hears a gap
    asked_at: float | None = None  # caller: when the offer or rekey awaiting a reply went
    round_trip_s: float | None = None  # caller: offer -> ringing, rekey -> its ack

    @property
    def call_id(self) -> bytes:
        return self.core.call_id

    @property
    def conversation(self) -> ConversationId:
        return ConversationId.direct(self.peer)

    @property
    def live(self) -> bool:
        return self.core.state is not State.ENDED


class CallManager:
    """Places, answers and carries the calls of one profile (one live call at a time)."""

    def __init__(self, relay: CallRelay, qkd: KeySource, conversations: CallConversations,
                 emit: Callable[[Event], None], policy: QkdPolicy,
                 spawn: Spawn | None = None) -> None:
        self._relay = relay
        self._qkd = qkd
        self._conversations = conversations
        self._emit = emit
        self._policy = policy
        self._spawn = spawn
        self._calls: dict[bytes, _Call] = {}
        self._background: set[asyncio.Task[Any]] = set()
        self._closed = False

    # -- views -------------------------------------------------------------------------

    def calls(self) -> list[CallView]:
        return [self._view(item) for item in self._calls.values()]

    def view(self, call_id: str) -> CallView:
        return self._view(self._find(call_id))

    def _view(self, item: _Call) -> CallView:
        stats: dict[str, Any] = {"frames_sent": item.frames_sent,
                                 "frames_played": item.frames_played,
                                 "stray_frames": item.stray_frames,
                                 "clock_stalls": item.clock_stalls,
                                 "clock_stall_max_ms": round(item.clock_stall_max_s * 1000, 1)}
        if item.round_trip_s is not None:  # through both ends' sessions and the relay
            stats["signalling_round_trip_ms"] = round(item.round_trip_s * 1000, 1)
        if item.sender is not None and item.sender.round_trip_s is not None:
            # echoes in the sealed media frames: relay and both event loops, no KME or ratchet
            stats["media_round_trip_ms"] = round(item.sender.round_trip_s * 1000, 1)
        if item.receiver is not None:
            received = item.receiver.stats
            jitter = received.jitter
            stats.update({
                "frames_opened": received.opened,
                "refused": dict(received.refused),
                "refused_total": sum(received.refused.values()),
                "undecodable": item.receiver.undecodable,
                "received": jitter.received, "lost": jitter.lost, "late": jitter.late,
                "recovered_fec": jitter.recovered, "duplicates": jitter.duplicates,
                "skipped": jitter.skipped, "waits": jitter.waits,
                "loss": round(jitter.loss, 4), "jitter_ms": round(jitter.jitter_s * 1000, 2),
                "target_delay_ms": round(jitter.target_s * 1000, 1),
                "playout_delay_ms": round(jitter.delay_s * 1000, 1),
                "wait_runs": [list(run) for run in item.receiver.waits],
            })
        return CallView(item.call_id.hex(), item.peer, item.core.caller,
                        _STATE[item.core.state], item.sources, item.reason, item.by_peer,
                        item.started_at, item.answered_at, item.core.rekeys, stats)

    def _changed(self, item: _Call) -> None:
        self._emit(CallEvent(self._view(item)))

    def _find(self, call_id: str | None, *, ringing: bool = False) -> _Call:
        """The call whose id starts with ``call_id`` (None: the one live call)."""
        found = [item for item in self._calls.values()
                 if (item.live if call_id is None else item.call_id.hex().startswith(call_id))
                 and (not ringing or (not item.core.caller
                                      and item.core.state is State.RINGING))]
        if len(found) != 1:
            what = "ringing call" if ringing else "call"
            raise MessengerError(f"no such {what}" if not found else
                                 f"{len(found)} calls match: give more of the call id")
        return found[0]

    async def wait(self, call_id: str, *, source_done: bool = False,
                   timeout: float | None = None) -> CallView:
        """Until the call ended (or, with ``source_done``, its source ran out); the view."""
        item = self._find(call_id)
        waits = [asyncio.ensure_future(item.ended.wait())]
        if source_done:
            waits.append(asyncio.ensure_future(item.source_done.wait()))
        try:
            await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiting in waits:
                waiting.cancel()
        return self._view(item)

    # -- the user ----------------------------------------------------------------------

    async def place(self, peer: str, source: Source, sink: Sink | None, *,
                    rekey_every: float = REKEY_EVERY_S) -> CallView:
        """Call ``peer``. An offline peer ends the call at once ("offline") and a missed
        call waits for them at the relay. ``rekey_every``: seconds between rekeys."""
        self._check_open()
        if any(item.live for item in self._calls.values()):
            raise MessengerError("already in a call: hang up first")
        conversation = ConversationId.direct(peer)
        sae_id = await self._conversations.ensure_session(conversation)
        call_id = os.urandom(CALL_ID_BYTES)
        try:
            await self._relay.open_stream(call_id, peer, "media")
        except StreamRefused as exc:
            if exc.code != "recipient_offline":
                raise MessengerError(f"the relay refused the call: {exc.reason}",
                                     code=exc.code, reason=exc.reason) from None
            return await self._offline(conversation, call_id)
        except RelayError as exc:
            raise MessengerError(f"cannot call {peer}: {exc}") from None
        try:
            qkd = await self._fresh_qkd(sae_id)
            core, effects = Call.outgoing(qkd, self._now(), self._policy, call_id=call_id,
                                          rekey_every=rekey_every)
        except SignallingError as exc:
            with contextlib.suppress(RelayError):
                await self._relay.close_stream(call_id)
            raise MessengerError(str(exc)) from None
        except BaseException:
            with contextlib.suppress(RelayError):
                await self._relay.close_stream(call_id)
            raise
        item = _Call(core, peer, sae_id, time.time(), source=source, sink=sink,
                     stream_open=True)
        self._add(item)
        async with item.lock:  # the answer waits until the offer's secret is bound
            await self._apply(item, effects)
        if item.live:
            self._start_clock(item)
        self._changed(item)
        return self._view(item)

    async def _offline(self, conversation: ConversationId, call_id: bytes) -> CallView:
        missed = CallMessage(Kind.MISSED, call_id, reason=OFFLINE)
        body = payloads.call(missed.encode())
        await self._conversations.send_call_message(conversation, body, wait=True)
        line = call_line(body, conversation.peer, True, "")
        if line is not None:
            self._emit(MessageEvent(line))
        view = CallView(call_id.hex(), conversation.peer, True, CallState.ENDED,
                        reason=OFFLINE, started_at=time.time())
        self._emit(CallEvent(view))
        return view

    async def answer(self, call_id: str | None, source: Source, sink: Sink | None) -> CallView:
        """Accept the ringing call (``call_id`` None: the only one)."""
        self._check_open()
        item = self._find(call_id, ringing=True)
        async with item.lock:
            if item.core.state is not State.RINGING or item.offer is None:
                raise MessengerError("the call is no longer ringing")
            qkd = await self._named_qkd(item, item.offer.qkd_key_ids)
            if qkd is None:
                await self._apply(item, item.core.hang_up("QKD keys unavailable"))
                raise MessengerError("the QKD keys the caller named are not at your KME: "
                                     "call refused")
            item.source, item.sink = source, sink
            await self._apply(item, item.core.answer(qkd, self._now()))
        self._changed(item)
        return self._view(item)

    async def decline(self, call_id: str | None, *, busy: bool = False) -> None:
        item = self._find(call_id, ringing=True)
        async with item.lock:
            await self._apply(item, item.core.decline(busy=busy))
        self._changed(item)  # a UI learns of every change from CallEvent, its own too

    async def hang_up(self, call_id: str | None, reason: str = "hung up") -> CallView:
        item = self._find(call_id)
        async with item.lock:
            await self._apply(item, item.core.hang_up(reason))
        self._changed(item)
        return self._view(item)

    async def rekey(self, call_id: str | None) -> CallView:
        """Rekey the active call now with fresh QKD keys (``call_id`` None: the live call).
        The caller starts it; at the callee this asks the caller to (``rekey_ask``), so the
        count goes up at both ends once the new keys are installed."""
        item = self._find(call_id)
        async with item.lock:
            if item.core.state is not State.ACTIVE:
                raise MessengerError("only an active call can be rekeyed")
            effects = item.core.request_rekey()
            if not effects:
                raise MessengerError("a rekey is already under way")
            await self._apply(item, effects)
        self._changed(item)
        return self._view(item)

    async def close(self) -> None:
        """Hang up every live call (the peer is told while the relay is there)."""
        self._closed = True
        for item in list(self._calls.values()):
            if item.live:
                with contextlib.suppress(MessengerError):
                    async with item.lock:
                        await self._apply(item, item.core.hang_up("hung up"))
            if item.clock is not None:
                item.clock.cancel()
        tasks = [item.clock for item in self._calls.values() if item.clock is not None]
        tasks += list(self._background)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    def _add(self, item: _Call) -> None:
        self._calls[item.call_id] = item
        ended = [key for key, other in self._calls.items() if not other.live]
        for key in ended[:max(0, len(ended) - KEEP_ENDED_CALLS)]:
            del self._calls[key]

    def _check_open(self) -> None:
        if self._closed:
            raise MessengerError("the messenger is stopping")

    # -- the peer ----------------------------------------------------------------------

    async def on_payload(self, conversation: ConversationId, body: payloads.CallPayload,
                         message_secret: bytes = b"") -> None:
        """A ``call`` payload arrived (from the inbox, in the relay's read loop: anything
        that waits for a KME runs in a task of its own). ``message_secret``: the exporter
        secret of the message that carried it (an offer's session secret derives from it)."""
        try:
            message = CallMessage.decode(body.data)
        except SignallingError as exc:
            log.warning("dropped a malformed call message from %s: %s", conversation.peer, exc)
            return
        item = self._calls.get(message.call_id)
        if item is None:
            if message.kind is Kind.OFFER:
                await self._incoming(conversation, body, message, message_secret)
            elif message.kind is Kind.MISSED:
                line = call_line(body, conversation.peer, False, "")
                if line is not None:
                    self._emit(MessageEvent(line))
            else:
                log.info("a %s from %s for no call of ours", message.kind.value,
                         conversation.peer)
            return
        if item.peer != conversation.peer:
            log.warning("%s sent a %s for a call with %s: dropped", conversation.peer,
                        message.kind.value, item.peer)
            return
        line = call_line(body, conversation.peer, False, "")  # missed, or refused: a line
        if line is not None:
            self._emit(MessageEvent(line))
        self._in_background(self._from_peer(item, message), "call-signalling")

    async def _incoming(self, conversation: ConversationId, body: payloads.CallPayload,
                        offer: CallMessage, message_secret: bytes) -> None:
        if time.time() - body.ts > RING_TIMEOUT_S:
            log.info("an offer from %s came too late to ring", conversation.peer)
            return
        if offer.version != VERSION:  # an old client's offer (a secret beside it): refused
            known = self._conversations.known_caller(conversation)
            why = OUTDATED if known else NOT_A_CONTACT
            log.info("refused a version %d call offer from %s: %s", offer.version,
                     conversation.peer, why)
            view = CallView(offer.call_id.hex(), conversation.peer, False, CallState.ENDED,
                            reason=declined(why), started_at=body.ts)
            self._in_background(self._refuse(conversation, refuse_outdated(offer, why), view),
                                "call-refuse")
            return
        if body.secret:
            log.warning("dropped a call offer from %s with a secret beside it (malformed)",
                        conversation.peer)
            return
        try:
            secret = call_secret(message_secret, offer.call_id)
            sae_id = await self._conversations.ensure_session(conversation)
            core, effects = Call.incoming(offer, secret, self._now(), self._policy)
        except (SignallingError, MessengerError) as exc:
            log.warning("refused a call offer from %s: %s", conversation.peer, exc)
            return
        item = _Call(core, conversation.peer, sae_id, body.ts, offer=offer)
        busy = self._closed or any(other.live for other in self._calls.values())
        self._add(item)
        if not self._conversations.known_caller(conversation):  # a stranger: never rings
            log.info("refused a call from %s: %s", conversation.peer, NOT_A_CONTACT)
            effects = item.core.decline(reason=NOT_A_CONTACT)
        elif busy:
            effects = item.core.decline(busy=True)
        self._in_background(self._apply_locked(item, effects), "call-ringing")
        if item.live:
            self._start_clock(item)
        self._changed(item)

    async def _refuse(self, conversation: ConversationId, refusal: CallMessage,
                      view: CallView) -> None:
        """Tell an old client why its call does not ring (in its own message version); the
        user learns of the refused call once the relay holds the refusal."""
        body = payloads.call(refusal.encode())
        try:
            await self._conversations.send_call_message(conversation, body, wait=True)
        except MessengerError as exc:  # kept in the outbox: sent at the next login
            log.warning("the refusal of %s's call is not at the relay yet: %s",
                        conversation.peer, exc)
        line = call_line(body, conversation.peer, True, "")
        if line is not None:
            self._emit(MessageEvent(line))
        self._emit(CallEvent(view))

    async def _from_peer(self, item: _Call, message: CallMessage) -> None:
        async with item.lock:
            qkd: QkdKeys | None = None
            if message.kind is Kind.REKEY and not item.core.caller:
                qkd = await self._named_qkd(item, message.qkd_key_ids)
                if qkd is None:
                    await self._apply(item, item.core.hang_up("QKD keys unavailable"))
                    return
            if message.kind in (Kind.RINGING, Kind.REKEY_ACK) and item.asked_at is not None:
                item.round_trip_s, item.asked_at = self._now() - item.asked_at, None
            try:
                effects = item.core.receive(message, self._now(), qkd)
            except SignallingError as exc:
                log.warning("call with %s: %s", item.peer, exc)
                return
            await self._apply(item, effects)
        self._changed(item)

    def on_binary(self, frame: BinaryFrame) -> bool:
        """A media frame (from the relay's read loop); False: not one of our calls."""
        item = self._calls.get(frame.stream)
        if item is None:
            return False
        if item.receiver is None or not item.live:
            item.stray_frames += 1
            return True
        receiver = item.receiver
        now = self._now()
        opened = receiver.receive(bytes(frame.payload), now)
        echo, receiver.peer_echo = receiver.peer_echo, None  # set by a frame that opened
        if echo is not None and item.sender is not None:
            item.sender.echoed(echo[0], echo[1], now)
        if opened and item.deferred is not None:
            key, kid, proof, _by = item.deferred
            if receiver.last_kid == proof:  # the caller holds the new keys: switch now
                self._switch_sender(item, key, kid)
        return True

    def on_stream_closed(self, stream: bytes) -> bool:
        """The relay closed a media stream (the peer closed it, or its connection ended)."""
        item = self._calls.get(stream)
        if item is None:
            return False
        item.stream_open = False
        if item.live:  # a hang-up is likely on its way: give it a moment to say why
            loop = asyncio.get_running_loop()
            item.timers.append(loop.call_later(STREAM_GONE_GRACE_S, self._stream_gone, item))
        return True

    def _stream_gone(self, item: _Call) -> None:
        if item.live:
            self._in_background(self._apply_locked(item, item.core.lost("connection lost")),
                                "call-lost")

    def on_error(self, error: Error) -> bool:
        """An error frame about one of our media streams (a frame or close that crossed
        the peer's close): expected at a hang-up, not the user's concern."""
        if error.stream is None:
            return False
        try:
            stream = bytes.fromhex(error.stream)
        except ValueError:
            return False
        item = self._calls.get(stream)
        if item is None:
            return False
        log.info("relay on call stream %s: %s (%s)", error.stream[:8], error.message,
                 error.code)
        return True

    def on_disconnect(self) -> None:
        """The relay connection dropped: the live media streams are gone with it."""
        for item in self._calls.values():
            if item.live:
                item.stream_open = False
                self._in_background(self._apply_locked(
                    item, item.core.lost("connection to the relay lost")), "call-lost")

    # -- effects -----------------------------------------------------------------------

    async def _apply_locked(self, item: _Call, effects: list[Effect]) -> None:
        async with item.lock:
            await self._apply(item, effects)
        self._changed(item)

    async def _apply(self, item: _Call, effects: list[Effect]) -> None:
        for effect in effects:  # the view says why as soon as it says ended (the hang-up
            if isinstance(effect, Ended):  # message goes out first; a UI may look meanwhile)
                item.reason, item.by_peer = effect.reason, effect.by_peer
        for effect in effects:
            if isinstance(effect, Send):
                await self._send(item, effect.message)
            elif isinstance(effect, InstallKeys):
                self._install(item, effect)
            elif isinstance(effect, NeedQkd):
                self._in_background(self._rekey(item), "call-rekey")
            elif isinstance(effect, Ended):
                await self._finish(item, effect)

    async def _send(self, item: _Call, message: CallMessage) -> None:
        if message.kind in (Kind.OFFER, Kind.REKEY):
            item.asked_at = self._now()
        body = payloads.call(message.encode())
        try:
            exporter = await self._conversations.send_call_message(item.conversation, body)
            if message.kind is Kind.OFFER:  # the secret of the very message the callee opens
                item.core.bind_session(call_secret(exporter, item.call_id))
        except SignallingError as exc:  # a session that exports nothing: cannot happen
            log.error("call with %s: %s", item.peer, exc)
            await self._apply(item, item.core.hang_up(f"failed: {exc}"))
            return
        except MessengerError as exc:
            log.warning("call with %s: %s not sent: %s", item.peer, message.kind.value, exc)
            if message.kind is not Kind.HANGUP and item.live:
                await self._apply(item, item.core.lost(f"failed: {exc}"))
            return
        line = call_line(body, item.peer, True, "")  # a missed or refused call: a line
        if line is not None:
            self._emit(MessageEvent(line))

    def _install(self, item: _Call, install: InstallKeys) -> None:
        from client.call.media import MediaReceiver

        keys = install.keys
        if item.receiver is None:
            item.receiver = MediaReceiver(keys.receive_key, keys.receive_kid)
        else:
            item.receiver.add_key(keys.receive_key, keys.receive_kid)
        if install.retire_kid is not None:
            delay = max(0.0, install.retire_at - self._now())
            loop = asyncio.get_running_loop()
            item.timers.append(loop.call_later(delay, item.receiver.retire, install.retire_kid))
        item.sources = keys.label
        if item.answered_at is None:
            item.answered_at = time.time()
        if item.core.caller:
            self._switch_sender(item, keys.send_key, keys.send_kid)
        else:  # wait for the caller's first frame under its new KID (see the docstring)
            item.deferred = (keys.send_key, keys.send_kid, keys.receive_kid,
                             self._now() + REKEY_GRACE_S)

    def _switch_sender(self, item: _Call, key: bytes, kid: int) -> None:
        from client.call.media import MediaSender

        if item.sender is None:
            item.sender = MediaSender(key, kid)
        elif item.sender.kid != kid:
            item.sender.rekey(key, kid)
        item.deferred = None

    async def _rekey(self, item: _Call) -> None:
        qkd = await self._fresh_qkd(item.sae_id, refuse=False)
        if qkd is None:
            return  # policy 'require' and no keys now: the next period tries again
        async with item.lock:
            await self._apply(item, item.core.rekey(qkd))

    async def _finish(self, item: _Call, ended: Ended) -> None:
        item.reason, item.by_peer = ended.reason, ended.by_peer
        item.ended.set()
        for timer in item.timers:
            timer.cancel()
        item.timers.clear()
        if item.stream_open and not ended.by_peer:
            item.stream_open = False
            with contextlib.suppress(RelayError):
                await self._relay.close_stream(item.call_id)

    # -- QKD keys ----------------------------------------------------------------------

    async def _fresh_qkd(self, sae_id: str, *, refuse: bool = True) -> QkdKeys | None:
        """Fresh QKD keys for a new epoch; none under 'prefer' makes a degraded epoch,
        under 'require' the call is refused (``refuse``) or the rekey waits (None)."""
        keys = await self._qkd.enc_keys(sae_id, QKD_KEYS_PER_EPOCH)
        if keys is not None:
            return QkdKeys(keys.key_ids, keys.material)
        if self._policy is QkdPolicy.REQUIRE:
            if refuse:
                why = self._qkd.last_error or "the KME has none"
                raise MessengerError(f"no QKD keys for the call ({why}) and the QKD policy "
                                     "is 'require'")
            return None
        return QkdKeys()

    async def _named_qkd(self, item: _Call, key_ids: tuple[str, ...]) -> QkdKeys | None:
        """The keys the caller named, from our KME; None when they cannot be had."""
        if not key_ids:
            return None if self._policy is QkdPolicy.REQUIRE else QkdKeys()
        keys = await self._qkd.dec_keys(item.sae_id, key_ids)
        if keys is None:
            return None
        return QkdKeys(keys.key_ids, keys.material)

    # -- the clock ---------------------------------------------------------------------

    def _start_clock(self, item: _Call) -> None:
        item.clock = asyncio.ensure_future(self._clock(item))

    async def _clock(self, item: _Call) -> None:
        loop = asyncio.get_running_loop()
        start, ticks = loop.time(), 0
        catching_up = False
        while item.live:
            ticks += 1
            late = loop.time() - (start + ticks * FRAME_S)
            stalled = late > 2 * FRAME_S and item.core.state is State.ACTIVE
            if stalled and not catching_up:  # a new stall (the catch-up ticks follow it)
                item.clock_stalls += 1
                item.clock_stall_max_s = max(item.clock_stall_max_s, late)
            catching_up = stalled
            if late < 0:
                await asyncio.sleep(-late)  # pacing, not synchronisation
            elif late > BEHIND_RESET_S:
                start, ticks = loop.time(), 0
            if not item.live:
                break
            effects = item.core.tick(self._now())
            if effects:
                await self._apply_locked(item, effects)
            if item.core.state is State.ACTIVE:
                await self._media_tick(item, behind_s=max(0.0, late))

    async def _media_tick(self, item: _Call, behind_s: float = 0.0) -> None:
        if item.deferred is not None and self._now() >= item.deferred[3]:
            self._switch_sender(item, item.deferred[0], item.deferred[1])
        if item.sender is not None and item.source is not None:
            pcm = await _io(item.source, item.source.read)
            if pcm is None:
                item.source_done.set()
                from client.call.media import SILENCE

                pcm = SILENCE
            seq = item.sender.seq
            newest = item.receiver.newest if item.receiver is not None else None
            data = item.sender.frame(pcm, self._now(), newest)
            try:
                await self._relay.send_binary(KIND_MEDIA, item.call_id, seq, data)
                item.frames_sent += 1
            except RelayError as exc:
                log.info("call with %s: media frame not sent: %s", item.peer, exc)
        if item.receiver is not None and item.sink is not None:
            sink = item.sink
            frame = item.receiver.play(behind_s)
            await _io(sink, lambda: sink.write(frame))
            item.frames_played += 1

    def _in_background(self, coroutine: Coroutine[Any, Any, Any], name: str) -> None:
        if self._spawn is None:
            task: asyncio.Task[Any] | None = asyncio.ensure_future(coroutine)
        else:
            task = self._spawn(coroutine, name)  # None: stopping (the coroutine is closed)
        if task is None:
            return
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    @staticmethod
    def _now() -> float:
        return asyncio.get_running_loop().time()


async def _io(device: object, operation: Callable[[], Any]) -> Any:
    """A source or sink call: a sound device blocks for its 20 ms, so it runs on a thread."""
    if getattr(device, "blocking", False):
        return await asyncio.to_thread(operation)
    return operation()


__all__ = ["CallConversations", "CallManager", "CallRelay"]
