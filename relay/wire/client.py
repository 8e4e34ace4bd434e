"""Sans-I/O client side of one relay connection: feed it frames, send what it returns.

Typical asyncio use (the client team's thin layer)::

    conn = ClientConnection(handle, identity_pk, sign, expected_relay_id=pinned)
    async with websockets.connect(url, compression=None, max_size=MAX_FRAME_BYTES) as ws:
        async for data in ws:
            events = conn.receive(data)          # text or bytes from the relay
            for out in conn.data_to_send():      # auth answer, acks, queued sends
                await ws.send(out)
            for event in events: ...             # AuthOk, Deliver, Stored, Error, ...

Frames the caller asks for before ``auth_ok`` are held and sent right after it.
A ``stored_many`` frame comes back as one :class:`Stored` event per message. A group
envelope (:meth:`ClientConnection.send_group`, one upload for many recipients) is
answered by one :class:`StoredGroup` naming the recipients it could not be queued for.
Sends not yet confirmed by ``stored`` stay in :attr:`unconfirmed`, so after a
reconnect they can be given to the next connection (``resend=``); the relay drops
the duplicates by message ID.

Streams (bulk data as binary frames, :mod:`relay.wire.binary`) are written by the
caller with the frame classes and :func:`relay.wire.binary.encode_binary_into` (as
client/messenger/relay_link.py does); this core only parses what comes back.

Events from :meth:`ClientConnection.receive` are the parsed frames themselves:
``BinaryFrame`` (kind, flags, stream, seq, payload; ``.final``) for every binary
frame, ``StreamOk``, ``StreamIncoming`` (stream, sender, kind), ``StreamClose``,
and ``Error`` whose ``stream`` (hex) names the stream a refusal is about (e.g.
``quota_exceeded``: the recipient's spool is full; the frame was not stored).

A "file" stream is durable at the relay: ``stream_open`` works while the peer is
offline and is idempotent for the same (opener, peer), so re-send it after every
reconnect. Frames for an endpoint that is offline are spooled and sent to it when
it logs in, until it acks them with ``stream_ack``; un-acked ones come again on
its next connection (never twice on one connection). There is no per-frame ack
to the sender: a ``ping`` is answered only once every frame sent before it on the
connection is durable at the relay (spooled) or forwarded to the peer's socket.
``FINAL`` does not close a file stream (``stream_close`` does; the relay also
expires it after its TTL). A "media" stream is live only: both ends online; it
ends with either connection or a ``FINAL`` frame.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable

from .auth import auth_message
from .binary import BinaryFrame, parse_binary
from .errors import QUOTA_CODES, WireError
from .frames import (
    Ack,
    Auth,
    AuthOk,
    Error,
    Frame,
    Hello,
    Ping,
    PrekeyBundle,
    PrekeysFetch,
    PrekeysUpload,
    Send,
    SendGroup,
    Stored,
    StoredGroup,
    StoredMany,
    parse_server_frame,
)

Event = Frame | BinaryFrame


def new_message_id() -> str:
    """A fresh random message ID (16 random bytes, hex)."""
    return os.urandom(16).hex()


class ClientConnection:
    """State machine of one connection: ``connecting`` -> ``ready`` (after ``auth_ok``)."""

    def __init__(
        self,
        handle: str,
        identity_public_key: bytes,
        sign: Callable[[bytes], bytes],
        *,
        expected_relay_id: str | None = None,
        tls_fingerprint: bytes = b"",
        resend: Iterable[Send | SendGroup] = (),
    ) -> None:
        self.handle = handle
        self.identity = identity_public_key
        self._sign = sign
        self.expected_relay_id = expected_relay_id
        self.tls_fingerprint = tls_fingerprint
        self.relay_id: str | None = None
        self.limits: dict[str, int] = {}
        self.state = "connecting"
        self.unconfirmed: dict[str, Send | SendGroup] = {}
        self._outgoing: list[str | bytes] = []
        self._held: list[str | bytes] = []
        for frame in resend:
            self._queue_send(frame)

    # ------------------------------------------------------------ input

    def receive(self, data: str | bytes) -> list[Event]:
        """Feed one websocket message; return the events it carries."""
        if isinstance(data, bytes):
            return [parse_binary(data)]
        frame = parse_server_frame(data)
        if isinstance(frame, Hello):
            self._answer_hello(frame)
        elif isinstance(frame, AuthOk):
            self.state = "ready"
            self._outgoing.extend(self._held)
            self._held.clear()
        elif isinstance(frame, Stored | StoredGroup):
            self.unconfirmed.pop(frame.msg, None)
        elif isinstance(frame, StoredMany):
            # One event per message, so callers handle one kind of confirmation only.
            for msg in frame.msgs:
                self.unconfirmed.pop(msg, None)
            return [Stored(msg, False) for msg in frame.msgs]
        elif isinstance(frame, Error) and frame.msg is not None and (
            frame.code in ("unknown_recipient", "too_large") or frame.code in QUOTA_CODES
        ):
            # Final refusals: resending would fail the same way.
            self.unconfirmed.pop(frame.msg, None)
        return [frame]

    def _answer_hello(self, hello: Hello) -> None:
        if self.expected_relay_id is not None and hello.relay != self.expected_relay_id:
            raise WireError(
                "wrong_relay",
                f"relay says it is {hello.relay!r}, pinned {self.expected_relay_id!r}",
            )
        self.relay_id = hello.relay
        self.limits = hello.limits
        message = auth_message(
            hello.nonce, hello.relay, self.tls_fingerprint, self.handle, self.identity
        )
        auth = Auth(self.handle, self.identity, hello.relay, self._sign(message))
        self._outgoing.append(auth.encode())

    # ------------------------------------------------------------ output

    def data_to_send(self) -> list[str | bytes]:
        """Frames to write to the websocket now, in order."""
        out, self._outgoing = self._outgoing, []
        return out

    def _emit(self, data: str | bytes) -> None:
        (self._outgoing if self.state == "ready" else self._held).append(data)

    def _queue_send(self, frame: Send | SendGroup) -> None:
        self.unconfirmed[frame.msg] = frame
        self._emit(frame.encode())

    def send(self, to: str, body: bytes, *, msg_id: str | None = None,
             req_id: str | None = None) -> str:
        """Queue a sealed envelope for ``to``; return its message ID."""
        frame = Send(msg_id or new_message_id(), to, body, req_id)
        self._queue_send(frame)  # encoded once there; the relay validates what it parses
        return frame.msg

    def send_group(self, to: Iterable[str], body: bytes, *, msg_id: str | None = None,
                   req_id: str | None = None) -> str:
        """Queue one sealed envelope for several recipients (uploaded once); return its
        message ID. Each recipient's copy has the ID ``fanout_msg_id(msg, recipient)``."""
        frame = SendGroup(msg_id or new_message_id(), tuple(to), body, req_id)
        self._queue_send(frame)
        return frame.msg

    def ack(self, seqs: Iterable[int]) -> None:
        """Tell the relay these deliveries are safe here (in chunks of MAX_ACK_SEQS)."""
        pending = list(seqs)
        for start in range(0, len(pending), 1024):
            self._emit(Ack(tuple(pending[start:start + 1024])).encode())

    def upload_prekeys(self, bundle: PrekeyBundle, *, req_id: str | None = None) -> None:
        self._emit(PrekeysUpload(bundle, req_id).encode())

    def fetch_prekeys(self, handle: str, *, req_id: str | None = None) -> None:
        self._emit(PrekeysFetch(handle, req_id).encode())

    def ping(self, *, req_id: str | None = None) -> None:
        self._emit(Ping(req_id).encode())
