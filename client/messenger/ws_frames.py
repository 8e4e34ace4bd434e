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
"""

from __future__ import annotations

import secrets
import struct

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ProtocolError
from websockets.frames import Opcode, apply_mask  # apply_mask: the C speedup when built

WS_HEADROOM = 14  # the longest client frame header: 2 bytes, 8 of length, 4 of mask
_FIN = 0b10000000
_MASKED = 0b10000000


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


class ChunkConnection(ClientConnection):
    """The relay link's websocket connection, with a copy-free way to send file chunks."""

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
