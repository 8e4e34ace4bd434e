"""The relay server: asyncio glue between websockets, the connection core and the store.

Each connection has a sans-I/O core (:class:`relay.wire.server.ServerConnection`:
hello, login, limits, strikes, parsing) and a :class:`relay.session.Session` that
writes. One coroutine reads each connection; a writer task per connection sends
what could not be written at once, so a slow reader never blocks anyone else's
handler. The frequent frames (send, ack, ping) are handled right where they are
read while that coroutine is idle (see ``RelayConnection``). The work is done by
small modules: :mod:`relay.auth` (login), :mod:`relay.envelopes` (envelopes),
:mod:`relay.prekeys` (bundles), :mod:`relay.streams` (bulk streams and the spool),
:mod:`relay.routing` (where handles are live) and :mod:`relay.housekeeping` (timers, GC, metrics).
Envelope bodies and payloads are never logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import http
import logging
import os
import secrets
import time
from collections.abc import Awaitable
from pathlib import Path

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from relay import wire
from relay.auth import Verifier, log_in
from relay.config import RelayConfig
from relay.envelopes import Envelopes
from relay.housekeeping import (
    GC_NO_AUTOMATIC_FULL,
    GC_YOUNG_THRESHOLD,
    Housekeeper,
    describe_metrics,
    tune_gc,
)
from relay.limits import RegistrationLimit
from relay.memory import READ_QUEUE_FRAMES, unread_limit
from relay.metrics import COMMIT_BUCKETS, Metrics
from relay.prekeys import Prekeys
from relay.routing import LocalRouter, Router
from relay.session import Cork, RelayConnection, Session
from relay.store import REDIS_SCHEMES, Envelope, Store, make_store
from relay.streams import Streams
from relay.tls import ensure_self_signed, server_context
from relay.wire.server import BinaryRequest, ConnectionRules, LoginAttempt
from relay.wire.server import ServerConnection as ConnectionCore

log = logging.getLogger("qsecret.relay")

# How long a closing handshake may take: in service, a client that starts one has this long
# to answer (then again as long for the TCP close) before the relay drops the connection.
CLOSE_TIMEOUT_S = 5.0
# When the relay stops, each client gets this long instead: a client that is busy, frozen or
# gone must not hold the stop up (websockets waits close_timeout for the close frame and
# again for TCP, so 5 s would be 10 s per stop, the same as a service manager's SIGKILL).
SHUTDOWN_CLOSE_TIMEOUT_S = 1.0


class Relay:
    """A relay bound to a config and a store; ``start()`` serves until ``stop()``."""

    def __init__(self, config: RelayConfig, store: Store | None = None,
                 router: Router[Session] | None = None) -> None:
        self.config = config
        config.data_dir.mkdir(parents=True, exist_ok=True)
        self.relay_id = config.relay_id or _persistent_relay_id(config.data_dir)
        self.store = store or make_store(
            config.store_url, config.data_dir, config.store_limits, sync=config.sync,
            commit_interval=config.commit_interval, writer_nice=config.writer_nice,
            redis_durability=config.redis_durability,
            consumer=self.relay_id)
        self.router: Router[Session] = router or self._default_router(shared=store is None)
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
        self.metrics = Metrics()
        self.verifier = Verifier(config.verify_threads)
        self.registrations = RegistrationLimit(config.registrations_per_address,
                                               config.registration_window,
                                               config.registration_exempt)
        self.envelopes = Envelopes(config, self.store, self.router, self.metrics)
        self.store.observe_commit = self.metrics.histogram(
            "qsecret_relay_store_commit_seconds", "how long each store commit took",
            COMMIT_BUCKETS).observe
        self.streams = Streams(config, self.store, self.router, self.metrics)
        self.prekeys = Prekeys(config, self.store, self.router, self.metrics, self.verifier)
        self.housekeeper = Housekeeper(config, self.store, self.sessions, self.envelopes,
                                       self.streams, self.metrics, self._close_later)
        self.server: Server | None = None
        self.metrics_server: Server | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self.frames_in = 0
        self.frames_inline = 0  # of frames_in: handled where they were read
        self.frames_out_closed = 0  # frames sent by connections that have gone
        describe_metrics(self.metrics, sessions=self.sessions, router=self.router,
                         store=self.store, streams=self.streams,
                         frames_in=lambda: self.frames_in,
                         frames_inline=lambda: self.frames_inline,
                         early_flushes=lambda: self.cork.early_flushes,
                         frames_out=lambda: self.frames_out_closed
                         + sum(s.sent for s in self.sessions))
        self.rules = ConnectionRules(config.rate, config.burst, config.stream_rate,
                                     config.stream_burst, config.abuse_limit,
                                     config.abuse_window, config.auth_timeout,
                                     config.idle_timeout)
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
            # Fair quotas: what one sender may hold of a recipient's queue and spool.
            "queue_share": config.store_limits.share_messages,
            "spool_share": config.store_limits.share_of(config.spool_quota_bytes),
        }

    def _default_router(self, *, shared: bool) -> Router[Session]:
        """Relays sharing a Redis store wake each other through its pub/sub; else local."""
        if shared and (self.config.store_url or "").startswith(REDIS_SCHEMES):
            from relay.routing_redis import RedisRouter

            return RedisRouter(self.store, self._woken)  # type: ignore[arg-type]
        return LocalRouter()

    def _woken(self, session: Session, kind: str, envelope: Envelope | None) -> None:
        """Another relay queued something for ``session``'s handle: an envelope ('e':
        delivered live as a local send would be, or its writer reads the queue) or a file
        frame ('s': its spool is drained)."""
        if kind == "s":
            self.streams.spooled_elsewhere(session)
        elif envelope is not None and session.handle is not None and not session.closing:
            self.envelopes.push(session, envelope)
        else:
            _read_queue_again(session)

    # ------------------------------------------------------------ lifecycle

    @property
    def scheme(self) -> str:
        return "wss" if self.ssl_context else "ws"

    async def start(self) -> None:
        await self.store.open()
        await self.router.start()
        await self.streams.load()
        self.server = await serve(
            self._handler,
            self.config.host,
            self.config.port,
            process_request=self._process_request,
            compression=None,
            max_size=wire.MAX_FRAME_BYTES,
            max_queue=READ_QUEUE_FRAMES,
            ping_interval=self.config.ping_interval,
            ping_timeout=self.config.ping_timeout,
            close_timeout=CLOSE_TIMEOUT_S,
            ssl=self.ssl_context,
            server_header=None,
            create_connection=RelayConnection,
        )
        if self.config.metrics_host is not None:
            self.metrics_server = await serve(
                _never_a_websocket, self.config.metrics_host, self.config.metrics_port,
                process_request=self._process_metrics_request, compression=None,
                server_header=None, max_size=1024)
        self._sweeper = asyncio.create_task(self.housekeeper.run())

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.sockets[0].getsockname()[1]

    @property
    def metrics_port(self) -> int | None:
        """The metrics listener's port (None without one)."""
        if self.metrics_server is None:
            return None
        return int(self.metrics_server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self.metrics_server is not None:
            self.metrics_server.close()
            await self.metrics_server.wait_closed()
        if self.server is not None:
            for connection in self.server.connections:
                connection.close_timeout = SHUTDOWN_CLOSE_TIMEOUT_S
            self.server.close(close_connections=True)
            await self.server.wait_closed()
        await self.router.stop()
        await self.store.close()
        self.verifier.shutdown()

    # ------------------------------------------------------------ HTTP side

    def _process_request(self, connection: ServerConnection,
                         request: Request) -> Response | Awaitable[Response] | None:
        path = request.path.split("?", 1)[0]
        if path == "/healthz":
            return self._healthz(connection, detail=False)
        if path == "/metrics":
            if self.config.metrics_token is None:  # only with a token on the public port
                return connection.respond(http.HTTPStatus.NOT_FOUND, METRICS_NOT_HERE)
            return self._metrics(connection, request)
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

    def _process_metrics_request(self, connection: ServerConnection,
                                 request: Request) -> Response | Awaitable[Response]:
        """The metrics listener: /metrics and /healthz, never a websocket."""
        path = request.path.split("?", 1)[0]
        if path == "/healthz":
            return self._healthz(connection, detail=True)
        if path == "/metrics":
            return self._metrics(connection, request)
        return connection.respond(http.HTTPStatus.NOT_FOUND, "not found\n")

    async def _healthz(self, connection: ServerConnection, *, detail: bool) -> Response:
        """"ok" once the store answers (a networked one is pinged); 503 when it does not.
        The public port says only "ok"; the metrics listener adds what was checked."""
        try:
            checked = await asyncio.wait_for(self.store.health(), 5.0)
        except Exception as exc:
            log.warning("healthz: store unreachable: %s", exc)
            text = f"store unreachable: {exc}\n" if detail else "store unreachable\n"
            return connection.respond(http.HTTPStatus.SERVICE_UNAVAILABLE, text)
        if detail and checked is not None:
            return connection.respond(http.HTTPStatus.OK, f"ok\n{checked}\n")
        return connection.respond(http.HTTPStatus.OK, "ok\n")

    def _metrics(self, connection: ServerConnection, request: Request) -> Response:
        token = self.config.metrics_token
        if token is not None and not bearer_matches(request.headers.get("Authorization"), token):
            response = connection.respond(http.HTTPStatus.UNAUTHORIZED,
                                          "/metrics needs the relay's metrics bearer token\n")
            response.headers["WWW-Authenticate"] = 'Bearer realm="qsecret relay metrics"'
            return response
        response = connection.respond(http.HTTPStatus.OK, self.metrics.render())
        del response.headers["Content-Type"]  # Headers is a multidict: replace, not add
        response.headers["Content-Type"] = "text/plain; version=0.0.4; charset=utf-8"
        return response

    # ------------------------------------------------------------ per connection

    async def _handler(self, ws: ServerConnection) -> None:
        core = ConnectionCore(self.relay_id, self.limits, self.rules, time.monotonic(),
                              tls_fingerprint=self.tls_fingerprint)
        session = Session(ws, core, self.cork, self.metrics,  # posts the hello
                          unread_limit(self.config))
        self.sessions.add(session)
        self.metrics.count("qsecret_relay_connections_total")
        session.writer = asyncio.create_task(self._writer(session))
        close_code: int | None = None
        if isinstance(ws, RelayConnection):
            ws.inline = functools.partial(self._inline, session)
        try:
            session.busy = False
            async for data in ws:
                session.busy = True
                self.frames_in += 1
                binary = not isinstance(data, str)
                delay = core.admit(binary, time.monotonic())
                if delay > 0:
                    # Over the rate: read no faster (TCP pushes back on the sender).
                    self.metrics.count("qsecret_relay_throttled_total")
                    await asyncio.sleep(delay)
                if binary:
                    close_code = await self._on_binary(session, data)  # type: ignore[arg-type]
                else:
                    close_code = await self._on_text(session, data)  # type: ignore[arg-type]
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
                await asyncio.wait_for(_outbox_empty(session), 1.0)
            self.metrics.count("qsecret_relay_closed_total", "code", str(close_code))
            reason = session.core.close_reason or (
                "policy violation" if close_code == wire.CLOSE_POLICY else "going away")
            await session.ws.close(close_code, reason)
        session.closing = True
        self.sessions.discard(session)
        self.frames_out_closed += session.sent
        newest = None
        if session.handle is not None:
            newest = self.router.leave(session.handle, session)
        self.streams.session_gone(session, newest)
        if session.writer is not None:
            session.writer.cancel()
        session.room.set()
        session.send_room.set()
        session.release()
        log.debug("connection closed handle=%s code=%s", session.handle, close_code)

    async def _writer(self, session: Session) -> None:
        ws = session.ws
        try:
            while True:
                await session.wake.wait()
                session.wake.clear()
                if session.redeliver_due and session.handle is not None:
                    await self.envelopes.resend_due(session)
                if session.need_drain and session.handle is not None and not session.draining:
                    await self.envelopes.drain(session)
                while session.outbox:
                    await ws.send(session.take_outbox())
                    session.sent += 1
                session.room.set()
        except ConnectionClosed:
            pass
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("writer failed handle=%s", session.handle)

    def _close_later(self, session: Session, code: int, reason: str) -> None:
        if session.closing:
            return
        session.closing = True
        self.metrics.count("qsecret_relay_closed_total", "code", str(code))
        asyncio.ensure_future(session.ws.close(code, reason))

    # ------------------------------------------------------------ frames

    def _inline(self, session: Session, text: str) -> bool:
        """Handle a send, ack or ping where it was read; False: let the handler have it.

        Only while the handler is idle (so order is kept), the sender is under its
        rate (a token is spent exactly as the handler would) and a send would not
        have to wait for the store. Auth, prekeys, streams, frames that do not parse:
        all go the usual way, unchanged.
        """
        if (session.busy or session.closing or session.handle is None
                or not self.envelopes.can_accept_now(session)):
            return False
        try:
            frame = wire.parse_client_frame(text)
        except wire.WireError:  # refused the usual way, with its error frame
            return False
        if not isinstance(frame, wire.Send | wire.Ack | wire.Ping):
            return False
        if not session.core.try_admit(time.monotonic()):
            return False
        self.frames_in += 1
        self.frames_inline += 1
        try:
            if isinstance(frame, wire.Send):
                self.envelopes.accept_send(session, frame)
            elif isinstance(frame, wire.Ack):
                self.envelopes.on_ack(session, frame)
            else:
                self.streams.on_ping(session, frame)  # waits for this connection's spool
        except Exception:
            log.exception("internal error on %s handle=%s", frame.TYPE, session.handle)
            session.refuse("internal", "the relay could not handle this request",
                           strike=False, req_id=getattr(frame, "id", None))
        return True

    async def _on_text(self, session: Session, text: str) -> int | None:
        event = session.core.receive_text(text)
        session.post_core()
        if event is None:
            return session.core.close_code
        frame = event.frame
        try:
            if isinstance(event, LoginAttempt):
                close = await log_in(session, event, verifier=self.verifier, store=self.store,
                                     router=self.router, metrics=self.metrics,
                                     max_sessions=self.config.max_sessions_per_handle,
                                     registrations=self.registrations)
                if session.handle is not None:
                    self.streams.logged_in(session)
                return close
            if isinstance(frame, wire.Send):
                await self.envelopes.on_send(session, frame)
            elif isinstance(frame, wire.SendGroup):
                # One frame, one envelope per recipient: it costs the sender as many rate
                # tokens as the sends it replaces (reading pauses, nothing is dropped).
                pause = session.core.charge(len(frame.to) - 1, time.monotonic())
                if pause > 0:
                    await asyncio.sleep(pause)
                await self.envelopes.on_send_group(session, frame)
            elif isinstance(frame, wire.Ack):
                self.envelopes.on_ack(session, frame)
            elif isinstance(frame, wire.PrekeysUpload):
                return await self.prekeys.on_upload(session, frame)
            elif isinstance(frame, wire.PrekeysFetch):
                await self.prekeys.on_fetch(session, frame)
            elif isinstance(frame, wire.StreamOpen):
                return await self.streams.on_open(session, frame)
            elif isinstance(frame, wire.SpoolRewind):
                self.streams.on_rewind(session)
            elif isinstance(frame, wire.StreamOpenGroup):
                return await self.streams.on_open_group(session, frame)
            elif isinstance(frame, wire.StreamClose):
                return await self.streams.on_close(session, frame)
            elif isinstance(frame, wire.StreamAck):
                return await self.streams.on_ack(session, frame)
            elif isinstance(frame, wire.Ping):
                self.streams.on_ping(session, frame)
        except Exception:
            # Never let one request take the relay down; say so without its contents.
            log.exception("internal error on %s handle=%s", frame.TYPE, session.handle)
            return session.refuse("internal", "the relay could not handle this request",
                                  strike=False, req_id=getattr(frame, "id", None))
        return None

    async def _on_binary(self, session: Session, data: bytes) -> int | None:
        request: BinaryRequest | None = session.core.receive_binary(data)
        session.post_core()
        if request is None:
            return session.core.close_code
        return await self.streams.on_binary(session, request)


METRICS_NOT_HERE = ("not found: /metrics is served on this port only with --metrics-token "
                    "(see --metrics-listen in 'qsecret relay --help')\n")


async def _never_a_websocket(ws: ServerConnection) -> None:
    """The metrics listener answers every request in process_request; no upgrade is made."""
    await ws.close()


def bearer_matches(header: str | None, token: str) -> bool:
    """Whether an Authorization header carries ``token`` (compared in constant time)."""
    scheme, _, value = (header or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(),
                                                              token.encode())


async def _outbox_empty(session: Session) -> None:
    while session.outbox:
        session.room.clear()
        await session.room.wait()


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


def _read_queue_again(session: Session) -> None:
    """Another relay queued something for ``session``'s handle: its writer reads the queue."""
    if session.handle is not None and not session.closing:
        session.need_drain = True
        session.wake.set()


__all__ = ["GC_NO_AUTOMATIC_FULL", "GC_YOUNG_THRESHOLD", "Relay", "RelayConfig", "Session",
           "tune_gc"]
