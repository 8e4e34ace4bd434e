"""File chunks as websocket messages without websockets' serialization copies.

``ClientConnection.send(bytes)`` serializes a frame into a ``BytesIO``: the masked payload is
copied in and copied out again by ``getvalue()``. For a 256 KiB chunk that is most of what
sending it costs the client (about 100 µs of 110 µs per chunk, measured; the mask itself is
one fast pass). Here the transfer core leaves ``WS_HEADROOM`` free bytes in front of each
chunk frame; the websocket header goes there and one ``apply_mask`` pass over header and
payload yields the finished frame, written through the connection's own send path (state
check, flow control). The bytes on the wire are what websockets would send.
relay/session.py writes below websockets' API the same way; tests/transfer/test_ws_frames.py
checks the internals used here (websockets is pinned to one major version).

Receiving, websockets copies each payload three times: into its stream buffer, out of it as
the frame's data, and into the message's bytes. For the file chunks a receiver gets (256 KiB
each) that was about 150 ms of event-loop time per 256 MiB, more than its SHA-256. So
``BulkFrameReader`` splits the relay's byte stream at frame boundaries itself: a large,
final, unfragmented binary frame becomes the message's bytes in one join of the received
pieces; every other frame (control, text, fragments, anything unusual or malformed) goes
to websockets byte for byte, which parses, answers and refuses it as before. It starts only
once the handshake is done and websockets' parser stands at a frame boundary, and stops for
good when the connection leaves the OPEN state.
"""

from __future__ import annotations

import secrets
import struct
from collections.abc import Callable

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ProtocolError
from websockets.frames import Frame, Opcode, apply_mask  # apply_mask: the C speedup when built
from websockets.protocol import State
from websockets.streams import StreamReader

WS_HEADROOM = 14  # the longest client frame header: 2 bytes, 8 of length, 4 of mask
_FIN = 0b10000000
_MASKED = 0b10000000
BULK_MIN_BYTES = 16 << 10  # smaller binary messages (envelopes, acks) go through websockets
_LONGEST_SERVER_HEADER = 10  # 2 bytes, 8 of length; a server's frames are not masked


def client_frame_header(length: int, mask: bytes) -> bytes:
    """RFC 6455 header of one final, masked binary frame carrying ``length`` bytes."""
    first = _FIN | Opcode.BINARY
    if length < 126:
        head = struct.pack("!BB", first, _MASKED | length)
    elif length < 65536:
        head = struct.pack("!BBH", first, _MASKED | 126, length)
    else:
        head = struct.pack("!BBQ", first, _MASKED | 127, length)
    return head + mask


def masked_client_frame(buffer: bytearray, start: int, mask: bytes | None = None) -> bytes:
    """The complete client frame for the binary message ``buffer[start:]``, whose
    ``WS_HEADROOM`` bytes before ``start`` are free (they are overwritten).

    The header goes right before the payload, stored XOR the mask stream, so that one
    ``apply_mask`` pass over both gives the header as it is and the payload masked from
    its first byte: one new buffer, no other copy.
    """
    if start < WS_HEADROOM:
        raise ValueError(f"a client frame needs {WS_HEADROOM} free bytes before the message")
    mask = secrets.token_bytes(4) if mask is None else mask
    header = client_frame_header(len(buffer) - start, mask)
    begin = start - len(header)
    shifted = bytes(mask[(j - len(header)) % 4] for j in range(4))  # mask[0] at ``start``
    buffer[begin:start] = bytes(h ^ shifted[k % 4] for k, h in enumerate(header))
    return apply_mask(memoryview(buffer)[begin:], shifted)


