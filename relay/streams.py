"""Bulk streams: live "media" streams and durable "file" streams with their spool.

"media" streams are live, session to session. "file" streams are durable:
registered in the store, and a frame whose target endpoint is offline (or still
receiving its spool, or stuck) is spooled in the store and sent when the target
logs in, until the target acks it (``stream_ack``). Per target handle the relay
keeps order: while its newest session has spooled frames not yet sent
(``spool_draining``) or spool writes for it are in flight, every new frame for it
is spooled behind them, and the drain catches up before live forwarding resumes.
Payloads are never logged.

Relays sharing one store (Redis, ``Store.shared``): a stream registered through another
relay is looked up in the store on first use here, and a frame whose target has no session
on this relay is spooled (the same quotas and TTL), which wakes the relay holding the
target's newest session: that relay drains the spool to it (``spooled_elsewhere``). So a
transfer between clients on two relays goes through the spool while both are online, and
the target's ``stream_ack`` deletes the frames wherever it is connected.

A group file stream (``stream_open_group``) has one opener and up to 99 recipients: the
opener uploads each frame once and the relay spools a copy for every recipient (each under
that recipient's quota and the spool TTL, as a one-to-one file frame for an offline
endpoint), so every recipient gets it through its spool drain, now or when it logs in,
and deletes its own copy with ``stream_ack``. Only the opener sends frames on it; its
``stream_close`` ends the upload without dropping copies not yet delivered (they go at
the TTL, with the registration). ``qsecret_relay_group_file_uploads_total`` counts the
frames uploaded, ``qsecret_relay_file_frames_total{path="fanout"}`` the copies stored.

A "media" stream between clients on two relays (shared store with a media link, see
relay/routing_redis.py's ``MediaLink``) stays live and unstored: the opener's relay asks the
relay holding the peer's session (Redis presence) to take the stream and answers
``stream_ok`` or that relay's refusal (``recipient_offline`` when no relay has the peer);
each frame and the close are then published to the other end's relay, which writes them to
its session. A frame the link or the receiver cannot take at once is dropped and counted
(live media: late is useless), so memory per stream stays bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from relay import wire
from relay.config import RelayConfig
from relay.limits import quota_refusal, size_text
from relay.metrics import Metrics
from relay.routing import Router
from relay.session import Session
from relay.store import (
    SpoolResult,
    SpoolStatus,
    Store,
    StreamRecord,
    StreamStatus,
    group_stream_b,
)
from relay.wire.server import BinaryRequest

log = logging.getLogger("qsecret.relay")

BULK_OUTBOX_LIMIT = 64  # queued outgoing frames past which a bulk sender waits
BULK_WAIT = 10.0
SPOOL_PAGE = 8  # spooled frames read per page (at most 2 MiB of payload)
SPOOL_OUTBOX = 8  # queued outgoing frames past which a spool drain waits for the writer
MAX_SPOOL_PENDING = 32  # spool writes awaiting their commit per connection
RECENTLY_CLOSED = 4096  # file streams remembered after close/expiry (late frames: no strike)
MAX_FILE_SEQ = 2**53 - 1  # stream_ack carries seqs as JSON integers
REMOTE_OPEN_WAIT = 5.0  # seconds a media open waits for the peer's relay to answer


class MediaLink(Protocol):
    """Messages to the relays sharing this one's store (relay/routing_redis.py)."""

    me: str
    on_message: Callable[[bytes], None]

    def relays_of(self, handle: str) -> Awaitable[list[str]]: ...

    def send(self, relay: str, message: bytes) -> bool: ...


_Opening = tuple[Session, wire.StreamOpen, str, "asyncio.Future[str]"]


class RemoteEnd:
    """The far end of a media stream whose other end is a session on this relay."""

    __slots__ = ("handle", "relay", "session")

    def __init__(self, session: Session, handle: str, relay: str) -> None:
        self.session = session  # this relay's end
        self.handle = handle  # the far end's handle
        self.relay = relay  # the relay holding the far end's session


