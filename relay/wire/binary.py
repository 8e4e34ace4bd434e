"""Binary frames: the header every bulk frame (file chunk, call media) carries.

Layout, big-endian, 32-byte header then payload::

    offset size field
    0      1    version    (1)
    1      1    kind       (1 = file chunk, 2 = media)
    2      2    flags      (bit 0 FINAL: last frame of the stream; others must be 0)
    4      16   stream id  (random, announced by a ``stream_open`` control frame)
    20     8    sequence   (uint64, per stream, chosen by the sender)
    28     4    length     (uint32, must equal the payload size)
    32     ...  payload    (sealed by the client; at most MAX_BINARY_PAYLOAD bytes)

The relay reads only the header: it checks it, routes by stream id and forwards
the frame unchanged. Media streams are live (not queued). File streams are
durable: a frame for an endpoint that is offline is spooled at the relay and sent
when it logs in, until it acks the seq (``stream_ack``); a file stream's seqs must
be below 2^53 (acks carry them as JSON integers). Resuming what was never spooled
(frames forwarded live to a connection that then dropped) is the file-transfer
protocol's job, using the sequence numbers.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from .errors import WireError

BINARY_VERSION = 1
KIND_FILE_CHUNK = 1
KIND_MEDIA = 2
KINDS = {KIND_FILE_CHUNK: "file", KIND_MEDIA: "media"}
FLAG_FINAL = 0x0001
KNOWN_FLAGS = FLAG_FINAL
MAX_BINARY_PAYLOAD = 256 * 1024

_HEADER = struct.Struct(">BBH16sQI")
HEADER_BYTES = _HEADER.size  # 32


@dataclass(frozen=True)
class BinaryFrame:
    kind: int
    flags: int
    stream: bytes
    seq: int
    payload: bytes | memoryview  # parse_binary: a view into the received frame, not a copy

    @property
    def final(self) -> bool:
        return bool(self.flags & FLAG_FINAL)

    @property
    def stream_hex(self) -> str:
        return self.stream.hex()

    def encode(self) -> bytes:
        """The binary frame to put on the websocket."""
        return encode_binary(self.kind, self.stream, self.seq, self.payload, flags=self.flags)


def encode_binary(kind: int, stream: bytes, seq: int, payload: bytes | bytearray | memoryview,
                  *, flags: int = 0) -> bytes:
    """Build a binary frame, refusing values the relay would refuse."""
    _check_fields(kind, stream, seq, len(payload), flags)
    return _HEADER.pack(BINARY_VERSION, kind, flags, stream, seq, len(payload)) + payload


def encode_binary_into(frame: bytearray | memoryview, kind: int, stream: bytes, seq: int,
                       *, flags: int = 0) -> None:
    """Fill in the header of ``frame``, whose first HEADER_BYTES were left free for it.

    The bulk path builds each frame in one buffer (see the transfer core's ``headroom``), so
    a 256 KiB chunk is not copied again just to put 32 bytes in front of it.
    """
    payload_len = len(frame) - HEADER_BYTES
    if payload_len < 0:
        raise WireError("bad_binary_frame", f"a binary frame needs {HEADER_BYTES} header bytes")
    _check_fields(kind, stream, seq, payload_len, flags)
    _HEADER.pack_into(frame, 0, BINARY_VERSION, kind, flags, stream, seq, payload_len)


def _check_fields(kind: int, stream: bytes, seq: int, payload_len: int, flags: int) -> None:
    if kind not in KINDS:
        raise WireError("bad_binary_frame", f"unknown binary kind {kind}")
    if len(stream) != 16:
        raise WireError("bad_binary_frame", "stream id must be 16 bytes")
    if flags & ~KNOWN_FLAGS:
        raise WireError("bad_binary_frame", f"unknown flags {flags:#x}")
    if not 0 <= seq < 2**64:
        raise WireError("bad_binary_frame", "sequence must fit in 64 bits")
    if payload_len > MAX_BINARY_PAYLOAD:
        raise WireError("too_large", f"binary payload over {MAX_BINARY_PAYLOAD} bytes")


def parse_binary_header(data: bytes) -> tuple[int, int, bytes, int, int]:
    """Check a binary frame's header: return ``(kind, flags, stream, seq, payload_len)``."""
    if len(data) < HEADER_BYTES:
        raise WireError(
            "bad_binary_frame", f"binary frame shorter than its {HEADER_BYTES}-byte header"
        )
    version, kind, flags, stream, seq, length = _HEADER.unpack_from(data)
    if version != BINARY_VERSION:
        raise WireError("bad_binary_frame", f"unsupported binary frame version {version}")
    if kind not in KINDS:
        raise WireError("bad_binary_frame", f"unknown binary kind {kind}")
    if flags & ~KNOWN_FLAGS:
        raise WireError("bad_binary_frame", f"unknown flags {flags:#x}")
    if length != len(data) - HEADER_BYTES:
        raise WireError("bad_binary_frame", "binary length field does not match the payload")
    if length > MAX_BINARY_PAYLOAD:
        raise WireError("too_large", f"binary payload over {MAX_BINARY_PAYLOAD} bytes")
    return kind, flags, stream, seq, length


def parse_binary(data: bytes) -> BinaryFrame:
    """Check and split a binary frame; the payload is a view into ``data`` (no copy)."""
    kind, flags, stream, seq, _ = parse_binary_header(data)
    return BinaryFrame(kind, flags, stream, seq, memoryview(data)[HEADER_BYTES:])
