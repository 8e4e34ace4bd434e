"""The one HTTP/1.1 client for every caller of a KME: h11 over asyncio streams.

Used by the messenger (``AsyncSaeClient``), the blocking ``SaeClient`` of tools, tests and
the CLI (the same asyncio code on a :class:`PrivateLoop`), the KME-to-KME channel
(:mod:`.peer`) and ``qsecret kme status``. JSON bodies, keep-alive, a deadline per request.
httpx would do it too, but importing it also loads its command-line client (click, rich,
pygments) and its first request loads anyio and httpcore: about 60 ms of every messenger
start, on the clock of ``qsecret send-file``. h11 is the sans-I/O HTTP/1.1 state machine
httpx itself builds on.

Concurrency: a small pool of keep-alive connections (``max_connections``, 4 by default).
One connection per request in flight, because HTTP/1.1 answers in order: with a single
connection (or a lock) a key-status poll would wait behind an ``enc_keys`` that waits for
the KME-to-KME binding, and a request stuck until its deadline would hold up every other.
Four covers the messenger (status loop, sender, receiver, stats) without letting a burst
open hundreds of TLS sessions at the KME; more callers wait for a free slot, each within
its own deadline.

Cancellation: until the request's first byte is written, cancelling a request costs
nothing (a connection being opened is closed). From then on the exchange runs in its own
task, shielded from the caller: it reads the whole answer, so the connection always ends
either IDLE/IDLE (kept for reuse) or closed, never half used. A caller cancelled meanwhile
may pass ``on_orphan``, which receives the answer it walked away from (the KME has acted on
the request: ``enc_keys`` hands keys out once, see :class:`.client.AsyncSaeClient`).
Only a connection whose h11 state is IDLE on both sides and whose socket has nothing to
read is reused; a request that fails on the wire is not sent again, except a GET on a
reused connection the KME closed at that very moment (a GET changes nothing).
"""

from __future__ import annotations

import asyncio
import json
import logging
import select
import ssl
import threading
import weakref
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

import h11

log = logging.getLogger(__name__)

READ_BYTES = 64 * 1024
MAX_BODY_BYTES = 16 * 1024 * 1024  # far above any key batch; a runaway answer is refused
MAX_CONNECTIONS = 4

T = TypeVar("T")

_WIRE_ERRORS = (OSError, ssl.SSLError, asyncio.IncompleteReadError, h11.ProtocolError)


class HttpError(Exception):
    """No usable answer: the connection failed, timed out or did not speak HTTP/1.1."""


@dataclass(frozen=True)
class Response:
    status_code: int
    reason_phrase: str
    content: bytes

    def json(self) -> Any:
        """The body as JSON (``ValueError`` when it is not)."""
        return json.loads(self.content)

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")