class Streams:
    def __init__(self, config: RelayConfig, store: Store, router: Router[Session],
                 metrics: Metrics) -> None:
        self.config = config
        self.store = store
        self.router = router
        self.metrics = metrics
        self.file_streams: dict[bytes, StreamRecord] = {}  # durable registrations (cache)
        self.closed_streams: dict[bytes, tuple[str, ...]] = {}  # recently closed (in order)
        self.spool_inflight: dict[str, int] = {}  # target handle -> spool writes uncommitted
        self.spool_tail: dict[str, int] = {}  # live target handle -> last spool row committed
        # Handles another relay spooled a frame for since their drain's last read (shared
        # store): the drain reads once more before it stops.
        self.spool_woken: set[str] = set()
        # Live media streams with their other end on another relay (shared store only).
        self.link: MediaLink | None = getattr(router, "media_link", None)
        self.remote: dict[bytes, RemoteEnd] = {}
        self.remote_of: dict[Session, set[bytes]] = {}  # session -> its remote streams
        # Media opens waiting for the answer of the relay asked: (opener, open, relay, answer)
        self.remote_opening: dict[bytes, _Opening] = {}
        metrics.describe("qsecret_relay_group_file_uploads_total",
                         "binary frames uploaded once on group file streams")
        if self.link is not None:
            self.link.on_message = self.on_remote_media
            self.link.on_gone = self.on_relay_gone
            metrics.describe("qsecret_relay_media_dropped_total",
                             "live media frames between relays dropped, by why (link: Redis "
                             "lagging; receiver: its connection lagging; gone: stream ended)")

    async def load(self) -> None:
        self.file_streams = {record.stream: record
                             for record in await self.store.file_streams(now_ms())}

    # ------------------------------------------------------------ sessions

    def logged_in(self, session: Session) -> None:
        """auth_ok is posted: spooled file frames may follow (after the envelope drain's
        first read, see ``_drain_spool``)."""
        session.spool_ready = True
        self.maybe_drain_spool(session)

    def session_gone(self, session: Session, newest: Session | None) -> None:
        """``session`` has left the router; ``newest`` took over its handle's file frames."""
        handle = session.handle
        if handle is not None:
            if not self.router.sessions(handle):
                self.spool_tail.pop(handle, None)
                self.spool_woken.discard(handle)
            elif newest is not None:
                # The next newest session now gets this handle's file frames: first what
                # was spooled since it last drained.
                self.maybe_drain_spool(newest)
        if session.spool_task is not None:
            session.spool_task.cancel()
        session.spool_room.set()
        for stream, other in list(session.streams.items()):
            other.streams.pop(stream, None)
            self._remember_media_closed(stream, session, other)
            other.post(wire.StreamClose(stream.hex()).encode())
        session.streams.clear()
        for stream in self.remote_of.pop(session, ()):
            end = self.remote.pop(stream, None)
            if end is not None and self.link is not None:
                self.link.send(end.relay, b"c" + stream)

    # ------------------------------------------------------------ control frames

    async def on_open(self, session: Session, frame: wire.StreamOpen) -> int | None:
        if frame.kind == "file":
            return await self._open_file_stream(session, frame)
        if await self._record(bytes.fromhex(frame.stream)) is not None:
            return session.refuse("bad_field", "stream id taken", req_id=frame.id)
        return await self._open_media_stream(session, frame)

    async def _open_media_stream(self, session: Session,
                                 frame: wire.StreamOpen) -> int | None:
        """A live stream: both ends online, session to session."""
        stream = bytes.fromhex(frame.stream)
        if stream in session.streams:
            return session.refuse("bad_field", "stream id already open", req_id=frame.id)
        if stream in self.remote or stream in self.remote_opening:
            return session.refuse("bad_field", "stream id already open", req_id=frame.id)
        if len(session.streams) + len(self.remote_of.get(session, ())) >= \
                self.config.max_streams:
            return session.refuse("too_many_streams",
                                  f"at most {self.config.max_streams} open streams",
                                  strike=False, req_id=frame.id)
        peer = self.router.newest(frame.to)
        if peer is None and self.link is not None:
            return await self._open_remote_media(session, frame)
        if peer is None:
            return session.refuse("recipient_offline", f"{frame.to!r} is not connected",
                                  strike=False, req_id=frame.id)
        if stream in peer.streams or len(peer.streams) >= self.config.max_streams:
            return session.refuse("too_many_streams", "the peer cannot take this stream",
                                  strike=False, req_id=frame.id)
        assert session.handle is not None
        session.streams[stream] = peer
        peer.streams[stream] = session
        session.post(wire.StreamOk(frame.stream, frame.id).encode())
        peer.post(wire.StreamIncoming(frame.stream, session.handle, frame.kind).encode())
        return None

    async def _open_remote_media(self, session: Session,
                                 frame: wire.StreamOpen) -> int | None:
        """The peer has no session here: ask the relays that have one, in turn."""
        assert self.link is not None and session.handle is not None
        stream = bytes.fromhex(frame.stream)
        code = "recipient_offline"
        for relay in await self.link.relays_of(frame.to):
            future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
            self.remote_opening[stream] = (session, frame, relay, future)
            self.link.send(relay, b"o" + stream + b"\0".join(
                (session.handle.encode(), frame.to.encode(), self.link.me.encode())))
            try:
                code = await asyncio.wait_for(future, REMOTE_OPEN_WAIT)
            except TimeoutError:
                code = "recipient_offline"  # a late "yes" is answered with a close
            finally:
                self.remote_opening.pop(stream, None)
            if code == "":
                return None  # stream_ok posted when the answer came (before any frame)
            if code != "recipient_offline":
                break
        text = {"recipient_offline": f"{frame.to!r} is not connected",
                "too_many_streams": "the peer cannot take this stream",
                "bad_field": "stream id already open"}.get(code, code)
        return session.refuse(code, text, strike=code == "bad_field", req_id=frame.id)

    def on_remote_media(self, message: bytes) -> None:
        """A media message from another relay (its pub/sub reader calls this, in order)."""
        kind, stream, rest = message[:1], message[1:17], message[17:]
        if kind in (b"f", b"F"):
            end = self.remote.get(stream)
            if end is None or end.session.closing:
                self.metrics.count("qsecret_relay_media_dropped_total", "why", "gone")
                return
            if len(end.session.outbox) >= BULK_OUTBOX_LIMIT:
                self.metrics.count("qsecret_relay_media_dropped_total", "why", "receiver")
                return
            self.metrics.count("qsecret_relay_bulk_bytes_total", amount=len(rest))
            end.session.post(rest)
            if kind == b"F":
                self._forget_remote(stream)
        elif kind == b"c":
            end = self._forget_remote(stream)
            if end is not None:
                self._remember_remote_closed(stream, end)
                end.session.post(wire.StreamClose(stream.hex()).encode())
        elif kind == b"o":
            self._remote_open(stream, *rest.decode().split("\0"))
        elif kind == b"r":
            code, _, relay = rest.decode().partition("\0")
            self._remote_answer(stream, code, relay)

    def on_relay_gone(self, relay: str) -> None:
        """No relay listens on ``relay``'s channel any more (it died or lost Redis): the
        streams with an end there are over, and an open waiting for its answer is
        ``recipient_offline``."""
        for stream, end in [(s, e) for s, e in self.remote.items() if e.relay == relay]:
            self._forget_remote(stream)
            self._remember_remote_closed(stream, end)
            end.session.post(wire.StreamClose(stream.hex()).encode())
        for _session, _frame, asked, future in list(self.remote_opening.values()):
            if asked == relay and not future.done():
                future.set_result("recipient_offline")

    def _remote_open(self, stream: bytes, caller: str, callee: str, relay: str) -> None:
        """Another relay's client calls ``callee``: take the stream to its newest session."""
        assert self.link is not None
        peer = self.router.newest(callee)
        code = ""
        if peer is None or peer.closing:
            code = "recipient_offline"
        elif stream in self.remote or stream in self.remote_opening or stream in peer.streams:
            code = "bad_field"
        elif len(peer.streams) + len(self.remote_of.get(peer, ())) >= self.config.max_streams:
            code = "too_many_streams"
        else:
            self._add_remote(stream, RemoteEnd(peer, caller, relay))
            peer.post(wire.StreamIncoming(stream.hex(), caller, "media").encode())
        self.link.send(relay, b"r" + stream + code.encode() + b"\0" + self.link.me.encode())

    def _remote_answer(self, stream: bytes, code: str, relay: str) -> None:
        """The peer's relay answered our open: register the stream before any frame of
        the peer's can arrive (same channel, later), then let the opener go on."""
        assert self.link is not None
        opening = self.remote_opening.get(stream)
        if opening is None or opening[3].done() or opening[0].closing:
            if code == "":  # nobody waits for this stream any more
                self.link.send(relay, b"c" + stream)
            return
        session, frame, _relay, future = opening
        if code == "":
            self._add_remote(stream, RemoteEnd(session, frame.to, relay))
            session.post(wire.StreamOk(frame.stream, frame.id).encode())
        future.set_result(code)

    def _add_remote(self, stream: bytes, end: RemoteEnd) -> None:
        self.remote[stream] = end
        self.remote_of.setdefault(end.session, set()).add(stream)

    def _forget_remote(self, stream: bytes) -> RemoteEnd | None:
        end = self.remote.pop(stream, None)
        if end is not None:
            streams = self.remote_of.get(end.session)
            if streams is not None:
                streams.discard(stream)
                if not streams:
                    del self.remote_of[end.session]
        return end

    def _remember_remote_closed(self, stream: bytes, end: RemoteEnd) -> None:
        if end.session.handle is not None:
            self.closed_streams[stream] = (end.session.handle, end.handle)
            while len(self.closed_streams) > RECENTLY_CLOSED:
                del self.closed_streams[next(iter(self.closed_streams))]

    async def _open_file_stream(self, session: Session, frame: wire.StreamOpen) -> int | None:
        """Register a durable file stream; the peer need not be online."""
        handle = session.handle
        assert handle is not None
        stream = bytes.fromhex(frame.stream)
        if frame.to == handle:
            return session.refuse("bad_field", "a file stream needs two different handles",
                                  req_id=frame.id)
        if stream in session.streams:
            return session.refuse("bad_field", "stream id taken", req_id=frame.id)
        if await self.store.identity_of(frame.to) is None:
            return session.refuse("unknown_recipient", f"no user {frame.to!r} on this relay",
                                  strike=False, req_id=frame.id)
        return await self._register_file_stream(session, frame.stream, frame.id, frame.to,
                                                (frame.to,))

    async def on_open_group(self, session: Session,
                            frame: wire.StreamOpenGroup) -> int | None:
        """Register a durable group file stream: frames uploaded once, spooled per
        recipient (who need not be online)."""
        handle = session.handle
        assert handle is not None
        stream = bytes.fromhex(frame.stream)
        if handle in frame.to:
            return session.refuse("bad_field", "a group file stream's recipients must not "
                                  "include its opener", req_id=frame.id)
        if stream in session.streams:
            return session.refuse("bad_field", "stream id taken", req_id=frame.id)
        for recipient in frame.to:
            if await self.store.identity_of(recipient) is None:
                return session.refuse("unknown_recipient",
                                      f"no user {recipient!r} on this relay",
                                      strike=False, req_id=frame.id)
        return await self._register_file_stream(session, frame.stream, frame.id,
                                                group_stream_b(frame.to), frame.to)

    async def _register_file_stream(self, session: Session, stream_hex: str,
                                    req_id: str | None, b: str,
                                    recipients: tuple[str, ...]) -> int | None:
        """Record a durable file stream from the session's user to ``b`` (a handle, or a
        group's recipient list), confirm it, and tell the recipients who are online."""
        handle = session.handle
        assert handle is not None
        stream = bytes.fromhex(stream_hex)
        now = now_ms()
        expires = now + int(self.config.spool_ttl * 1000)
        status = await self.store.register_stream(stream, handle, b, now, expires,
                                                  self.config.max_file_streams)
        if status is StreamStatus.TAKEN:
            return session.refuse("bad_field", "stream id taken", req_id=req_id)
        if status is StreamStatus.TOO_MANY:
            return session.refuse("too_many_streams",
                                  f"at most {self.config.max_file_streams} open file streams",
                                  strike=False, req_id=req_id)
        known = self.file_streams.get(stream)
        created = known.created if known is not None and status is StreamStatus.SAME else now
        self.file_streams[stream] = StreamRecord(stream, handle, b, created, expires)
        self.closed_streams.pop(stream, None)
        if status is StreamStatus.NEW:
            self.metrics.count("qsecret_relay_file_streams_opened_total")
        session.post(wire.StreamOk(stream_hex, req_id).encode())
        for recipient in recipients:
            for peer in self.router.sessions(recipient):
                peer.post(wire.StreamIncoming(stream_hex, handle, "file").encode())
        return None

    async def on_close(self, session: Session, frame: wire.StreamClose) -> int | None:
        stream = bytes.fromhex(frame.stream)
        if stream in session.streams:
            return self._close_media_stream(session, frame)
        end = self.remote.get(stream)
        if end is not None and end.session is session:
            assert self.link is not None
            self._forget_remote(stream)
            self._remember_remote_closed(stream, end)
            self.link.send(end.relay, b"c" + stream)
            return None
        assert session.handle is not None
        record = await self._record(stream)
        other = record.other(session.handle) if record is not None else None
        if record is not None and record.group and session.handle == record.a:
            # The upload is over: the copies not yet delivered stay until acked (or the
            # TTL), but the stream no longer takes one of the opener's open-stream slots
            # (a member offline for days must not stop its next group files).
            if await self.store.end_upload(stream):
                self.file_streams.pop(stream, None)
                self._remember_closed(record)
            return None
        if record is None or other is None:
            return session.refuse("unknown_stream", "no such open stream",
                                  strike=not self._recently_closed(stream, session.handle),
                                  stream=frame.stream)
        if record.group:
            return None  # a recipient is done with its copy (its acks deleted it)
        self.file_streams.pop(stream, None)
        self._remember_closed(record)
        dropped = await self.store.close_stream(stream)
        log.debug("file stream closed by handle=%s spooled frames dropped=%d",
                  session.handle, dropped)
        for peer in self.router.sessions(other):
            peer.post(frame.encode())
        return None

    def _close_media_stream(self, session: Session, frame: wire.StreamClose) -> int | None:
        stream = bytes.fromhex(frame.stream)
        peer = session.streams.pop(stream, None)
        if peer is None:
            return session.refuse("unknown_stream", "no such open stream")
        peer.streams.pop(stream, None)
        self._remember_media_closed(stream, session, peer)
        peer.post(frame.encode())
        return None

    def _remember_media_closed(self, stream: bytes, a: Session, b: Session) -> None:
        """A media frame or close already on its way from either end is no abuse."""
        if a.handle is not None and b.handle is not None:
            self.closed_streams[stream] = (a.handle, b.handle)
            while len(self.closed_streams) > RECENTLY_CLOSED:
                del self.closed_streams[next(iter(self.closed_streams))]

    async def on_ack(self, session: Session, frame: wire.StreamAck) -> int | None:
        """The endpoint has these seqs: delete them from the spool held for it."""
        assert session.handle is not None
        stream = bytes.fromhex(frame.stream)
        record = await self._record(stream)
        if record is None or record.other(session.handle) is None:
            # No strike: an ack can cross the other end's stream_close.
            return session.refuse("unknown_stream",
                                  "stream_ack for a file stream you are not an endpoint of",
                                  strike=False, stream=frame.stream)
        self.store.spool_ack_nowait(session.handle, stream, frame.seqs)
        session.spool_acks_unsettled = True  # the next pong waits for the deletion
        self.metrics.count("qsecret_relay_stream_acks_total", amount=len(frame.seqs))
        return None

    def on_ping(self, session: Session, frame: wire.Ping) -> None:
        """Pong, once every file frame read before the ping is durable (the sender's
        only way to know the relay holds what it sent; live-forwarded frames are already
        in the peer's connection) and every ``stream_ack`` before it has deleted its
        frames (so a receiver, or a test, that pings after acking sees the spool shrunk)."""
        pong = wire.Pong(frame.id).encode()
        if not session.spool_pending and not session.spool_acks_unsettled:
            session.post(pong)
            return
        session.spool_acks_unsettled = False  # the barrier runs after every earlier ack
        self.store.barrier_then(lambda ok, value: session.post(pong))

    async def _record(self, stream: bytes) -> StreamRecord | None:
        """The file stream's registration: cached, or (shared store) registered through
        another relay and read from the store once."""
        record = self.file_streams.get(stream)
        if record is None and self.store.shared:
            record = await self.store.file_stream(stream, now_ms())
            if record is not None:
                self.file_streams[stream] = record
        return record

    def _remember_closed(self, record: StreamRecord) -> None:
        self.closed_streams[record.stream] = (record.a, *record.recipients)
        while len(self.closed_streams) > RECENTLY_CLOSED:
            del self.closed_streams[next(iter(self.closed_streams))]

    def _recently_closed(self, stream: bytes, handle: str) -> bool:
        return handle in self.closed_streams.get(stream, ())

    # ------------------------------------------------------------ binary frames

    async def on_binary(self, session: Session, request: BinaryRequest) -> int | None:
        assert session.handle is not None
        stream, data = request.stream, request.data
        peer = session.streams.get(stream)
        if peer is None and stream in self.remote:
            return self._remote_frame(session, request)
        if peer is None:
            record = await self._record(stream)
            if record is not None:
                return await self._on_file_frame(session, record, request)
            closed = self._recently_closed(stream, session.handle)
            return session.refuse("unknown_stream", "binary frame for an unopened stream",
                                  strike=not closed, stream=stream.hex() if closed else None)
        self.metrics.count("qsecret_relay_bulk_bytes_total", amount=len(data))
        # Backpressure: a bulk sender waits for a slow receiver instead of filling memory.
        if len(peer.outbox) >= BULK_OUTBOX_LIMIT:
            peer.room.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(peer.room.wait(), BULK_WAIT)
            if len(peer.outbox) >= BULK_OUTBOX_LIMIT or peer.closing:
                return session.refuse("recipient_offline", "stream receiver is stuck",
                                      strike=False)
        peer.post(data)
        if request.flags & wire.FLAG_FINAL:
            session.streams.pop(stream, None)
            peer.streams.pop(stream, None)
        return None

    def _remote_frame(self, session: Session, request: BinaryRequest) -> int | None:
        """A media frame for the far end on another relay: published, never stored, and
        dropped (counted) when the link to Redis lags."""
        assert self.link is not None
        stream = request.stream
        end = self.remote[stream]
        if end.session is not session:
            return session.refuse("unknown_stream", "binary frame for a stream you do not own")
        self.metrics.count("qsecret_relay_bulk_bytes_total", amount=len(request.data))
        final = bool(request.flags & wire.FLAG_FINAL)
        if not self.link.send(end.relay, (b"F" if final else b"f") + stream + request.data):
            self.metrics.count("qsecret_relay_media_dropped_total", "why", "link")
        if final:
            self._forget_remote(stream)
        return None

    async def _on_file_frame(self, session: Session, record: StreamRecord,
                             request: BinaryRequest) -> int | None:
        """Forward live when the target is online and caught up; else spool durably."""
        assert session.handle is not None
        seq, data = request.seq, request.data
        target = record.other(session.handle)
        if record.group and session.handle != record.a:
            return session.refuse("bad_binary_frame",
                                  "only the opener of a group file stream sends on it",
                                  stream=record.stream.hex())
        if target is None and not record.group:
            return session.refuse("unknown_stream",
                                  "binary frame for a stream you are not an endpoint of")
        if request.kind != wire.KIND_FILE_CHUNK:
            return session.refuse("bad_binary_frame", "a file stream carries file frames",
                                   stream=record.stream.hex())
        if seq > MAX_FILE_SEQ:
            return session.refuse("bad_binary_frame",
                                  "file stream seq must be below 2^53 (stream_ack limit)",
                                  stream=record.stream.hex())
        self.metrics.count("qsecret_relay_bulk_bytes_total", amount=len(data))
        if record.group:
            return await self._fan_out(session, record, seq, data)
        dest = self._live_target(target)
        if dest is not None:
            if len(dest.outbox) >= BULK_OUTBOX_LIMIT:
                # Backpressure: the sender waits for a slow receiver (not filling memory)...
                dest.room.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(dest.room.wait(), BULK_WAIT)
            if self._live_target(target) is dest and len(dest.outbox) < BULK_OUTBOX_LIMIT:
                dest.post(data)
                self.metrics.count("qsecret_relay_file_frames_total", "path", "live")
                return None
            # ... and a stuck receiver's frames are spooled (kept, in order), not dropped.
        return await self._spool_frame(session, record, target, seq, data)

    async def _fan_out(self, session: Session, record: StreamRecord, seq: int,
                       data: bytes) -> int | None:
        """A group file frame, uploaded once: a durable copy for every recipient, each
        delivered by that recipient's spool drain (in order, now or at its next login)."""
        self.metrics.count("qsecret_relay_group_file_uploads_total")
        for target in record.recipients:
            refused = await self._spool_frame(session, record, target, seq, data,
                                              path="fanout")
            if refused is not None or session.closing:
                return refused
        return None

    def _live_target(self, target: str) -> Session | None:
        """The session to forward a file frame to now, or None: spool it."""
        if self.spool_inflight.get(target):
            return None
        dest = self.router.newest(target)
        if dest is None or dest.spool_draining or dest.closing:
            return None
        return dest

    # ------------------------------------------------------------ spool

    async def _spool_frame(self, session: Session, record: StreamRecord, target: str, seq: int,
                           data: bytes, path: str = "spooled") -> int | None:
        quota = self.config.spool_quota_bytes
        if len(data) > quota:
            self.metrics.count("qsecret_relay_spool_refusals_total")
            return session.refuse("quota_exceeded",
                                  f"frame seq {seq} ({len(data)} bytes) is larger than the "
                                  f"whole spool quota of {size_text(quota)} per recipient",
                                  strike=False, stream=record.stream.hex())
        while session.spool_pending >= MAX_SPOOL_PENDING:
            # Backpressure on the disk: read no more from this sender until writes commit.
            session.spool_room.clear()
            await session.spool_room.wait()
            if session.closing:
                return None
        session.spool_pending += 1
        self.spool_inflight[target] = self.spool_inflight.get(target, 0) + 1
        now = now_ms()
        done = functools.partial(self._on_spooled, session, record.stream, target, seq, path)
        self.store.spool_then(target, record.stream, seq, data, now,
                              now + int(self.config.spool_ttl * 1000), quota, done)
        newest = self.router.newest(target)
        if newest is not None:
            # Online but behind (or draining): its newest session drains the spool.
            newest.spool_draining = True
            self.maybe_drain_spool(newest)
        else:
            self.router.wake(target)
        return None

    def _on_spooled(self, session: Session, stream: bytes, target: str, seq: int, path: str,
                    ok: bool, value: Any) -> None:
        session.spool_pending -= 1
        session.spool_room.set()
        left = self.spool_inflight.get(target, 1) - 1
        if left > 0:
            self.spool_inflight[target] = left
        else:
            self.spool_inflight.pop(target, None)
        if not ok:
            if isinstance(value, asyncio.CancelledError):
                return
            log.error("spool write failed: %s", type(value).__name__)
            session.refuse("internal", f"file frame seq {seq} not stored; send it again",
                           strike=False, stream=stream.hex())
            return
        result: SpoolResult = value
        if result.status is SpoolStatus.STORED:
            self.metrics.count("qsecret_relay_file_frames_total", "path", path)
            if self.router.sessions(target):
                self.spool_tail[target] = max(self.spool_tail.get(target, 0), result.row)
        elif result.status is SpoolStatus.DUPLICATE:
            self.metrics.count("qsecret_relay_file_frames_total", "path", "duplicate")
        elif result.status in _SPOOL_REFUSED:
            self.metrics.count("qsecret_relay_spool_refusals_total")
            code = result.status.value
            limits, quota = self.store.limits, self.config.spool_quota_bytes
            size = {"share_exceeded": limits.share_of(quota),
                    "store_full": limits.max_store_bytes}.get(code, quota)
            text = quota_refusal(code, target, place="spool", messages=None, size=size)
            session.refuse(code, f"{text} (frame seq {seq} was not stored, send it again)",
                           strike=False, stream=stream.hex())
        else:
            session.refuse("unknown_stream",
                           f"stream closed or expired before frame seq {seq} was stored",
                           strike=False, stream=stream.hex())

    def maybe_drain_spool(self, session: Session) -> None:
        """Start sending ``session`` what is spooled for its handle, unless nothing is."""
        handle = session.handle
        if handle is None or session.closing or not session.spool_ready:
            return
        idle = session.spool_task is None or session.spool_task.done()
        if (idle and not self.store.shared and self.store.spool_bytes() == 0
                and not self.spool_inflight.get(handle)):
            session.spool_draining = False  # nothing spooled anywhere, nothing on its way
            return
        session.spool_draining = True
        if idle:
            session.spool_task = asyncio.create_task(self._drain_spool(session))

    def on_rewind(self, session: Session) -> None:
        """``spool_rewind``: the drain starts over (at its next page) from the first row
        still spooled for this handle; frames the client did not ack come again."""
        session.spool_rewound = True
        if session.spool_task is None or session.spool_task.done():
            session.spool_cursor = 0
            session.spool_rewound = False
            if self.store.shared:
                self.spooled_elsewhere(session)
            else:
                self.maybe_drain_spool(session)

    def spooled_elsewhere(self, session: Session) -> None:
        """Another relay sharing the store spooled a file frame for ``session``'s handle
        (or may have: a subscription was confirmed): its newest session drains the spool."""
        handle = session.handle
        if handle is None or self.router.newest(handle) is not session:
            return
        self.spool_woken.add(handle)
        if session.closing or not session.spool_ready:
            return  # logged_in starts its drain
        session.spool_draining = True
        if session.spool_task is None or session.spool_task.done():
            session.spool_task = asyncio.create_task(self._drain_spool(session))

    async def _drain_spool(self, session: Session) -> None:
        """Send the spool to ``session`` page by page, oldest first, never a frame twice,
        waiting for its writer; stop once caught up (then its frames go live again)."""
        handle = session.handle
        assert handle is not None
        await asyncio.sleep(0)  # let the envelope drain read first
        while not session.closing:
            if session.spool_rewound:
                session.spool_rewound, session.spool_cursor = False, 0
            self.spool_woken.discard(handle)  # this read sees what woke it
            try:
                page = await self.store.spool_page(handle, session.spool_cursor, SPOOL_PAGE,
                                                   now_ms())
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("spool read failed handle=%s", handle)
                await asyncio.sleep(1.0)
                continue
            for frame in page.frames:
                if frame.row <= session.spool_cursor:
                    continue
                while len(session.outbox) >= SPOOL_OUTBOX and not session.closing:
                    session.room.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(session.room.wait(), 1.0)
                if session.closing:
                    return
                session.post(frame.data)
                session.spool_cursor = frame.row
                self.metrics.count("qsecret_relay_spool_sent_total")
            if len(page.frames) < SPOOL_PAGE:
                # A short page holds every row up to page.top for this handle; later rows
                # are in flight (counted) or were committed since (spool_tail says).
                session.spool_cursor = max(session.spool_cursor, page.top)
                if (not self.spool_inflight.get(handle) and handle not in self.spool_woken
                        and not session.spool_rewound
                        and self.spool_tail.get(handle, 0) <= session.spool_cursor):
                    session.spool_draining = False
                    return

    async def expire(self) -> None:
        """Drop spooled frames and file streams past the spool TTL; tell live endpoints."""
        dropped, gone = await self.store.expire_spool(now_ms())
        if dropped:
            self.metrics.count("qsecret_relay_spool_expired_total", amount=dropped)
            log.info("expired %d spooled file frames past the spool TTL", dropped)
        for stream in gone:
            record = self.file_streams.pop(stream, None)
            if record is None:
                continue
            self._remember_closed(record)
            close = wire.StreamClose(stream.hex()).encode()
            for handle in (record.a, *record.recipients):
                for peer in self.router.sessions(handle):
                    peer.post(close)
        # Forget the other cached registrations past their expiry: (shared store) another
        # relay may have extended them, and the store is asked again on their next use; an
        # ended group upload's registration, which the store deleted with its last copy's
        # ack, leaves this cache only here.
        now = now_ms()
        for stream in [s for s, r in self.file_streams.items() if r.expires <= now]:
            del self.file_streams[stream]


_SPOOL_REFUSED = frozenset({SpoolStatus.QUOTA_EXCEEDED, SpoolStatus.SHARE_EXCEEDED,
                            SpoolStatus.STORE_FULL})


def now_ms() -> int:
    return int(time.time() * 1000)


__all__ = ["BULK_OUTBOX_LIMIT", "Streams", "now_ms", "size_text"]
