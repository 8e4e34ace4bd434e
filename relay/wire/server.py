"""Sans-I/O server side of one relay connection: the twin of :mod:`relay.wire.client`.

It owns what the relay's rules say about one connection, and nothing that does
I/O: the ``hello`` and its nonce, the login challenge, the frame-rate buckets, the
strikes that close an abusive connection, the authentication and idle timeouts,
and the parse of every frame into an event. The relay's asyncio shell feeds it
what the socket read and writes what :meth:`ServerConnection.data_to_send`
returns; signature checks and the store are the shell's business (they wait), so
a login is two steps: :class:`LoginAttempt` out, :meth:`ServerConnection.login_ok`
or :meth:`ServerConnection.login_failed` back in.

Events from :meth:`ServerConnection.receive_text` / :meth:`receive_binary`:

* :class:`LoginAttempt` - an ``auth`` frame and the exact bytes its signature must cover;
* :class:`Request` - any other control frame from a logged-in client;
* :class:`BinaryRequest` - a binary frame from a logged-in client, its header parsed;
* ``None`` - refused here (an error frame is queued; :attr:`close_code` may now be set).
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass

from relay.limits import Strikes, TokenBucket

from .auth import auth_message
from .binary import parse_binary_header
from .errors import CLOSE_GOING_AWAY, CLOSE_POLICY, CLOSE_TRY_AGAIN, WireError
from .frames import (
    NONCE_BYTES,
    SUPPORTED_VERSIONS,
    Auth,
    AuthOk,
    Error,
    Frame,
    Hello,
    parse_client_frame,
)

MAX_AUTH_FAILURES = 3
LOGIN_FAILURES = frozenset({"auth_failed", "wrong_relay", "handle_taken"})
MAX_ERROR_MESSAGE_CHARS = 512


@dataclass(frozen=True)
class ConnectionRules:
    """The per-connection limits of a relay (from its config; announced in ``hello``)."""

    rate: float = 500.0
    burst: float = 1000.0
    stream_rate: float = 4000.0
    stream_burst: float = 8000.0
    abuse_limit: int = 16
    abuse_window: float = 60.0
    auth_timeout: float = 10.0
    idle_timeout: float = 1800.0


@dataclass(frozen=True)
class LoginAttempt:
    """Verify ``signature`` by ``frame.identity`` over ``message``, then bind the handle."""

    frame: Auth
    message: bytes


@dataclass(frozen=True)
class Request:
    frame: Frame


@dataclass(frozen=True)
class BinaryRequest:
    kind: int
    flags: int
    stream: bytes
    seq: int
    data: bytes


Event = LoginAttempt | Request | BinaryRequest


class ServerConnection:
    """State machine of one connection at the relay: ``unauthenticated`` -> ``ready``."""

    def __init__(self, relay_id: str, limits: Mapping[str, int], rules: ConnectionRules,
                 now: float, *, tls_fingerprint: bytes = b"") -> None:
        self.relay_id = relay_id
        self.limits = dict(limits)
        self.rules = rules
        self.tls_fingerprint = tls_fingerprint
        self.handle: str | None = None
        self.identity: bytes | None = None
        self.opened = now
        self.last_active = now
        self.bucket = TokenBucket(rules.rate, rules.burst, now)  # text frames
        self.stream_bucket = TokenBucket(rules.stream_rate, rules.stream_burst, now)  # binary
        self.strikes = Strikes(rules.abuse_limit, rules.abuse_window)
        self.auth_failures = 0
        self.login_pending = False
        self.close_code: int | None = None
        self.close_reason = ""
        self.nonce = b""
        self._outgoing: list[str] = []
        self._refusals: list[str] = []
        self._send_hello()

    # ------------------------------------------------------------ output

    def data_to_send(self) -> list[str]:
        """Frames to write now, in order."""
        out, self._outgoing = self._outgoing, []
        return out

    def take_refusals(self) -> list[str]:
        """Error codes sent since the last call (the shell counts them for /metrics)."""
        out, self._refusals = self._refusals, []
        return out

    def _send_hello(self) -> None:
        # A fresh nonce for every hello: an answer to an earlier one can never match.
        self.nonce = secrets.token_bytes(NONCE_BYTES)
        self._outgoing.append(Hello(self.relay_id, self.nonce, SUPPORTED_VERSIONS,
                                    self.limits).encode())

    def refuse(self, code: str, message: str, *, strike: bool = True,
               req_id: str | None = None, msg: str | None = None,
               stream: str | None = None, now: float | None = None) -> int | None:
        """Queue an error frame; return the close code when the strikes say abuse."""
        self._refusals.append(code)
        self._outgoing.append(
            Error(code, message[:MAX_ERROR_MESSAGE_CHARS], req_id, msg, stream).encode())
        if strike and self.strikes.add(now) and self.close_code is None:
            self._close(CLOSE_POLICY, "policy violation")
        return self.close_code

    def _close(self, code: int, reason: str) -> None:
        self.close_code, self.close_reason = code, reason

    # ------------------------------------------------------------ input

    def admit(self, binary: bool, now: float) -> float:
        """Spend a rate token for one frame; return how long the shell should pause reading
        (over the rate: read no faster, TCP pushes back on the sender; nothing is dropped)."""
        self.last_active = now
        return (self.stream_bucket if binary else self.bucket).delay(now)

    def charge(self, count: int, now: float) -> float:
        """Spend ``count`` more text-frame tokens for one frame that does the work of
        ``count + 1`` (a ``send_group`` queues one envelope per recipient); return how long
        the shell should pause reading."""
        return self.bucket.delay(now, count) if count > 0 else 0.0

    def try_admit(self, now: float) -> bool:
        """Spend a text-frame token only if one is there (the shell's fast path)."""
        if not self.bucket.take(now):
            return False
        self.last_active = now
        return True

    def receive_text(self, text: str) -> Event | None:
        """Parse one text frame; refusals are queued here and return None."""
        try:
            frame = parse_client_frame(text)
        except WireError as exc:
            self.refuse(exc.code, exc.message, req_id=exc.req_id)
            return None
        return self.receive_frame(frame)

    def receive_frame(self, frame: Frame) -> Event | None:
        """An already parsed frame (the shell's fast path parses before it decides)."""
        if isinstance(frame, Auth):
            return self._login(frame)
        if self.handle is None:
            self.refuse("not_authenticated", f"authenticate before sending {frame.TYPE!r}")
            return None
        return Request(frame)

    def receive_binary(self, data: bytes) -> BinaryRequest | None:
        if self.handle is None:
            self.refuse("not_authenticated", "authenticate before binary frames")
            return None
        try:
            kind, flags, stream, seq, _ = parse_binary_header(data)
        except WireError as exc:
            self.refuse(exc.code, exc.message)
            return None
        return BinaryRequest(kind, flags, stream, seq, data)

    # ------------------------------------------------------------ login

    def _login(self, frame: Auth) -> LoginAttempt | None:
        if self.handle is not None or self.login_pending:
            self.refuse("already_authenticated", "this connection is logged in")
            return None
        if frame.relay != self.relay_id:
            self.login_failed("wrong_relay", f"this relay is {self.relay_id!r}, not "
                                             f"{frame.relay!r}")
            return None
        message = auth_message(self.nonce, self.relay_id, self.tls_fingerprint, frame.handle,
                               frame.identity)
        # The nonce is spent whatever the outcome: a replayed answer can never match again.
        self.nonce = b""
        self.login_pending = True
        return LoginAttempt(frame, message)

    def login_failed(self, code: str, message: str) -> int | None:
        """The signature did not verify or the handle is someone else's: say so, and
        offer a fresh nonce unless this was the last allowed try."""
        self.login_pending = False
        self.auth_failures += 1
        self.refuse(code, message)
        if self.auth_failures >= MAX_AUTH_FAILURES:
            self._close(CLOSE_POLICY, "policy violation")
        elif self.close_code is None:
            self._send_hello()
        return self.close_code

    def login_over_cap(self, handle: str, limit: int) -> int:
        """A valid login of a handle that has ``limit`` connections here already: refuse
        it (no strike: the owner's own devices) and close with 1013, try again later."""
        self.login_pending = False
        self.refuse("too_many_sessions",
                    f"{handle!r} has {limit} connections to this relay already; close one",
                    strike=False)
        self._close(CLOSE_TRY_AGAIN, "too many sessions")
        return CLOSE_TRY_AGAIN

    def login_ok(self, frame: Auth, *, new: bool, queued: int, prekeys: int) -> None:
        """The shell verified the signature and bound the handle: the connection is ready."""
        self.login_pending = False
        self.handle, self.identity = frame.handle, frame.identity
        self._outgoing.append(AuthOk(frame.handle, new, queued, prekeys).encode())

    # ------------------------------------------------------------ time

    def check_timeouts(self, now: float) -> tuple[int, str] | None:
        """(close code, reason) when this connection has outstayed a timeout."""
        if self.handle is None:
            if now - self.opened > self.rules.auth_timeout:
                return CLOSE_POLICY, "authentication timeout"
            return None
        if now - self.last_active > self.rules.idle_timeout:
            return CLOSE_GOING_AWAY, "idle timeout"
        return None


__all__ = [
    "LOGIN_FAILURES",
    "MAX_AUTH_FAILURES",
    "BinaryRequest",
    "ConnectionRules",
    "Event",
    "LoginAttempt",
    "Request",
    "ServerConnection",
]