class _Connection:
    """One socket and its h11 state machine."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.h11 = h11.Connection(our_role=h11.CLIENT)

    def reusable(self) -> bool:
        """Both sides IDLE (no exchange half done) and the socket still open and quiet."""
        return (self.h11.our_state is h11.IDLE and self.h11.their_state is h11.IDLE
                and not _stale(self.reader, self.writer))

    def close(self) -> None:
        self.writer.close()

    async def aclose(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except (OSError, ssl.SSLError):
            pass  # already broken: closing is all that was left to do


class AsyncHttpClient:
    """Requests to one origin (``http://`` or ``https://host:port``) over a few connections."""

    def __init__(self, base_url: str, *, ssl_context: ssl.SSLContext | None = None,
                 headers: dict[str, str] | None = None, timeout: float = 10.0,
                 max_connections: int = MAX_CONNECTIONS) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        if parts.scheme == "https" and ssl_context is None:
            raise ValueError("https needs an SSL context")
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        self._host = parts.hostname
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._ssl = ssl_context if parts.scheme == "https" else None
        self._prefix = parts.path.rstrip("/")
        authority = parts.netloc.rpartition("@")[2]
        self._headers = [("Host", authority), ("Accept", "application/json"),
                         *(headers or {}).items()]
        self._timeout = timeout
        self._slots = asyncio.Semaphore(max_connections)
        self._idle: list[_Connection] = []
        self._exchanges: set[asyncio.Task[Response]] = set()

    @property
    def idle_connections(self) -> int:
        """Open connections waiting for the next request (tests and diagnostics)."""
        return len(self._idle)

    async def request(self, method: str, path: str, *, json_body: Any = None,
                      content: bytes | None = None, headers: dict[str, str] | None = None,
                      on_orphan: Callable[[Response], None] | None = None) -> Response:
        """Send one request and read its whole answer (any status); HttpError if none came.

        ``on_orphan`` is called with the answer if this call is cancelled after the request
        went out and the answer still arrives (never when the call returns it).
        """
        if json_body is not None and content is not None:
            raise ValueError("json_body or content, not both")
        body = json.dumps(json_body).encode() if json_body is not None else content or b""
        fields = [*self._headers, *(headers or {}).items(), ("Content-Length", str(len(body)))]
        if json_body is not None:
            fields.append(("Content-Type", "application/json"))
        try:
            req = h11.Request(method=method, target=self._prefix + path, headers=fields)
        except h11.LocalProtocolError as exc:  # e.g. a space or control character in the path
            raise HttpError(f"cannot send {method} {path!r}: {exc}") from None
        deadline = asyncio.get_running_loop().time() + self._timeout
        try:
            async with asyncio.timeout_at(deadline):
                await self._slots.acquire()
        except TimeoutError:
            raise HttpError(f"no free connection within {self._timeout:g}s") from None
        try:  # the slot is ours: released here on failure, else by the exchange task
            conn, reused = self._reusable_idle(), True
            if conn is None:
                conn, reused = await self._open(deadline), False
        except BaseException:
            self._slots.release()
            raise
        # From the first byte on, the exchange belongs to its own task (see the docstring).
        task = asyncio.get_running_loop().create_task(
            self._exchange_then_release(conn, req, body, deadline,
                                        retry_on_fresh=reused and method == "GET"))
        self._exchanges.add(task)
        task.add_done_callback(self._exchanges.discard)
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            task.add_done_callback(lambda done: _hand_orphan(done, on_orphan))
            raise

    async def drain(self) -> None:
        """Wait until every exchange in flight (also those of cancelled callers) has ended."""
        while self._exchanges:
            await asyncio.wait(list(self._exchanges))

    async def aclose(self) -> None:
        """Let the exchanges in flight finish (each within its deadline), close every
        connection. The client may be used again afterwards (it reconnects)."""
        await self.drain()
        idle, self._idle = self._idle, []
        for conn in idle:
            await conn.aclose()

    def _reusable_idle(self) -> _Connection | None:
        while self._idle:
            conn = self._idle.pop()  # the most recently used: least likely closed by the KME
            if conn.reusable():
                return conn
            conn.close()  # closed by the server while idle (or not IDLE/IDLE): never reused
        return None

    async def _open(self, deadline: float) -> _Connection:
        try:
            async with asyncio.timeout_at(deadline):
                reader, writer = await asyncio.open_connection(
                    self._host, self._port, ssl=self._ssl,
                    server_hostname=self._host if self._ssl is not None else None)
        except TimeoutError:
            raise HttpError(f"no connection within {self._timeout:g}s") from None
        except _WIRE_ERRORS as exc:
            raise HttpError(f"{type(exc).__name__}: {exc}") from None
        return _Connection(reader, writer)

    async def _exchange_then_release(self, conn: _Connection, req: h11.Request, body: bytes,
                                     deadline: float, *, retry_on_fresh: bool) -> Response:
        try:
            try:
                async with asyncio.timeout_at(deadline):
                    try:
                        resp = await _exchange(conn, req, body)
                    except (*_WIRE_ERRORS, HttpError):
                        if not retry_on_fresh:
                            raise
                        # The KME may close an idle connection just as it is reused; a GET
                        # changes nothing, so it gets one more try on a fresh connection.
                        conn.close()
                        conn = await self._open(deadline)
                        resp = await _exchange(conn, req, body)
            except BaseException:
                conn.close()
                raise
        except TimeoutError:
            raise HttpError(f"no answer within {self._timeout:g}s") from None
        except _WIRE_ERRORS as exc:
            raise HttpError(f"{type(exc).__name__}: {exc}") from None
        finally:
            self._slots.release()
        if conn.reusable():
            self._idle.append(conn)
        else:
            conn.close()
        return resp


async def _exchange(conn: _Connection, req: h11.Request, body: bytes) -> Response:
    """Write the request, read the whole answer; leave h11 IDLE/IDLE when it may go on."""
    h = conn.h11
    conn.writer.write(h.send(req))
    if body:
        conn.writer.write(h.send(h11.Data(data=body)))
    conn.writer.write(h.send(h11.EndOfMessage()))
    await conn.writer.drain()
    head: h11.Response | None = None
    content = bytearray()
    while True:
        event = h.next_event()
        if event is h11.NEED_DATA:
            data = await conn.reader.read(READ_BYTES)
            if not data and head is None:
                raise HttpError("the server closed the connection before answering")
            h.receive_data(data)  # b"" marks the end of the stream
            continue
        if isinstance(event, h11.Response):
            head = event
        elif isinstance(event, h11.Data):
            content += event.data
            if len(content) > MAX_BODY_BYTES:
                raise HttpError(f"answer larger than {MAX_BODY_BYTES} bytes")
        elif isinstance(event, h11.EndOfMessage):
            break
        elif isinstance(event, h11.ConnectionClosed):
            raise HttpError("the server closed the connection before answering")
    assert head is not None  # h11 yields a Response before any Data or EndOfMessage
    if h.our_state is h11.DONE and h.their_state is h11.DONE:
        h.start_next_cycle()  # keep-alive: IDLE/IDLE, the next request may reuse it
    return Response(head.status_code, head.reason.decode("latin-1"), bytes(content))


def _hand_orphan(task: asyncio.Task[Response],
                 on_orphan: Callable[[Response], None] | None) -> None:
    """The answer of a cancelled caller: to ``on_orphan``, or logged as lost."""
    if task.cancelled():
        return
    exc = task.exception()  # retrieved here, so asyncio never reports it as unhandled
    if exc is not None:
        log.info("a cancelled request failed afterwards: %s", exc)
    elif on_orphan is not None:
        on_orphan(task.result())


def _stale(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
    """An idle connection has nothing to read: readable means the server closed it (the
    event loop may not have seen the end yet), as httpcore checks before reusing one."""
    if reader.at_eof() or writer.is_closing():
        return True
    sock = writer.get_extra_info("socket")
    if sock is None:
        return False
    readable, _, _ = select.select([sock.fileno()], [], [], 0)
    return bool(readable)


class PrivateLoop:
    """An event loop on its own daemon thread, so blocking code (tools, tests, the CLI) runs
    the same asyncio clients as the messenger, even when called from inside another loop.
    Interrupting :meth:`run` (Ctrl-C) cancels the coroutine on the loop like any caller."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="kme-http",
                                        daemon=True)
        self._thread.start()
        # A forgotten close() must not leave a thread behind for the life of the process.
        self._stop = weakref.finalize(self, _stop_loop, self._loop, self._thread)

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._loop.is_closed():
            coro.close()
            raise RuntimeError("this PrivateLoop is closed")
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result()
        except BaseException:
            future.cancel()
            raise

    def close(self) -> None:
        """Stop the loop and its thread (idempotent)."""
        self._stop()


def _stop_loop(loop: asyncio.AbstractEventLoop, thread: threading.Thread) -> None:
    if loop.is_closed():
        return
    loop.call_soon_threadsafe(loop.stop)
    if thread is threading.current_thread():
        return  # collected on its own thread: the loop stops; it cannot close while running
    thread.join()
    loop.close()
