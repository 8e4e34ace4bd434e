"""The thin asyncio layer between relay.wire's sans-I/O client and a websocket.

Keeps one authenticated connection alive with exponential backoff, pins the
relay's TLS certificate on first use (``wss://`` with a self-signed relay), and
matches request frames (bundle fetch, prekey upload) to their answers.

Several relays (relays over one shared store, e.g. Redis): ``url`` may list them,
comma-separated, each with its own pin (``pinned_fingerprint`` lists the pins in the same
order; an empty entry is pinned on first use). When a connection fails or ends, the link
moves to the next relay at once; it backs off only after every relay failed in a row. A
relay whose certificate or relay ID is wrong is left out for good (the others go on); when
none is left the link stops with the reasons.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import websockets
from websockets.asyncio.client import ClientConnection as WebSocket
from websockets.asyncio.client import connect

from relay.wire import (
    MAX_FRAME_BYTES,
    AuthOk,
    Bundle,
    ClientConnection,
    Error,
    Event,
    PrekeyBundle,
    PrekeysOk,
    SpoolRewind,
    StreamAck,
    StreamClose,
    StreamOk,
    StreamOpen,
    StreamOpenGroup,
    WireError,
    certificate_fingerprint,
    encode_binary,
    format_fingerprint,
    parse_fingerprint,
)

from .api import Connection, ConnectionEvent
from .ws_frames import WS_HEADROOM, ChunkConnection

log = logging.getLogger(__name__)

BACKOFF_START_S = 0.5
BACKOFF_MAX_S = 10.0
REQUEST_TIMEOUT_S = 10.0
MAX_STREAM_ACK_SEQS = 1024
class RelayError(Exception):
    """The relay refused a request, or could not be reached in time."""


class RelayRefused(RelayError):
    """The relay answered a request with an error frame: ``code`` is its error code
    (e.g. ``too_large``), ``reason`` its message."""

    def __init__(self, code: str, reason: str, what: str = "") -> None:
        super().__init__(f"{what}: {reason} ({code})" if what else reason)
        self.code = code
        self.reason = reason


@dataclass
class RelayCallbacks:
    on_ready: Callable[[AuthOk], Awaitable[None]]  # login work, beside the read loop
    on_event: Callable[[Event], Awaitable[None]]
    on_state: Callable[[ConnectionEvent], None]
    on_pin: Callable[[str], None]  # a relay certificate fingerprint was pinned on first use
    # Called in the read loop at the login, before anything read after it is dispatched
    # (``on_ready`` may start later than that: frames read together are handled at once).
    on_login: Callable[[AuthOk], None] | None = None


def split_relays(value: str) -> list[str]:
    """The relay URLs of a ``relay_url`` setting (one, or several comma-separated)."""
    return [part for part in value.split(",") if part]


class RelayLink:
    """One user's connection to the relay, reconnecting until :meth:`close`."""

    def __init__(
        self,
        url: str,
        handle: str,
        identity_public_key: bytes,
        sign: Callable[[bytes], bytes],
        callbacks: RelayCallbacks,
        *,
        pinned_fingerprint: str = "",
        spawn: Callable[[Coroutine[Any, Any, None], str], asyncio.Task[None] | None] | None = None,
    ) -> None:
        self.urls = split_relays(url)
        if not self.urls:
            raise ValueError("no relay URL")
        self._index = 0  # the relay in use (or tried next)
        self._left_out: dict[int, str] = {}  # relays that cannot be used, and why
        self.handle = handle
        self._identity = identity_public_key
        self._sign = sign
        self._callbacks = callbacks
        pins = pinned_fingerprint.split(",") if pinned_fingerprint else []
        self._pins = (pins + [""] * len(self.urls))[:len(self.urls)]
        self._conn: ClientConnection | None = None
        self._ws: WebSocket | None = None
        self._write_lock = asyncio.Lock()
        self._pending: dict[str, asyncio.Future[Event]] = {}
        self._ready = asyncio.Event()
        self._closed = False
        self._background: set[asyncio.Task[None]] = set()
        self._spawn = spawn  # the owner's task runner (its stop cancels and awaits them)
        self._extra: list[str] = []  # frames built here rather than by ClientConnection
        self.fatal: str | None = None  # set when retrying cannot help (e.g. pin mismatch)

    # -- lifecycle ---------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The relay in use (or tried next)."""
        return self.urls[self._index]

    async def run(self) -> None:
        """Connect, serve, and reconnect until closed or no relay can be used: the next
        relay at once after a failure, with backoff once every relay failed in a row."""
        delay = BACKOFF_START_S
        failed_in_a_row = 0
        while not self._closed:
            self._callbacks.on_state(ConnectionEvent(Connection.CONNECTING, self.url))
            try:
                await self._serve_once()
                delay = BACKOFF_START_S
                failed_in_a_row = 0
                detail = "connection closed"
            except WireError as exc:
                detail = f"relay protocol error: {exc}"
                if exc.code == "wrong_relay":
                    self._left_out[self._index] = detail
            except PinMismatch as exc:
                detail = str(exc)
                self._left_out[self._index] = detail
            except (TimeoutError, OSError, websockets.WebSocketException) as exc:
                detail = f"relay unreachable: {type(exc).__name__}: {exc}"
            finally:
                self._ready.clear()
                self._ws = None
                self._fail_pending(RelayError("connection to the relay was lost"))
            if self._closed:
                break
            usable = [i for i in range(len(self.urls)) if i not in self._left_out]
            if not usable:
                self.fatal = "; ".join(
                    f"{self.urls[i]}: {why}" if len(self.urls) > 1 else why
                    for i, why in sorted(self._left_out.items()))
                self._callbacks.on_state(ConnectionEvent(Connection.OFFLINE, self.fatal))
                return
            failed_in_a_row += 1
            later = [i for i in usable if i > self._index]
            self._index = (later or usable)[0]
            if failed_in_a_row < len(usable):
                log.info("relay failed (%s); trying %s", detail, self.url)
                continue
            failed_in_a_row = 0
            self._callbacks.on_state(ConnectionEvent(Connection.OFFLINE, detail, delay))
            await asyncio.sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX_S)

    async def close(self) -> None:
        self._closed = True
        if self._ws is not None:
            with contextlib.suppress(Exception):
                await self._ws.close()

    async def wait_ready(self, timeout: float) -> None:
        try:
            await asyncio.wait_for(self._ready.wait(), timeout)
        except TimeoutError:
            where = " or ".join(self.urls)
            reason = self.fatal or f"could not reach the relay at {where} within {timeout:.0f}s"
            raise RelayError(reason) from None

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    async def _serve_once(self) -> None:
        tls = self._tls_context()
        async with connect(
            self.url,
            create_connection=ChunkConnection,
            compression=None,
            max_size=MAX_FRAME_BYTES,
            ssl=tls,
            open_timeout=10,
            ping_interval=20,
            ping_timeout=20,
        ) as ws:
            fingerprint = self._check_pin(ws) if tls is not None else b""
            resend = list(self._conn.unconfirmed.values()) if self._conn else []
            conn = ClientConnection(
                self.handle, self._identity, self._sign, tls_fingerprint=fingerprint,
                resend=resend,
            )
            self._conn, self._ws = conn, ws
            async for data in ws:
                events = conn.receive(data)
                await self._flush()
                for event in events:
                    await self._dispatch(event)

    async def _dispatch(self, event: Event) -> None:
        if isinstance(event, AuthOk):
            if self._callbacks.on_login is not None:
                self._callbacks.on_login(event)
            self._callbacks.on_state(ConnectionEvent(Connection.ONLINE, self.url))
            self._ready.set()
            # Login work (prekey upload, outbox resend) awaits answers that only this read
            # loop can deliver, so it runs beside the loop, never inside it.
            if self._spawn is not None:
                self._spawn(self._callbacks.on_ready(event), "relay-login")
                return
            task = asyncio.create_task(self._callbacks.on_ready(event), name="relay-login")
            self._background.add(task)
            task.add_done_callback(self._background.discard)
            return
        request_id = getattr(event, "id", None)
        if request_id and request_id in self._pending:
            self._pending.pop(request_id).set_result(event)
            return
        await self._callbacks.on_event(event)

    # -- TLS pinning -------------------------------------------------------------------

    def _tls_context(self) -> ssl.SSLContext | None:
        if not self.url.startswith("wss://"):
            return None
        context = ssl.create_default_context()
        # Self-signed relays are authenticated by the pinned certificate fingerprint.
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context

    def _check_pin(self, ws: WebSocket) -> bytes:
        ssl_object = ws.transport.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object else None
        if not der:
            raise PinMismatch("the relay presented no TLS certificate")
        fingerprint = certificate_fingerprint(der)
        pinned = self._pins[self._index]
        if pinned:
            if fingerprint != parse_fingerprint(pinned):
                raise PinMismatch(
                    f"the TLS certificate of the relay at {self.url} does not match the pinned "
                    f"fingerprint (got {format_fingerprint(fingerprint)}): refusing to connect. "
                    "If the relay really changed its certificate, update relay_fingerprint in "
                    "config.toml."
                )
        else:
            self._pins[self._index] = format_fingerprint(fingerprint)
            self._callbacks.on_pin(",".join(self._pins))
        return fingerprint

    # -- output ------------------------------------------------------------------------

    async def _flush(self) -> None:
        conn, ws = self._conn, self._ws
        if conn is None or ws is None:
            return
        async with self._write_lock:
            for data in conn.data_to_send():
                await ws.send(data)
            extra, self._extra = self._extra, []
            for data in extra:
                await ws.send(data)

    async def send(self, to: str, body: bytes, msg_id: str) -> None:
        """Queue an envelope; it goes out now if connected, else after the next login."""
        if self._conn is None:
            raise RelayError("not connected to the relay yet")
        self._conn.send(to, body, msg_id=msg_id)
        with contextlib.suppress(websockets.WebSocketException, OSError):
            await self._flush()

    async def send_group(self, to: tuple[str, ...], body: bytes, msg_id: str) -> None:
        """One envelope for several recipients (a group message), uploaded once."""
        if self._conn is None:
            raise RelayError("not connected to the relay yet")
        self._conn.send_group(to, body, msg_id=msg_id)
        with contextlib.suppress(websockets.WebSocketException, OSError):
            await self._flush()

    async def ack(self, seqs: list[int]) -> None:
        if self._conn is not None and seqs:
            self._conn.ack(seqs)
            with contextlib.suppress(websockets.WebSocketException, OSError):
                await self._flush()

    # -- file streams (binary frames) ---------------------------------------------------

    async def open_stream(self, stream: bytes, to: str, kind: str = "file") -> None:
        """Register ``stream`` to ``to`` at the relay (idempotent; the peer may be offline)."""
        answer = await self._request(
            lambda rid: self._write_later(StreamOpen(stream.hex(), to, kind, rid).encode()))
        if isinstance(answer, Error):
            raise StreamRefused(answer.code, answer.message)
        if not isinstance(answer, StreamOk):
            raise RelayError(f"unexpected answer to stream_open: {type(answer).__name__}")

    async def open_group_stream(self, stream: bytes, to: tuple[str, ...]) -> None:
        """Register a group file stream to ``to`` (idempotent): frames sent on it are
        uploaded once and spooled by the relay for each of them."""
        answer = await self._request(
            lambda rid: self._write_later(StreamOpenGroup(stream.hex(), to, rid).encode()))
        if isinstance(answer, Error):
            raise StreamRefused(answer.code, answer.message)
        if not isinstance(answer, StreamOk):
            raise RelayError(f"unexpected answer to stream_open_group: {type(answer).__name__}")

    async def barrier(self) -> None:
        """Return once every file frame sent before is durable at the relay (its pong)."""
        await self._request(lambda rid: self._conn.ping(req_id=rid))  # type: ignore[union-attr]

    async def spool_rewind(self) -> None:
        """Ask the relay to send this connection its file-frame spool again."""
        await self._write_text(SpoolRewind().encode())

    async def send_binary(self, kind: int, stream: bytes, seq: int, payload: bytes) -> None:
        """Write one binary frame now; raises RelayError when not connected."""
        await self._write_frame(encode_binary(kind, stream, seq, payload))

    async def send_frame(self, frame: bytearray, headroom: int = 0) -> None:
        """Write one encoded binary frame, ``frame[headroom:]`` (see ``encode_binary_into``),
        now. With ``headroom`` >= ``WS_HEADROOM`` free bytes in front, the websocket frame is
        built there without a copy of the chunk (client.messenger.ws_frames)."""
        await self._write_frame(frame, headroom)

    async def _write_frame(self, frame: bytes | bytearray, headroom: int = 0) -> None:
        """Awaiting the websocket's drain here is the flow control: a relay that stops
        reading (its receiver is slow) stops this sender too."""
        ws = self._ws
        if ws is None or not self._ready.is_set():
            raise RelayError("not connected to the relay")
        try:
            async with self._write_lock:
                if (headroom >= WS_HEADROOM and isinstance(ws, ChunkConnection)
                        and isinstance(frame, bytearray)):
                    await ws.send_framed(frame, headroom)
                else:
                    await ws.send(memoryview(frame)[headroom:] if headroom else frame)
        except (websockets.WebSocketException, OSError) as exc:
            raise RelayError(f"connection to the relay lost: {type(exc).__name__}") from None

    async def stream_ack(self, stream: bytes, seqs: list[int]) -> None:
        """Tell the relay these frames of ``stream`` are safe here (it may drop its copies)."""
        for start in range(0, len(seqs), MAX_STREAM_ACK_SEQS):
            await self._write_text(
                StreamAck(stream.hex(), tuple(seqs[start:start + MAX_STREAM_ACK_SEQS])).encode())

    async def close_stream(self, stream: bytes) -> None:
        await self._write_text(StreamClose(stream.hex()).encode())

    async def _write_text(self, text: str) -> None:
        ws = self._ws
        if ws is None or not self._ready.is_set():
            raise RelayError("not connected to the relay")
        try:
            async with self._write_lock:
                await ws.send(text)
        except (websockets.WebSocketException, OSError) as exc:
            raise RelayError(f"connection to the relay lost: {type(exc).__name__}") from None

    def _write_later(self, text: str) -> None:
        self._extra.append(text)

    async def fetch_bundle(self, handle: str) -> Bundle:
        answer = await self._request(lambda rid: self._conn.fetch_prekeys(handle, req_id=rid))  # type: ignore[union-attr]
        if isinstance(answer, Error):
            raise RelayRefused(answer.code, answer.message, f"no bundle for {handle!r}")
        if not isinstance(answer, Bundle):
            raise RelayError(f"unexpected answer to a bundle request: {type(answer).__name__}")
        return answer

    async def upload_prekeys(self, bundle: PrekeyBundle) -> int:
        answer = await self._request(lambda rid: self._conn.upload_prekeys(bundle, req_id=rid))  # type: ignore[union-attr]
        if isinstance(answer, Error):
            raise RelayRefused(answer.code, answer.message, "the relay refused the prekey upload")
        if not isinstance(answer, PrekeysOk):
            raise RelayError(f"unexpected answer to a prekey upload: {type(answer).__name__}")
        return answer.stored

    async def _request(self, emit: Callable[[str], None]) -> Event:
        if self._conn is None or not self._ready.is_set():
            raise RelayError("not connected to the relay")
        request_id = os.urandom(8).hex()
        future: asyncio.Future[Event] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        emit(request_id)
        await self._flush()
        try:
            return await asyncio.wait_for(future, REQUEST_TIMEOUT_S)
        except TimeoutError:
            raise RelayError("the relay did not answer in time") from None
        finally:
            self._pending.pop(request_id, None)

    def _fail_pending(self, error: Exception) -> None:
        for future in self._pending.values():
            if not future.done():
                future.set_exception(error)
        self._pending.clear()


class StreamRefused(RelayRefused):
    """The relay refused a stream operation; ``code`` is its error code."""


class PinMismatch(Exception):
    """The relay's certificate is not the pinned one."""
