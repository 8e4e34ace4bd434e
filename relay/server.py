"""The relay server: websockets' asyncio API around the wire rules and the store.

One coroutine reads each connection; a writer task per connection sends
everything that goes out (replies, deliveries), so a slow reader never blocks
anyone else's handler. The frequent frames (send, ack, ping) are handled right
where they are read while that coroutine is idle (see ``RelayConnection``).
Signature checks run in a thread pool (the ML-DSA verify releases the GIL), so
the loop keeps answering pings during login storms.
Envelope bodies are never logged.

Bulk streams: "media" streams are live, session to session. "file" streams are
durable: registered in the store, and a frame whose target endpoint is offline
(or still receiving its spool, or stuck) is spooled in the store and sent when
the target logs in, until the target acks it (``stream_ack``). Per target handle
the relay keeps order: while its newest session has spooled frames not yet sent
(``spool_draining``) or spool writes for it are in flight, every new frame for it
is spooled behind them, and the drain catches up before live forwarding resumes.
Payloads are never logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import http
import logging
import os
import secrets
import sys
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.frames import Frame, Opcode
from websockets.http11 import Request, Response
from websockets.protocol import State

from keysource.pq import InvalidKey, InvalidSignature, hybrid_signature
from relay import wire
from relay.config import RelayConfig
from relay.limits import Strikes, TokenBucket
from relay.metrics import Metrics
from relay.store import (
    BindStatus,
    BundleRefused,
    EnqueueResult,
    EnqueueStatus,
    Envelope,
    SpoolResult,
    SpoolStatus,
    SqliteStore,
    Store,
    StreamRecord,
    StreamStatus,
)
from relay.tls import ensure_self_signed, server_context

log = logging.getLogger("qsecret.relay")

PREKEYS_LOW = 10  # tell the owner to upload more below this many one-time prekeys
MAX_AUTH_FAILURES = 3
BULK_OUTBOX_LIMIT = 64  # queued outgoing frames past which a bulk sender waits
BULK_WAIT = 10.0
GC_YOUNG_THRESHOLD = 50_000
GC_MIDDLE_THRESHOLD = 20
GC_NO_AUTOMATIC_FULL = 1 << 30  # full passes come from the sweeper instead
SPOOL_PAGE = 8  # spooled frames read per page (at most 2 MiB of payload)
SPOOL_OUTBOX = 8  # queued outgoing frames past which a spool drain waits for the writer
MAX_SPOOL_PENDING = 32  # spool writes awaiting their commit per connection
RECENTLY_CLOSED = 4096  # file streams remembered after close/expiry (late frames: no strike)
MAX_FILE_SEQ = 2**53 - 1  # stream_ack carries seqs as JSON integers


class Cork:
    """Sessions holding encoded frames not yet written: all written once per loop pass.

    A busy relay makes several frames for one connection in one pass of the event
    loop (deliveries from several senders, the confirmations of a commit). Writing
    them as one ``transport.write`` saves a send() system call per frame here and
    a read (and a wake-up) per frame at the other end.
    """

    def __init__(self) -> None:
        self.sessions: list[Session] = []

    def add(self, session: Session) -> None:
        if session.corked:
            return
        session.corked = True
        if not self.sessions:
            asyncio.get_running_loop().call_soon(self.flush)
        self.sessions.append(session)

    def flush(self) -> None:
        sessions, self.sessions = self.sessions, []
        for session in sessions:
            session.corked = False
            session.flush()


class RelayConnection(ServerConnection):
    """A ServerConnection that offers each complete text frame to the relay first.

    ``inline`` (set once the relay's handler runs) takes the decoded text and
    returns True when it handled the frame right here, in ``data_received``.
    That skips the hand-over to the handler coroutine (a queue, a future, a task
    wake-up and a later loop pass) for the frequent frames. Frames are offered
    only while none is queued for the handler, so frames never overtake each other.
    """

    inline: Callable[[str], bool] | None = None

    def process_event(self, event: Any) -> None:
        inline = self.inline
        if (inline is not None and isinstance(event, Frame) and event.opcode is Opcode.TEXT
                and event.fin and not self.recv_messages.frames):
            try:
                text = bytes(event.data).decode()
            except UnicodeDecodeError:  # the usual path refuses it, as before
                pass
            else:
                if inline(text):
                    return
        super().process_event(event)


class Session:
    """One websocket connection and everything the relay tracks about it."""

    def __init__(self, ws: ServerConnection, config: RelayConfig, cork: Cork) -> None:
        self.ws = ws
        self.cork = cork
        self.corked = False
        self.nonce = secrets.token_bytes(wire.NONCE_BYTES)
        self.handle: str | None = None
        self.identity: bytes | None = None
        self.opened = time.monotonic()
        self.last_active = self.opened
        self.bucket = TokenBucket(config.rate, config.burst)  # text frames
        self.stream_bucket = TokenBucket(config.stream_rate, config.stream_burst)  # binary
        self.strikes = Strikes(config.abuse_limit, config.abuse_window)
        self.auth_failures = 0
        self.inflight: dict[int, tuple[float, str]] = {}  # seq -> (sent at, frame)
        self.outbox: deque[str | bytes] = deque()
        self.wake = asyncio.Event()
        self.room = asyncio.Event()  # outbox drained (bulk senders wait on it)
        self.send_room = asyncio.Event()  # a pending send committed
        self.need_drain = False
        self.draining = False
        self.pending_sends = 0
        self.streams: dict[bytes, Session] = {}  # stream id -> the other end
        self.closing = False
        self.busy = True  # the handler is not idle in recv() (see Relay._inline)
        self.writer: asyncio.Task[None] | None = None
        self.sent = 0  # frames written by the fast path
        self.stored_batch: list[str] = []  # msgs made durable, confirmed together soon
        self.spool_cursor = 0  # spool row last sent on this connection (never sent twice)
        self.spool_draining = False  # spooled frames may be waiting: new ones spool too
        self.spool_task: asyncio.Task[None] | None = None
        self.spool_pending = 0  # spool writes of this connection not yet committed
        self.spool_room = asyncio.Event()
        self.spool_ready = False  # auth_ok posted: spooled frames may follow

    def post(self, data: str | bytes) -> None:
        """Send a frame soon if the socket can take it, else queue it for the writer task."""
        if self.closing:
            return
        ws = self.ws
        if not self.outbox and not ws.paused and ws.protocol.state is State.OPEN:
            # Fast path: frame it now, write it with this pass's other frames (see Cork);
            # the transport is not paused, so there is no drain to wait for.
            try:
                if isinstance(data, str):
                    ws.protocol.send_text(data.encode())
                else:
                    ws.protocol.send_binary(data)
            except Exception:  # state changed under us: fall back to the writer task
                pass
            else:
                self.sent += 1
                self.cork.add(self)
                return
        self.outbox.append(data)
        self.wake.set()

    def flush(self) -> None:
        """Write every frame framed so far in one go (what ``ws.send_data()`` does, joined)."""
        ws = self.ws
        chunks = ws.protocol.data_to_send()
        if not chunks:
            return
        try:
            if all(chunks):
                ws.transport.write(b"".join(chunks))
            else:  # an end-of-stream marker among them: let websockets handle it in order
                for chunk in chunks:
                    if chunk:
                        ws.transport.write(chunk)
                    elif ws.transport.can_write_eof():
                        ws.transport.write_eof()
                    else:
                        ws.transport.close()
        except Exception:  # the connection is going away; its handler cleans up
            log.debug("write failed handle=%s", self.handle)


class Relay:
    """A relay bound to a config and a store; ``run()`` serves until cancelled."""

    def __init__(self, config: RelayConfig, store: Store | None = None) -> None:
        self.config = config
        config.data_dir.mkdir(parents=True, exist_ok=True)
        self.store = store or SqliteStore(
            config.data_dir / "relay.sqlite3", config.store_limits, synchronous=config.sync,
            commit_interval=config.commit_interval,
        )
        self.relay_id = config.relay_id or _persistent_relay_id(config.data_dir)
        self.tls_fingerprint = b""
        self.ssl_context = None
        if config.self_signed or config.cert:
            if config.self_signed:
                cert, key = ensure_self_signed(config.data_dir, [config.host])
            else:
                assert config.cert is not None and config.key is not None
                cert, key = config.cert, config.key
            self.ssl_context, self.tls_fingerprint = server_context(cert, key)
        self.sessions: set[Session] = set()
        self.cork = Cork()
        self.live: dict[str, list[Session]] = {}
        self.file_streams: dict[bytes, StreamRecord] = {}  # durable registrations (cache)
        self.closed_streams: dict[bytes, tuple[str, str]] = {}  # recently closed (insertion order)
        self.spool_inflight: dict[str, int] = {}  # target handle -> spool writes uncommitted
        self.spool_tail: dict[str, int] = {}  # live target handle -> last spool row committed
        self.verifier = hybrid_signature()
        self.pool = ThreadPoolExecutor(config.verify_threads, thread_name_prefix="relay-verify")
        self.metrics = Metrics()
        self._describe_metrics()
        self.server: Server | None = None
        self.frames_in = 0
        self.frames_out_closed = 0  # frames sent by connections that have gone
        self.limits = {
            "max_frame": wire.MAX_FRAME_BYTES,
            "max_signed_part": wire.MAX_SIGNED_PART_BYTES,
            "max_one_time_key": wire.MAX_ONE_TIME_KEY_BYTES,
            "max_one_time_per_upload": wire.MAX_ONE_TIME_PER_UPLOAD,
            "max_envelope": wire.MAX_ENVELOPE_BYTES,
            "max_binary_payload": wire.MAX_BINARY_PAYLOAD,
            "rate": int(config.rate),
            "burst": int(config.burst),
            "stream_rate": int(config.stream_rate),
            "stream_burst": int(config.stream_burst),
            "window": config.window,
            "idle_timeout": int(config.idle_timeout),
            "auth_timeout": int(config.auth_timeout),
            "queue_quota": config.store_limits.quota_messages,
            "ttl": int(config.store_limits.ttl_seconds),
            "spool_quota": config.spool_quota_bytes,
            "spool_ttl": int(config.spool_ttl),
            "max_file_streams": config.max_file_streams,
        }

    # ------------------------------------------------------------ lifecycle

    @property
    def scheme(self) -> str:
        return "wss" if self.ssl_context else "ws"

    async def start(self) -> None:
        # The SQLite and verify threads take the GIL in short bursts; a 1 ms switch
        # interval (default 5 ms) keeps the event loop's latency low while they do.
        sys.setswitchinterval(0.001)
        await self.store.open()
        self.file_streams = {record.stream: record
                             for record in await self.store.file_streams(_now_ms())}
        self.server = await serve(
            self._handler,
            self.config.host,
            self.config.port,
            process_request=self._process_request,
            compression=None,
            max_size=wire.MAX_FRAME_BYTES,
            max_queue=16,
            ping_interval=self.config.ping_interval,
            ping_timeout=self.config.ping_timeout,
            close_timeout=5,
            ssl=self.ssl_context,
            server_header=None,
            create_connection=RelayConnection,
        )
        self._sweeper = asyncio.create_task(self._sweep())

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        self._sweeper.cancel()
        if self.server is not None:
            self.server.close(close_connections=True)
            await self.server.wait_closed()
        await self.store.close()
        self.pool.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------ HTTP side

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        path = request.path.split("?", 1)[0]
        if path == "/healthz":
            return connection.respond(http.HTTPStatus.OK, "ok\n")
        if path == "/metrics":
            response = connection.respond(http.HTTPStatus.OK, self.metrics.render())
            response.headers["Content-Type"] = "text/plain; version=0.0.4; charset=utf-8"
            return response
        if path != "/":
            return connection.respond(http.HTTPStatus.NOT_FOUND, "not found\n")
        if len(self.sessions) >= self.config.max_connections:
            self.metrics.count("qsecret_relay_refused_connections_total")
            response = connection.respond(
                http.HTTPStatus.SERVICE_UNAVAILABLE, "relay is at its connection limit\n"
            )
            response.headers["Retry-After"] = "5"
            return response
        return None

    # ------------------------------------------------------------ per connection

    async def _handler(self, ws: ServerConnection) -> None:
        session = Session(ws, self.config, self.cork)
        self.sessions.add(session)
        self.metrics.count("qsecret_relay_connections_total")
        session.writer = asyncio.create_task(self._writer(session))
        session.post(self._hello(session))
        close_code: int | None = None
        if isinstance(ws, RelayConnection):
            ws.inline = functools.partial(self._inline, session)
        try:
            session.busy = False
            async for data in ws:
                session.busy = True
                session.last_active = time.monotonic()
                self.frames_in += 1
                bucket = session.bucket if isinstance(data, str) else session.stream_bucket
                delay = bucket.delay(session.last_active)
                if delay > 0:
                    # Over the rate: read no faster (TCP pushes back on the sender); drop nothing.
                    self.metrics.count("qsecret_relay_throttled_total")
                    await asyncio.sleep(delay)
                if isinstance(data, str):
                    close_code = await self._on_text(session, data)
                else:
                    close_code = await self._on_binary(session, data)
                if close_code is not None:
                    break
                session.busy = False
        except ConnectionClosed:
            pass
        finally:
            session.busy = True
            if isinstance(ws, RelayConnection):
                ws.inline = None
            await self._finish(session, close_code)

    async def _finish(self, session: Session, close_code: int | None) -> None:
        if close_code is not None:
            # Let the writer flush the last error frame before the close frame.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._flush(session), 1.0)
            self.metrics.count("qsecret_relay_closed_total", "code", str(close_code))
            reason = "policy violation" if close_code == wire.CLOSE_POLICY else "going away"
            await session.ws.close(close_code, reason)
        session.closing = True
        self.sessions.discard(session)
        self.frames_out_closed += session.sent
        if session.handle is not None:
            peers = self.live.get(session.handle, [])
            newest = bool(peers) and peers[-1] is session
            if session in peers:
                peers.remove(session)
            if not peers:
                self.live.pop(session.handle, None)
                self.spool_tail.pop(session.handle, None)
            elif newest:
                # The next newest session now gets this handle's file frames: first what
                # was spooled since it last drained.
                self._maybe_drain_spool(peers[-1])
        if session.spool_task is not None:
            session.spool_task.cancel()
        session.spool_room.set()
        for stream, other in list(session.streams.items()):
            other.streams.pop(stream, None)
            other.post(wire.StreamClose(stream.hex()).encode())
        session.streams.clear()
        if session.writer is not None:
            session.writer.cancel()
        session.room.set()
        session.send_room.set()
        log.debug("connection closed handle=%s code=%s", session.handle, close_code)

    async def _flush(self, session: Session) -> None:
        while session.outbox:
            await asyncio.sleep(0.01)

    async def _writer(self, session: Session) -> None:
        ws = session.ws
        try:
            while True:
                await session.wake.wait()
                session.wake.clear()
                if session.need_drain and session.handle is not None and not session.draining:
                    await self._drain(session)
                while session.outbox:
                    await ws.send(session.outbox.popleft())
                    session.sent += 1
                session.room.set()
        except ConnectionClosed:
            pass
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("writer failed handle=%s", session.handle)

    def _hello(self, session: Session) -> str:
        return wire.Hello(self.relay_id, session.nonce, wire.SUPPORTED_VERSIONS,
                          self.limits).encode()

    # ------------------------------------------------------------ errors and abuse

    def _refuse(self, session: Session, code: str, message: str, *, strike: bool = True,
                req_id: str | None = None, msg: str | None = None,
                stream: str | None = None) -> int | None:
        """Send an error frame; return the close code when the strikes say abuse."""
        self.metrics.count("qsecret_relay_errors_total", "code", code)
        session.post(wire.Error(code, message[:512], req_id, msg, stream).encode())
        if strike and session.strikes.add():
            log.info("closing abusive connection handle=%s last=%s", session.handle, code)
            return wire.CLOSE_POLICY
        return None

    # ------------------------------------------------------------ text frames

    def _inline(self, session: Session, text: str) -> bool:
        """Handle a send, ack or ping where it was read; False: let the handler have it.

        Only while the handler is idle (so order is kept), the sender is under its
        rate (a token is spent exactly as the handler would) and a send would not
        have to wait for the store. Auth, prekeys, streams, frames that do not parse:
        all go the usual way, unchanged.
        """
        if session.busy or session.closing or session.handle is None:
            return False
        store = self.store
        if (session.pending_sends >= self.config.max_pending_sends
                or (isinstance(store, SqliteStore) and store.behind())):
            return False
        try:
            frame = wire.parse_client_frame(text)
        except Exception:  # refused (or worse) the usual way, with its error frame
            return False
        if not isinstance(frame, wire.Send | wire.Ack | wire.Ping):
            return False
        now = time.monotonic()
        if not session.bucket.take(now):
            return False
        session.last_active = now
        self.frames_in += 1
        try:
            if isinstance(frame, wire.Send):
                self._accept_send(session, frame)
            elif isinstance(frame, wire.Ack):
                self._on_ack(session, frame)
            else:
                self._on_ping(session, frame)  # waits for this connection's spool writes
        except Exception:
            log.exception("internal error on %s handle=%s", frame.TYPE, session.handle)
            self._refuse(session, "internal", "the relay could not handle this request",
                         strike=False, req_id=getattr(frame, "id", None))
        return True

    async def _on_text(self, session: Session, text: str) -> int | None:
        try:
            frame = wire.parse_client_frame(text)
        except wire.WireError as exc:
            return self._refuse(session, exc.code, exc.message, req_id=exc.req_id)
        try:
            if isinstance(frame, wire.Auth):
                return await self._on_auth(session, frame)
            if session.handle is None:
                return self._refuse(session, "not_authenticated",
                                    f"authenticate before sending {frame.TYPE!r}")
            if isinstance(frame, wire.Send):
                await self._on_send(session, frame)
            elif isinstance(frame, wire.Ack):
                self._on_ack(session, frame)
            elif isinstance(frame, wire.PrekeysUpload):
                return await self._on_prekeys_upload(session, frame)
            elif isinstance(frame, wire.PrekeysFetch):
                await self._on_prekeys_fetch(session, frame)
            elif isinstance(frame, wire.StreamOpen):
                return await self._on_stream_open(session, frame)
            elif isinstance(frame, wire.StreamClose):
                return await self._on_stream_close(session, frame)
            elif isinstance(frame, wire.StreamAck):
                return self._on_stream_ack(session, frame)
            elif isinstance(frame, wire.Ping):
                self._on_ping(session, frame)
        except Exception:
            # Never let one request take the relay down; say so without its contents.
            log.exception("internal error on %s handle=%s", frame.TYPE, session.handle)
            return self._refuse(session, "internal", "the relay could not handle this request",
                                strike=False, req_id=getattr(frame, "id", None))
        return None

    async def _on_auth(self, session: Session, frame: wire.Auth) -> int | None:
        if session.handle is not None:
            return self._refuse(session, "already_authenticated", "this connection is logged in")
        if frame.relay != self.relay_id:
            return self._auth_failed(session, "wrong_relay",
                                     f"this relay is {self.relay_id!r}, not {frame.relay!r}")
        message = wire.auth_message(session.nonce, self.relay_id, self.tls_fingerprint,
                                    frame.handle, frame.identity)
        # The nonce is spent whatever the outcome: a replayed answer can never match again.
        session.nonce = secrets.token_bytes(wire.NONCE_BYTES)
        if not await self._verify(frame.identity, message, frame.sig):
            return self._auth_failed(session, "auth_failed", "signature did not verify")
        status = await self.store.bind_identity(frame.handle, frame.identity)
        if status is BindStatus.MISMATCH:
            return self._auth_failed(session, "handle_taken",
                                     f"handle {frame.handle!r} belongs to another identity")
        session.handle, session.identity = frame.handle, frame.identity
        # Until its drain has looked at the spool, file frames for it are spooled (order).
        session.spool_draining = True
        self.live.setdefault(frame.handle, []).append(session)
        self.metrics.count("qsecret_relay_auth_total", "result", "ok")
        queued = await self.store.queue_depth(frame.handle)
        prekeys = await self.store.prekey_count(frame.handle)
        session.post(wire.AuthOk(frame.handle, status is BindStatus.NEW, queued, prekeys).encode())
        log.debug("authenticated handle=%s new=%s queued=%d", frame.handle,
                  status is BindStatus.NEW, queued)
        session.need_drain = True
        session.wake.set()
        # Spooled file frames after the envelopes have started (the drain task reads its
        # first page after the writer task's first envelope read).
        session.spool_ready = True
        self._maybe_drain_spool(session)
        return None

    def _auth_failed(self, session: Session, code: str, message: str) -> int | None:
        self.metrics.count("qsecret_relay_auth_total", "result", "failed")
        session.auth_failures += 1
        close = self._refuse(session, code, message)
        if session.auth_failures >= MAX_AUTH_FAILURES:
            return wire.CLOSE_POLICY
        session.post(self._hello(session))  # a fresh nonce for the next try
        return close

    async def _verify(self, public_key: bytes, message: bytes, signature: bytes) -> bool:
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(
                self.pool, self.verifier.verify, public_key, message, signature
            )
        except (InvalidSignature, InvalidKey):
            return False
        return True

    # ------------------------------------------------------------ envelopes

    async def _on_send(self, session: Session, frame: wire.Send) -> None:
        while session.pending_sends >= self.config.max_pending_sends:
            session.send_room.clear()
            await session.send_room.wait()
            if session.closing:
                return
        assert session.handle is not None
        store = self.store
        if isinstance(store, SqliteStore) and store.behind():
            # The disk is behind: stop reading from senders until it catches up, so
            # "stored" acks (durability) keep pace with what is accepted.
            await store.wait_for_room()
        self._accept_send(session, frame)

    def _accept_send(self, session: Session, frame: wire.Send) -> None:
        """Number the envelope, queue it for the commit, deliver it to live recipients."""
        assert session.handle is not None
        store = self.store
        envelope = store.new_envelope(session.handle, frame.to, frame.msg, frame.body)
        session.pending_sends += 1
        done = functools.partial(self._on_stored, session, frame)
        if isinstance(store, SqliteStore):
            store.enqueue_then(envelope, done)
        else:
            asyncio.ensure_future(store.enqueue(envelope)).add_done_callback(
                functools.partial(_settled, done))
        # Live recipients get it now, while it is being committed: their ack deletes it
        # after the insert (same queue, in order). The sender's "stored" still waits for
        # the commit; if the relay dies first, the sender resends the same message ID and
        # the recipient's application drops the repeat.
        for peer in self.live.get(frame.to, ()):
            self._push(peer, envelope)

    def _on_stored(self, session: Session, frame: wire.Send, ok: bool, value: Any) -> None:
        session.pending_sends -= 1
        session.send_room.set()
        if not ok:
            if isinstance(value, asyncio.CancelledError):
                return
            log.error("enqueue failed: %s", type(value).__name__)
            self._refuse(session, "internal", "envelope not stored; send it again",
                         strike=False, req_id=frame.id, msg=frame.msg)
            return
        result: EnqueueResult = value
        status = result.status
        if status is EnqueueStatus.STORED:
            self.metrics.count("qsecret_relay_envelopes_total", "result", "stored")
            if frame.id is not None:
                session.post(wire.Stored(frame.msg, False, frame.id).encode())
            else:
                # The futures of one commit settle in one loop pass: confirm them together.
                if not session.stored_batch:
                    asyncio.get_running_loop().call_soon(self._confirm_stored, session)
                session.stored_batch.append(frame.msg)
        elif status is EnqueueStatus.DUPLICATE:
            self.metrics.count("qsecret_relay_envelopes_total", "result", "duplicate")
            session.post(wire.Stored(frame.msg, True, frame.id).encode())
        elif status is EnqueueStatus.QUOTA_EXCEEDED:
            self._refuse(session, "quota_exceeded", f"{frame.to}'s queue is full; try later",
                         strike=False, req_id=frame.id, msg=frame.msg)
        else:
            self._refuse(session, "unknown_recipient", f"no user {frame.to!r} on this relay",
                         strike=False, req_id=frame.id, msg=frame.msg)

    def _confirm_stored(self, session: Session) -> None:
        """One ``stored`` (or ``stored_many``) frame for everything committed together."""
        msgs, session.stored_batch = session.stored_batch, []
        if len(msgs) == 1:
            session.post(wire.Stored(msgs[0], False).encode())
            return
        for start in range(0, len(msgs), wire.MAX_STORED_MSGS):
            session.post(wire.StoredMany(tuple(msgs[start:start + wire.MAX_STORED_MSGS])).encode())

    def _push(self, session: Session, envelope: Envelope) -> None:
        """Deliver a fresh envelope now, unless the connection is behind (then it drains)."""
        if (session.draining or session.need_drain
                or len(session.inflight) >= self.config.window):
            session.need_drain = True
            session.wake.set()
            return
        self._deliver(session, envelope)

    def _deliver(self, session: Session, envelope: Envelope) -> None:
        text = wire.Deliver(envelope.seq, envelope.msg, envelope.sender, envelope.body,
                            envelope.ts).encode()
        session.inflight[envelope.seq] = (time.monotonic(), text)
        session.post(text)
        self.metrics.count("qsecret_relay_deliveries_total")

    async def _drain(self, session: Session) -> None:
        """Send queued envelopes not already in flight, oldest first, up to the window."""
        assert session.handle is not None
        session.draining = True
        try:
            while session.need_drain and len(session.inflight) < self.config.window:
                session.need_drain = False
                limit = self.config.window
                rows = await self.store.pending(session.handle, limit)
                fresh = [row for row in rows if row.seq not in session.inflight]
                for row in fresh:
                    if len(session.inflight) >= self.config.window:
                        session.need_drain = True
                        break
                    self._deliver(session, row)
                if len(rows) == limit and fresh:
                    session.need_drain = True
        finally:
            session.draining = False

    def _on_ack(self, session: Session, frame: wire.Ack) -> None:
        assert session.handle is not None
        store = self.store
        if isinstance(store, SqliteStore):
            store.ack_nowait(session.handle, frame.seqs)
        else:
            asyncio.ensure_future(store.ack(session.handle, frame.seqs))
        self.metrics.count("qsecret_relay_acks_total", amount=len(frame.seqs))
        for peer in self.live.get(session.handle, ()):
            for seq in frame.seqs:
                peer.inflight.pop(seq, None)
            if peer.need_drain:
                peer.wake.set()

    # ------------------------------------------------------------ prekeys

    async def _on_prekeys_upload(self, session: Session, frame: wire.PrekeysUpload) -> int | None:
        assert session.handle is not None
        bundle = frame.bundle
        if bundle.identity != session.identity:
            return self._refuse(session, "bad_prekeys",
                                "bundle identity is not the key this handle logged in with",
                                req_id=frame.id)
        handle = session.handle
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(
                self.pool, wire.verify_bundle, handle, bundle, self.verifier.verify
            )
        except (InvalidSignature, InvalidKey) as exc:
            return self._refuse(session, "bad_prekeys", f"bundle rejected: {exc}",
                                req_id=frame.id)
        try:
            stored = await self.store.put_bundle(handle, bundle)
        except BundleRefused as exc:
            return self._refuse(session, "quota_exceeded", str(exc), strike=False,
                                req_id=frame.id)
        session.post(wire.PrekeysOk(stored, frame.id).encode())
        return None

    async def _on_prekeys_fetch(self, session: Session, frame: wire.PrekeysFetch) -> None:
        fetched = await self.store.take_bundle(frame.handle)
        if fetched is None:
            self._refuse(session, "no_bundle", f"{frame.handle!r} has published no prekeys",
                         strike=False, req_id=frame.id)
            return
        self.metrics.count("qsecret_relay_prekey_fetches_total", "one_time",
                           "yes" if fetched.bundle.one_time else "none_left")
        session.post(
            wire.Bundle(frame.handle, fetched.bundle, fetched.remaining, frame.id).encode()
        )
        if fetched.remaining < PREKEYS_LOW:
            for owner in self.live.get(frame.handle, ()):
                owner.post(wire.PrekeysLow(fetched.remaining).encode())

    # ------------------------------------------------------------ streams

    async def _on_stream_open(self, session: Session, frame: wire.StreamOpen) -> int | None:
        if frame.kind == "file":
            return await self._open_file_stream(session, frame)
        if bytes.fromhex(frame.stream) in self.file_streams:
            return self._refuse(session, "bad_field", "stream id taken", req_id=frame.id)
        return self._open_media_stream(session, frame)

    def _open_media_stream(self, session: Session, frame: wire.StreamOpen) -> int | None:
        """A live stream: both ends online, session to session (unchanged behaviour)."""
        stream = bytes.fromhex(frame.stream)
        if stream in session.streams:
            return self._refuse(session, "bad_field", "stream id already open", req_id=frame.id)
        if len(session.streams) >= self.config.max_streams:
            return self._refuse(session, "too_many_streams",
                                f"at most {self.config.max_streams} open streams",
                                strike=False, req_id=frame.id)
        peers = self.live.get(frame.to)
        if not peers:
            return self._refuse(session, "recipient_offline", f"{frame.to!r} is not connected",
                                strike=False, req_id=frame.id)
        peer = peers[-1]
        if stream in peer.streams or len(peer.streams) >= self.config.max_streams:
            return self._refuse(session, "too_many_streams", "the peer cannot take this stream",
                                strike=False, req_id=frame.id)
        assert session.handle is not None
        session.streams[stream] = peer
        peer.streams[stream] = session
        session.post(wire.StreamOk(frame.stream, frame.id).encode())
        peer.post(wire.StreamIncoming(frame.stream, session.handle, frame.kind).encode())
        return None

    async def _open_file_stream(self, session: Session, frame: wire.StreamOpen) -> int | None:
        """Register a durable file stream; the peer need not be online."""
        handle = session.handle
        assert handle is not None
        stream = bytes.fromhex(frame.stream)
        if frame.to == handle:
            return self._refuse(session, "bad_field", "a file stream needs two different handles",
                                req_id=frame.id)
        if stream in session.streams:
            return self._refuse(session, "bad_field", "stream id taken", req_id=frame.id)
        if await self.store.identity_of(frame.to) is None:
            return self._refuse(session, "unknown_recipient", f"no user {frame.to!r} on this relay",
                                strike=False, req_id=frame.id)
        now = _now_ms()
        expires = now + int(self.config.spool_ttl * 1000)
        status = await self.store.register_stream(stream, handle, frame.to, now, expires,
                                                  self.config.max_file_streams)
        if status is StreamStatus.TAKEN:
            return self._refuse(session, "bad_field", "stream id taken", req_id=frame.id)
        if status is StreamStatus.TOO_MANY:
            return self._refuse(session, "too_many_streams",
                                f"at most {self.config.max_file_streams} open file streams",
                                strike=False, req_id=frame.id)
        known = self.file_streams.get(stream)
        created = known.created if known is not None and status is StreamStatus.SAME else now
        self.file_streams[stream] = StreamRecord(stream, handle, frame.to, created, expires)
        self.closed_streams.pop(stream, None)
        if status is StreamStatus.NEW:
            self.metrics.count("qsecret_relay_file_streams_opened_total")
        session.post(wire.StreamOk(frame.stream, frame.id).encode())
        for peer in self.live.get(frame.to, ()):
            peer.post(wire.StreamIncoming(frame.stream, handle, "file").encode())
        return None

    async def _on_stream_close(self, session: Session, frame: wire.StreamClose) -> int | None:
        stream = bytes.fromhex(frame.stream)
        if stream in session.streams:
            return self._close_media_stream(session, frame)
        assert session.handle is not None
        record = self.file_streams.get(stream)
        other = record.other(session.handle) if record is not None else None
        if record is None or other is None:
            return self._refuse(session, "unknown_stream", "no such open stream",
                                strike=not self._recently_closed(stream, session.handle),
                                stream=frame.stream)
        del self.file_streams[stream]
        self._remember_closed(record)
        dropped = await self.store.close_stream(stream)
        log.debug("file stream closed by handle=%s spooled frames dropped=%d",
                  session.handle, dropped)
        for peer in self.live.get(other, ()):
            peer.post(frame.encode())
        return None

    def _close_media_stream(self, session: Session, frame: wire.StreamClose) -> int | None:
        stream = bytes.fromhex(frame.stream)
        peer = session.streams.pop(stream, None)
        if peer is None:
            return self._refuse(session, "unknown_stream", "no such open stream")
        peer.streams.pop(stream, None)
        peer.post(frame.encode())
        return None

    def _on_stream_ack(self, session: Session, frame: wire.StreamAck) -> int | None:
        """The endpoint has these seqs: delete them from the spool held for it."""
        assert session.handle is not None
        stream = bytes.fromhex(frame.stream)
        record = self.file_streams.get(stream)
        if record is None or record.other(session.handle) is None:
            # No strike: an ack can cross the other end's stream_close.
            return self._refuse(session, "unknown_stream",
                                "stream_ack for a file stream you are not an endpoint of",
                                strike=False, stream=frame.stream)
        self.store.spool_ack_nowait(session.handle, stream, frame.seqs)
        self.metrics.count("qsecret_relay_stream_acks_total", amount=len(frame.seqs))
        return None

    def _on_ping(self, session: Session, frame: wire.Ping) -> None:
        """Pong, once every file frame read before the ping is durable (the sender's
        only way to know the relay holds what it sent; live-forwarded frames are already
        in the peer's connection)."""
        pong = wire.Pong(frame.id).encode()
        if not session.spool_pending:
            session.post(pong)
            return
        self.store.barrier_then(lambda ok, value: session.post(pong))

    def _remember_closed(self, record: StreamRecord) -> None:
        self.closed_streams[record.stream] = (record.a, record.b)
        while len(self.closed_streams) > RECENTLY_CLOSED:
            del self.closed_streams[next(iter(self.closed_streams))]

    def _recently_closed(self, stream: bytes, handle: str) -> bool:
        return handle in self.closed_streams.get(stream, ())

    async def _on_binary(self, session: Session, data: bytes) -> int | None:
        if session.handle is None:
            return self._refuse(session, "not_authenticated", "authenticate before binary frames")
        try:
            kind, flags, stream, seq, _ = wire.parse_binary_header(data)
        except wire.WireError as exc:
            return self._refuse(session, exc.code, exc.message)
        peer = session.streams.get(stream)
        if peer is None:
            record = self.file_streams.get(stream)
            if record is not None:
                return await self._on_file_frame(session, record, kind, seq, data)
            closed = self._recently_closed(stream, session.handle)
            return self._refuse(session, "unknown_stream", "binary frame for an unopened stream",
                                strike=not closed, stream=stream.hex() if closed else None)
        self.metrics.count("qsecret_relay_bulk_bytes_total", amount=len(data))
        # Backpressure: a bulk sender waits for a slow receiver instead of filling memory.
        if len(peer.outbox) >= BULK_OUTBOX_LIMIT:
            peer.room.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(peer.room.wait(), BULK_WAIT)
            if len(peer.outbox) >= BULK_OUTBOX_LIMIT or peer.closing:
                return self._refuse(session, "recipient_offline", "stream receiver is stuck",
                                    strike=False)
        peer.post(data)
        if flags & wire.FLAG_FINAL:
            session.streams.pop(stream, None)
            peer.streams.pop(stream, None)
        return None

    async def _on_file_frame(self, session: Session, record: StreamRecord, kind: int, seq: int,
                             data: bytes) -> int | None:
        """Forward live when the target is online and caught up; else spool durably."""
        assert session.handle is not None
        target = record.other(session.handle)
        if target is None:
            return self._refuse(session, "unknown_stream",
                                "binary frame for a stream you are not an endpoint of")
        if kind != wire.KIND_FILE_CHUNK:
            return self._refuse(session, "bad_binary_frame", "a file stream carries file frames",
                                stream=record.stream.hex())
        if seq > MAX_FILE_SEQ:
            return self._refuse(session, "bad_binary_frame",
                                "file stream seq must be below 2^53 (stream_ack limit)",
                                stream=record.stream.hex())
        self.metrics.count("qsecret_relay_bulk_bytes_total", amount=len(data))
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

    def _live_target(self, target: str) -> Session | None:
        """The session to forward a file frame to now, or None: spool it."""
        peers = self.live.get(target)
        if not peers or self.spool_inflight.get(target):
            return None
        dest = peers[-1]
        if dest.spool_draining or dest.closing:
            return None
        return dest

    async def _spool_frame(self, session: Session, record: StreamRecord, target: str, seq: int,
                           data: bytes) -> int | None:
        quota = self.config.spool_quota_bytes
        if len(data) > quota:
            self.metrics.count("qsecret_relay_spool_refusals_total")
            return self._refuse(session, "quota_exceeded",
                                f"frame seq {seq} ({len(data)} bytes) is larger than the whole "
                                f"spool quota of {_size(quota)} per recipient", strike=False,
                                stream=record.stream.hex())
        while session.spool_pending >= MAX_SPOOL_PENDING:
            # Backpressure on the disk: read no more from this sender until writes commit.
            session.spool_room.clear()
            await session.spool_room.wait()
            if session.closing:
                return None
        session.spool_pending += 1
        self.spool_inflight[target] = self.spool_inflight.get(target, 0) + 1
        now = _now_ms()
        done = functools.partial(self._on_spooled, session, record.stream, target, seq)
        self.store.spool_then(target, record.stream, seq, data, now,
                              now + int(self.config.spool_ttl * 1000), quota, done)
        peers = self.live.get(target)
        if peers:
            # Online but behind (or draining): its newest session drains the spool.
            peers[-1].spool_draining = True
            self._maybe_drain_spool(peers[-1])
        return None

    def _on_spooled(self, session: Session, stream: bytes, target: str, seq: int, ok: bool,
                    value: Any) -> None:
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
            self._refuse(session, "internal", f"file frame seq {seq} not stored; send it again",
                         strike=False, stream=stream.hex())
            return
        result: SpoolResult = value
        if result.status is SpoolStatus.STORED:
            self.metrics.count("qsecret_relay_file_frames_total", "path", "spooled")
            if target in self.live:
                self.spool_tail[target] = max(self.spool_tail.get(target, 0), result.row)
        elif result.status is SpoolStatus.DUPLICATE:
            self.metrics.count("qsecret_relay_file_frames_total", "path", "duplicate")
        elif result.status is SpoolStatus.QUOTA_EXCEEDED:
            self.metrics.count("qsecret_relay_spool_refusals_total")
            self._refuse(session, "quota_exceeded",
                         f"{target}'s spool is full (quota {_size(self.config.spool_quota_bytes)}"
                         f"); frame seq {seq} was not stored, send it again later",
                         strike=False, stream=stream.hex())
        else:
            self._refuse(session, "unknown_stream",
                         f"stream closed or expired before frame seq {seq} was stored",
                         strike=False, stream=stream.hex())

    def _maybe_drain_spool(self, session: Session) -> None:
        """Start sending ``session`` what is spooled for its handle, unless nothing is."""
        handle = session.handle
        if handle is None or session.closing or not session.spool_ready:
            return
        idle = session.spool_task is None or session.spool_task.done()
        if idle and self.store.spool_bytes() == 0 and not self.spool_inflight.get(handle):
            session.spool_draining = False  # nothing spooled anywhere, nothing on its way
            return
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
            try:
                page = await self.store.spool_page(handle, session.spool_cursor, SPOOL_PAGE,
                                                   _now_ms())
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
                if (not self.spool_inflight.get(handle)
                        and self.spool_tail.get(handle, 0) <= session.spool_cursor):
                    session.spool_draining = False
                    return

    # ------------------------------------------------------------ timers

    async def _sweep(self) -> None:
        """Timeouts, redelivery and expiry, for every connection, once a sweep interval."""
        next_expire = 0.0
        next_gc = time.monotonic() + self.config.gc_interval
        while True:
            await asyncio.sleep(self.config.sweep_interval)
            now = time.monotonic()
            try:
                for session in list(self.sessions):
                    if session.handle is None:
                        if now - session.opened > self.config.auth_timeout:
                            self._close_later(session, wire.CLOSE_POLICY,
                                              "authentication timeout")
                        continue
                    if now - session.last_active > self.config.idle_timeout:
                        self._close_later(session, wire.CLOSE_GOING_AWAY, "idle timeout")
                        continue
                    stale = now - self.config.redeliver_after
                    for seq, (sent, text) in list(session.inflight.items()):
                        if sent < stale:
                            session.inflight[seq] = (now, text)
                            session.post(text)
                            self.metrics.count("qsecret_relay_redeliveries_total")
                if now >= next_expire:
                    next_expire = now + self.config.expire_interval
                    dropped = await self.store.expire()
                    if dropped:
                        self.metrics.count("qsecret_relay_expired_total", amount=dropped)
                        log.info("expired %d envelopes past the TTL", dropped)
                    await self._expire_spool()
                if now >= next_gc:
                    next_gc = now + self.config.gc_interval
                    self._full_gc()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("sweep failed")

    def _full_gc(self) -> None:
        """The cyclic GC's full pass, at a time of our choosing (see ``tune_gc``)."""
        started = time.perf_counter()
        found = gc.collect()
        self.metrics.count("qsecret_relay_gc_full_total")
        log.debug("full GC pass: %d unreachable objects in %.1f ms", found,
                  (time.perf_counter() - started) * 1000)

    async def _expire_spool(self) -> None:
        """Drop spooled frames and file streams past the spool TTL; tell live endpoints."""
        dropped, gone = await self.store.expire_spool(_now_ms())
        if dropped:
            self.metrics.count("qsecret_relay_spool_expired_total", amount=dropped)
            log.info("expired %d spooled file frames past the spool TTL", dropped)
        for stream in gone:
            record = self.file_streams.pop(stream, None)
            if record is None:
                continue
            self._remember_closed(record)
            close = wire.StreamClose(stream.hex()).encode()
            for handle in (record.a, record.b):
                for peer in self.live.get(handle, ()):
                    peer.post(close)

    def _close_later(self, session: Session, code: int, reason: str) -> None:
        if session.closing:
            return
        session.closing = True
        self.metrics.count("qsecret_relay_closed_total", "code", str(code))
        asyncio.ensure_future(session.ws.close(code, reason))

    # ------------------------------------------------------------ metrics

    def _describe_metrics(self) -> None:
        m = self.metrics
        m.describe("qsecret_relay_connections_total", "websocket connections accepted")
        m.counter_from("qsecret_relay_frames_in_total", "frames received",
                lambda: self.frames_in)
        m.counter_from("qsecret_relay_frames_out_total", "frames sent",
                lambda: self.frames_out_closed + sum(s.sent for s in self.sessions))
        m.describe("qsecret_relay_errors_total", "error frames sent, by code")
        m.describe("qsecret_relay_envelopes_total", "envelopes received, by result")
        m.describe("qsecret_relay_deliveries_total", "deliver frames sent")
        m.describe("qsecret_relay_acks_total", "delivery acks received")
        m.describe("qsecret_relay_closed_total", "connections closed by the relay, by code")
        m.describe("qsecret_relay_gc_full_total", "full cyclic-GC passes run by the sweeper")
        m.gauge("qsecret_relay_connections", "open websocket connections",
                lambda: len(self.sessions))
        m.gauge("qsecret_relay_authenticated_connections", "logged-in connections",
                lambda: sum(len(v) for v in self.live.values()))
        m.gauge("qsecret_relay_queue_depth", "envelopes queued for all recipients",
                self.store.total_queue_depth)
        m.describe("qsecret_relay_file_frames_total",
                   "file-stream frames accepted, by path (live, spooled, duplicate)")
        m.describe("qsecret_relay_spool_refusals_total",
                   "file-stream frames refused because the recipient's spool quota is full")
        m.describe("qsecret_relay_spool_sent_total", "spooled file-stream frames sent")
        m.describe("qsecret_relay_spool_expired_total", "spooled frames dropped past the TTL")
        m.describe("qsecret_relay_stream_acks_total", "file-stream seqs acked by receivers")
        m.describe("qsecret_relay_file_streams_opened_total", "file streams registered")
        m.gauge("qsecret_relay_spool_bytes", "bytes of file-stream frames spooled for everyone",
                self.store.spool_bytes)
        m.gauge("qsecret_relay_file_streams", "durable file streams open",
                lambda: len(self.file_streams))


def tune_gc() -> None:
    """Keep the cyclic GC from pausing the event loop under load.

    With thousands of connections the relay holds millions of long-lived objects; every
    automatic full pass walks them all (tens of milliseconds, straight into the latency
    tail). So: what exists at start-up is frozen out of the GC, young generations are
    collected less often (every 50,000 allocations instead of 700), and the full pass runs
    only from the sweeper, every ``gc_interval`` seconds, so closed connections' cycles are
    still reclaimed.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, GC_MIDDLE_THRESHOLD, GC_NO_AUTOMATIC_FULL)


def _settled(callback: Any, future: asyncio.Future[Any]) -> None:
    """Hand a finished store future to a ``callback(ok, value)``."""
    if future.cancelled():
        callback(False, asyncio.CancelledError())
    elif future.exception() is not None:
        callback(False, future.exception())
    else:
        callback(True, future.result())


def _now_ms() -> int:
    return int(time.time() * 1000)


def _size(count: int) -> str:
    """A byte count for people: 4 GiB, 500 MiB, 1000 bytes."""
    for unit, scale in (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if count >= scale:
            value = count / scale
            return f"{value:.0f} {unit}" if value == int(value) else f"{value:.1f} {unit}"
    return f"{count} bytes"


def _persistent_relay_id(data_dir: Path) -> str:
    """This relay's id: made once, kept in the data dir, pinned by clients on first use."""
    path = data_dir / "relay-id"
    if path.exists():
        return path.read_text().strip()
    relay_id = "qsr-" + secrets.token_hex(12)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(relay_id + "\n")
    os.replace(tmp, path)
    return relay_id


__all__ = ["Relay", "RelayConfig", "Session", "tune_gc"]