class BulkFrameReader:
    """Sans-I/O: split a server's byte stream at websocket frame boundaries; take the bulk
    binary frames, hand everything else on untouched.

    ``feed(data)`` calls, in stream order, ``forward(piece)`` with bytes that belong to
    other frames (whole frames, possibly in several pieces) and ``deliver(payload)`` with
    the payload of each bulk frame: final, binary, no reserved bits, not masked, between
    ``min_size`` and ``max_size`` bytes, and not inside a fragmented message
    (``fragmenting()``: such a frame is a protocol error, websockets' to report). At each
    frame boundary ``allowed()`` is asked first (after the forwarded bytes before it were
    handled); once it says no, every byte from there on is forwarded (``active`` turns
    false).
    """

    def __init__(self, forward: Callable[[bytes], None], deliver: Callable[[bytes], None],
                 allowed: Callable[[], bool], max_size: int | None,
                 min_size: int = BULK_MIN_BYTES,
                 fragmenting: Callable[[], bool] = lambda: False) -> None:
        self._forward = forward
        self._deliver = deliver
        self._allowed = allowed
        self._fragmenting = fragmenting
        self._max_size = max_size
        self._min_size = min_size
        self.active = True
        self._header = b""  # the start of a header split between two reads
        self._forward_left = 0  # bytes of the current forwarded frame still to come
        self._parts: list[memoryview] = []  # the current bulk payload's pieces so far
        self._bulk_left = 0  # bytes of the current bulk payload still to come

    def feed(self, data: bytes) -> None:
        view = memoryview(data)
        pos, end = 0, len(view)
        while pos < end:
            if self._bulk_left:
                take = min(self._bulk_left, end - pos)
                self._parts.append(view[pos:pos + take])
                pos += take
                self._bulk_left -= take
                if not self._bulk_left:
                    payload = b"".join(self._parts)  # the one copy
                    self._parts = []
                    self._deliver(payload)
            elif self._forward_left:
                take = min(self._forward_left, end - pos)
                self._forward_left -= take
                self._forward(bytes(view[pos:pos + take]))
                pos += take
            elif not self.active or not self._allowed():
                self.active = False
                self._forward(self._header + bytes(view[pos:]))
                self._header = b""
                return
            else:
                pos = self._frame_start(view, pos)

    def _frame_start(self, view: memoryview, pos: int) -> int:
        """Read a frame header at a boundary (``_header`` holds any earlier part of it);
        return the position after it in ``view``."""
        known = len(self._header)
        head = self._header + bytes(view[pos:pos + _LONGEST_SERVER_HEADER + 4 - known])
        size = _header_size(head)
        if size is None or len(head) < size:
            self._header = head
            return len(view)
        self._header = b""
        first, second = head[0], head[1]
        length = second & 0x7F
        if length == 126:
            length = int.from_bytes(head[2:4], "big")
        elif length == 127:
            length = int.from_bytes(head[2:10], "big")
        bulk = (first == _FIN | Opcode.BINARY and not second & _MASKED
                and length >= self._min_size
                and (self._max_size is None or length <= self._max_size)
                and not self._fragmenting())
        if bulk:
            self._bulk_left = length
        else:  # websockets reads it (and refuses it if it is wrong)
            self._forward(head[:size])
            self._forward_left = length
        return pos + size - known


def _header_size(head: bytes) -> int | None:
    """Bytes in the frame header that starts ``head`` (None: not enough bytes to tell)."""
    if len(head) < 2:
        return None
    length = head[1] & 0x7F
    size = 2 + (2 if length == 126 else 8 if length == 127 else 0)
    return size + (4 if head[1] & _MASKED else 0)


_AT_EOF_CODE = StreamReader.at_eof.__code__


def parser_at_frame_boundary(connection: ClientConnection) -> bool:
    """True when websockets' parser waits for the first byte of a frame, nothing buffered:
    the byte stream can be split from here on."""
    protocol = connection.protocol
    if (protocol.state is not State.OPEN or protocol.reader.buffer
            or protocol.current_size is not None or protocol.extensions):
        return False
    generator = protocol.parser
    while (inner := getattr(generator, "gi_yieldfrom", None)) is not None:
        generator = inner
    return getattr(generator, "gi_code", None) is _AT_EOF_CODE


class ChunkConnection(ClientConnection):
    """The relay link's websocket connection, with a copy-free way to send file chunks
    and a one-copy way to receive them (see ``BulkFrameReader``)."""

    bulk_reader: BulkFrameReader | None = None  # once websockets' parser is at a boundary

    def data_received(self, data: bytes) -> None:
        reader = self.bulk_reader
        if reader is not None and reader.active:
            reader.feed(data)
            return
        super().data_received(data)
        if reader is None and parser_at_frame_boundary(self):
            self.bulk_reader = BulkFrameReader(
                super().data_received, self._bulk_message, self._bulk_allowed,
                self.protocol.max_message_size,
                fragmenting=lambda: self.protocol.current_size is not None)

    def _bulk_allowed(self) -> bool:
        protocol = self.protocol
        return protocol.state is State.OPEN and protocol.parser_exc is None

    def _bulk_message(self, payload: bytes) -> None:
        """A whole binary message, as websockets' parser would have handed it on."""
        self.process_event(Frame(Opcode.BINARY, payload))

    async def send_framed(self, buffer: bytearray, start: int) -> None:
        """Send ``buffer[start:]`` as one binary message (see ``masked_client_frame``)."""
        async with self.send_context():
            protocol = self.protocol
            if protocol.extensions:  # none are negotiated (compression=None): be sure
                protocol.send_binary(bytes(memoryview(buffer)[start:]))
                return
            if protocol.expect_continuation_frame:
                raise ProtocolError("expected a continuation frame")
            protocol.writes.append(masked_client_frame(buffer, start))
