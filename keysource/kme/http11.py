"""A small asyncio HTTP/1.1 client for an SAE talking to its KME: h11 over asyncio streams.

One keep-alive connection, one request at a time, JSON bodies, a deadline per request.
That is all the ETSI key API needs from the messenger's side. httpx does it too, but
importing it also loads its command-line client (click, rich, pygments) and its first
request loads anyio and httpcore: about 60 ms of every messenger start, on the clock of
``qsecret send-file``. h11 is the sans-I/O HTTP/1.1 state machine httpx itself builds on.

A connection the KME closed while idle is noticed before reuse and replaced; a request that
fails on the wire is not sent again (``enc_keys`` hands out keys: never twice by accident).
"""

from __future__ import annotations

import asyncio
import json
import select
import ssl
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import h11

READ_BYTES = 64 * 1024
MAX_BODY_BYTES = 16 * 1024 * 1024  # far above any key batch; a runaway answer is refused


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


class AsyncHttpClient:
    """Requests to one origin (``http://`` or ``https://host:port``) over one connection."""

    def __init__(self, base_url: str, *, ssl_context: ssl.SSLContext | None = None,
                 headers: dict[str, str] | None = None, timeout: float = 10.0) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        if parts.scheme == "https" and ssl_context is None:
            raise ValueError("https needs an SSL context")
        self._host = parts.hostname
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._ssl = ssl_context if parts.scheme == "https" else None
        self._prefix = parts.path.rstrip("/")
        authority = parts.netloc.rpartition("@")[2]
        self._headers = [("Host", authority), ("Accept", "application/json"),
                         *(headers or {}).items()]
        self._timeout = timeout
        self._lock = asyncio.Lock()
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self._conn: h11.Connection | None = None

    async def request(self, method: str, path: str, *, json_body: Any = None) -> Response:
        """Send one request and read its whole answer (any status); HttpError if none came."""
        body = b"" if json_body is None else json.dumps(json_body).encode()
        headers = [*self._headers, ("Content-Length", str(len(body)))]
        if json_body is not None:
            headers.append(("Content-Type", "application/json"))
        request = h11.Request(method=method, target=self._prefix + path, headers=headers)
        async with self._lock:
            try:
                async with asyncio.timeout(self._timeout):
                    reused = self._streams is not None
                    try:
                        return await self._exchange(request, body)
                    except (OSError, asyncio.IncompleteReadError, HttpError):
                        if not (reused and method == "GET"):
                            raise
                        # The KME may close an idle connection just as it is reused; a GET
                        # changes nothing, so it gets one more try on a fresh connection.
                        await self._drop()
                        return await self._exchange(request, body)
            except HttpError:
                await self._drop()
                raise
            except TimeoutError:
                await self._drop()
                raise HttpError(f"no answer within {self._timeout:g}s") from None
            except (OSError, ssl.SSLError, asyncio.IncompleteReadError, h11.ProtocolError) as exc:
                await self._drop()
                raise HttpError(f"{type(exc).__name__}: {exc}") from None

    async def _exchange(self, request: h11.Request, body: bytes) -> Response:
        reader, writer, conn = await self._connection()
        writer.write(conn.send(request))
        if body:
            writer.write(conn.send(h11.Data(data=body)))
        writer.write(conn.send(h11.EndOfMessage()))
        await writer.drain()
        head: h11.Response | None = None
        content = bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await reader.read(READ_BYTES)
                if not data and head is None:
                    raise HttpError("the server closed the connection before answering")
                conn.receive_data(data)  # b"" marks the end of the stream
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
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()  # keep-alive: the next request reuses the connection
        else:
            await self._drop()
        return Response(head.status_code, head.reason.decode("latin-1"), bytes(content))

    async def _connection(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter,
                                         h11.Connection]:
        if self._streams is not None and self._conn is not None:
            reader, writer = self._streams
            if not _stale(reader, writer):
                return reader, writer, self._conn
            await self._drop()  # closed by the server while idle: open a fresh one
        reader, writer = await asyncio.open_connection(
            self._host, self._port, ssl=self._ssl,
            server_hostname=self._host if self._ssl is not None else None)
        self._streams, self._conn = (reader, writer), h11.Connection(our_role=h11.CLIENT)
        return reader, writer, self._conn

    async def _drop(self) -> None:
        streams, self._streams, self._conn = self._streams, None, None
        if streams is not None:
            writer = streams[1]
            writer.close()
            try:
                await writer.wait_closed()
            except (OSError, ssl.SSLError):
                pass  # already broken: closing is all that was left to do

    async def aclose(self) -> None:
        async with self._lock:
            await self._drop()


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
