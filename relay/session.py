"""One websocket connection at the relay: the sans-I/O core plus its writing side.

The core (:class:`relay.wire.server.ServerConnection`) decides; this module writes.
Writing is the relay's hot path, so it goes below websockets' asyncio API (see
``websockets_contract``): frames are framed by the connection's sans-I/O protocol
and written once per loop pass (:class:`Cork`), and frequent text frames are
handled where they are read (:class:`RelayConnection`). The websockets versions
this is written against are pinned in pyproject.toml, and
tests/relay/test_websockets_contract.py fails when those internals change.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.frames import Frame, Opcode
from websockets.protocol import State

from relay.metrics import Metrics
from relay.wire.server import LOGIN_FAILURES
from relay.wire.server import ServerConnection as ConnectionCore

log = logging.getLogger("qsecret.relay")


class Cork:
    """Sessions holding encoded frames not yet written: written together once per loop pass,
    or sooner when the oldest has waited ``max_wait`` seconds.

    A busy relay makes several frames for one connection in one pass of the event
    loop (deliveries from several senders, the confirmations of a commit). Writing
    them as one ``transport.write`` saves a send() system call per frame here and
    a read (and a wake-up) per frame at the other end.

    Why the bound: frames are handled where they are read, and the event loop reads
    every ready socket before it runs the callback that flushes. When a burst has
    data waiting on hundreds of sockets, one pass of reads lasts tens of milliseconds
    (about 50 us a frame) and the deliveries made at its start would wait for its end.
    ``max_wait`` (2 ms by default: about 40 frames handled) caps that wait and keeps
    most of the coalescing.
    """

    MAX_WAIT = 0.002

    def __init__(self, max_wait: float = MAX_WAIT) -> None:
        self.sessions: list[Session] = []
        self.max_wait = max_wait
        self.writes = 0  # transport writes made (each may carry many frames)
        self.early_flushes = 0  # flushes made before the loop pass ended (max_wait reached)
        self._opened = 0.0  # when the oldest frame not yet written was corked
        self._scheduled = False  # a flush callback is pending on the loop

    def add(self, session: Session) -> None:
        """``session`` has framed output to write; write it with the others (see above)."""
        now = time.perf_counter()
        if not self.sessions:
            self._opened = now
            if not self._scheduled:
                self._scheduled = True
                asyncio.get_running_loop().call_soon(self._flush_at_pass_end)
        if not session.corked:
            session.corked = True
            self.sessions.append(session)
        if now - self._opened >= self.max_wait:
            self.early_flushes += 1
            self.flush()

    def _flush_at_pass_end(self) -> None:
        self._scheduled = False
        self.flush()

    def flush(self) -> None:
        sessions, self.sessions = self.sessions, []
        for session in sessions:
            session.corked = False
            session.flush()
        self.writes += len(sessions)


class RelayConnection(ServerConnection):
    """A ServerConnection that offers each complete text frame to the relay first.

    ``inline`` (set once the relay's handler runs) takes the decoded text and
    returns True when it handled the frame right here, in ``data_received``.
    That skips the hand-over to the handler coroutine (a queue, a future, a task
    wake-up and a later loop pass) for the frequent frames. Frames are offered
    only while none is queued for the handler, so frames never overtake each other.
    """

    inline: Callable[[str], bool] | None = None

    def send_data(self) -> None:
        """Write what the protocol has framed in one ``transport.write`` (websockets writes
        frame by frame; frames posted for this connection earlier in the pass are here)."""
        write_joined(self, self.protocol.data_to_send())

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

    def __init__(self, ws: ServerConnection, core: ConnectionCore, cork: Cork,
                 metrics: Metrics, unread_limit: int = 0) -> None:
        self.ws = ws
        self.core = core
        self.cork = cork
        self.metrics = metrics
        self.corked = False
        # Deliveries not yet acked: seq -> (sent at, encoded size). No bodies: a redelivery
        # re-reads them from the store (Envelopes.resend_due), so memory per connection is
        # bounded by the config (window, window_bytes), not by what the client leaves unacked.
        self.inflight: dict[int, tuple[float, int]] = {}
        self.inflight_bytes = 0  # sum of the sizes in inflight
        self.redeliver_due: list[int] = []  # seqs the writer task is to send again
        self.outbox: deque[str | bytes] = deque()
        # Text frames queued that the socket has not taken, in characters (JSON: bytes).
        # Past unread_limit (relay.memory.unread_limit; 0 = none) the client is not
        # reading what it asks for: the connection is dropped (see post). Binary stream
        # frames have their own bound (relay.streams.BULK_OUTBOX_LIMIT).
        self.outbox_bytes = 0
        self.unread_limit = unread_limit
        self.wake = asyncio.Event()
        self.room = asyncio.Event()  # outbox drained (bulk senders wait on it)
        self.send_room = asyncio.Event()  # a pending send committed
        self.need_drain = False
        self.draining = False
        self.pending_sends = 0
        self.streams: dict[bytes, Session] = {}  # live media stream id -> the other end
        self.closing = False
        self.busy = True  # the handler is not idle in recv() (see Relay._inline)
        self.writer: asyncio.Task[None] | None = None
        self.sent = 0  # frames written
        self.stored_batch: list[str] = []  # msgs made durable, confirmed together soon
        self.spool_cursor = 0  # spool row last sent here (sent again only after a rewind)
        self.spool_rewound = False  # spool_rewind: the drain starts over at its next page
        self.spool_draining = False  # spooled frames may be waiting: new ones spool too
        self.spool_task: asyncio.Task[None] | None = None
        self.spool_pending = 0  # spool writes of this connection not yet committed
        self.spool_acks_unsettled = False  # a stream_ack was queued since the last barrier
        self.spool_room = asyncio.Event()
        self.spool_ready = False  # auth_ok posted: spooled frames may follow
        self.post_core()

    @property
    def handle(self) -> str | None:
        return self.core.handle

    def post_core(self) -> None:
        """Send what the connection core queued (hello, auth_ok, errors); count refusals."""
        for code in self.core.take_refusals():
            self.metrics.count("qsecret_relay_errors_total", "code", code)
            if code in LOGIN_FAILURES:
                self.metrics.count("qsecret_relay_auth_total", "result", "failed")
        for text in self.core.data_to_send():
            self.post(text)

    def refuse(self, code: str, message: str, *, strike: bool = True,
               req_id: str | None = None, msg: str | None = None,
               stream: str | None = None) -> int | None:
        """Send an error frame; return the close code when the strikes say abuse."""
        close = self.core.refuse(code, message, strike=strike, req_id=req_id, msg=msg,
                                 stream=stream)
        self.post_core()
        if close is not None:
            log.info("closing abusive connection handle=%s last=%s", self.handle, code)
        return close

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
                log.debug("fast write refused handle=%s; the writer task sends it", self.handle)
            else:
                self.sent += 1
                self.cork.add(self)
                return
        self.outbox.append(data)
        if isinstance(data, str):
            self.outbox_bytes += len(data)
            if self.unread_limit and self.outbox_bytes > self.unread_limit:
                self._drop_unread()
                return
        self.wake.set()

    def take_outbox(self) -> str | bytes:
        """The oldest queued frame, for the writer task."""
        data = self.outbox.popleft()
        if isinstance(data, str):
            self.outbox_bytes -= len(data)
        return data

    def _drop_unread(self) -> None:
        """The client leaves more unread than any reading client could: drop it now.

        Deliveries and stream frames are held to their windows, so what piles up here is
        replies (stored, pong, errors) to requests a client keeps making without reading
        the answers. Pausing its reads instead could stall a client whose reading waits
        on its own writes; a close frame would queue behind what it does not read. So
        the transport is aborted and everything queued is freed at once; the handler's
        ConnectionClosed then cleans up as for any lost connection.
        """
        log.info("dropping connection handle=%s: %d bytes of replies unread (limit %d)",
                 self.handle, self.outbox_bytes, self.unread_limit)
        self.metrics.count("qsecret_relay_closed_total", "code", "unread")
        self.closing = True
        self.outbox.clear()
        self.outbox_bytes = 0
        self.ws.transport.abort()
        self.room.set()
        self.send_room.set()

    def release(self) -> None:
        """Drop what this closed connection holds, at once.

        Sessions live long, so they sit in the oldest GC generation, which only the
        sweeper's full pass (every ``gc_interval``) collects (relay.housekeeping.tune_gc).
        A reference cycle through a closed session (its writer task, the connection's
        inline hook, stream peers, waiting events) would keep its buffers until then;
        emptying them here frees them now, whatever cycles remain.
        """
        self.closing = True
        self.outbox.clear()
        self.outbox_bytes = 0
        self.inflight.clear()
        self.inflight_bytes = 0
        self.redeliver_due = []
        self.stored_batch = []
        self.streams.clear()
        self.writer = None
        self.spool_task = None
        ws = self.ws
        if isinstance(ws, RelayConnection):
            ws.inline = None

    def flush(self) -> None:
        """Write every frame framed so far in one go (what ``ws.send_data()`` does, joined)."""
        try:
            write_joined(self.ws, self.ws.protocol.data_to_send())
        except Exception:  # the connection is going away; its handler cleans up
            log.debug("write failed handle=%s", self.handle)


def write_joined(ws: ServerConnection, chunks: list[bytes]) -> None:
    """Write framed output as one ``transport.write``; an empty chunk means end of stream."""
    if not chunks:
        return
    if all(chunks):
        ws.transport.write(b"".join(chunks) if len(chunks) > 1 else chunks[0])
        return
    for chunk in chunks:  # an end-of-stream marker among them: in order, as websockets does
        if chunk:
            ws.transport.write(chunk)
        elif ws.transport.can_write_eof():
            try:
                ws.transport.write_eof()
            except Exception:  # write_eof() documents no exceptions; uvloop may raise
                log.debug("write_eof failed")
        else:
            ws.transport.close()


__all__ = ["Cork", "RelayConnection", "Session"]
