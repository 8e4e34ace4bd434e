"""STREAM sealing of file chunks and the self-contained binary chunk frame.

Online authenticated encryption after Hoang, Reyhanitabar, Rogaway and Vizár (CRYPTO 2015),
as in age and Tink: each file is split into chunks, chunk ``i`` is sealed with AES-256-GCM
under the file's own key with the nonce

    nonce = P (7 bytes, per file) || u32 big-endian chunk index || u8 last-chunk flag

so a chunk can only open at its own position, and only the true final chunk opens with the
flag set: a stream cut short never verifies as complete. The associated data is the frame
header below (magic, version, kind, transfer ID, file index, chunk index, flags), so a chunk
moved to another file or transfer fails authentication even though keys also differ.

Chunk frame (big-endian), 31-byte header then the sealed payload::

    0   4  magic  b"QSXF"
    4   1  version (1)
    5   1  kind (1 = chunk)
    6  16  transfer ID
    22  4  file index
    26  4  chunk index
    30  1  flags (bit 0: last chunk of the file; other bits must be 0)
    31  n  AES-256-GCM ciphertext of the chunk || 16-byte tag

The frame is opaque to the relay: it rides as the payload of one binary (bulk) frame.

The final record: in a version-2 manifest (``Manifest.final_record_bytes``) the plaintext of
a file's last chunk is its last bytes followed by the SHA-256 of the whole file, as the
sender read it while sending. It is sealed like any chunk, with the last-chunk flag, so it is
authenticated and cannot be cut off or moved; its format is named by the manifest's version,
which is bound into every file key (keys.py), so no other version field is needed here.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag

from keysource.pq import aes256gcm

from .errors import MalformedFrame, TamperedChunk
from .keys import FileKey

MAGIC = b"QSXF"
FRAME_VERSION = 1
KIND_CHUNK = 1
KIND_CONTROL = 2
FLAG_LAST = 0x01
TAG_BYTES = 16
_HEADER = struct.Struct(">4sBB16sIIB")
HEADER_BYTES = _HEADER.size  # 31
OVERHEAD_BYTES = HEADER_BYTES + TAG_BYTES  # 47 bytes per chunk


@dataclass(frozen=True)
class ChunkHeader:
    transfer_id: bytes
    file_index: int
    chunk_index: int
    last: bool


def frame_kind(frame: bytes | bytearray | memoryview) -> int:
    """The kind byte of a transfer frame (chunk or control), after checking magic/version."""
    if len(frame) < 6 or bytes(frame[:4]) != MAGIC:
        raise MalformedFrame("not a qsecret transfer frame (bad magic)")
    if frame[4] != FRAME_VERSION:
        raise MalformedFrame(f"transfer frame version {frame[4]} is not supported")
    return frame[5]


def nonce_for(prefix: bytes, chunk_index: int, last: bool) -> bytes:
    return prefix + struct.pack(">IB", chunk_index, FLAG_LAST if last else 0)


class ChunkSealer:
    """Seals the chunks of one file into frames (sender side)."""

    def __init__(self, transfer_id: bytes, file_index: int, key: FileKey) -> None:
        self._transfer_id = transfer_id
        self._file_index = file_index
        self._aead = aes256gcm(key.key)
        self._prefix = key.nonce_prefix

    def seal(self, chunk_index: int, plaintext: bytes | bytearray | memoryview,
             last: bool, headroom: int = 0, reuse: bytearray | None = None) -> bytearray:
        """One complete chunk frame: header || ciphertext || tag (one allocation, or none:
        ``reuse``, a spent frame of the same size, is overwritten).

        ``headroom`` bytes are left free in front of it for the transport's own header, so
        the frame goes out without another copy of the chunk.
        """
        size = headroom + HEADER_BYTES + len(plaintext) + TAG_BYTES
        frame = reuse if reuse is not None and len(reuse) == size else bytearray(size)
        _HEADER.pack_into(frame, headroom, MAGIC, FRAME_VERSION, KIND_CHUNK, self._transfer_id,
                          self._file_index, chunk_index, FLAG_LAST if last else 0)
        view = memoryview(frame)[headroom:]
        self._aead.encrypt_into(nonce_for(self._prefix, chunk_index, last), plaintext,
                                bytes(view[:HEADER_BYTES]), view[HEADER_BYTES:])
        return frame


def parse_chunk_header(frame: bytes | bytearray | memoryview) -> ChunkHeader:
    """Check and decode the header of a chunk frame (nothing is authenticated yet)."""
    if len(frame) < OVERHEAD_BYTES:
        raise MalformedFrame(f"chunk frame of {len(frame)} bytes is shorter than its header")
    magic, version, kind, tid, file_index, chunk_index, flags = _HEADER.unpack_from(frame, 0)
    if magic != MAGIC:
        raise MalformedFrame("not a qsecret transfer frame (bad magic)")
    if version != FRAME_VERSION:
        raise MalformedFrame(f"transfer frame version {version} is not supported")
    if kind != KIND_CHUNK:
        raise MalformedFrame(f"expected a chunk frame, got kind {kind}")
    if flags & ~FLAG_LAST:
        raise MalformedFrame(f"unknown chunk flags 0x{flags:02x}")
    return ChunkHeader(tid, file_index, chunk_index, bool(flags & FLAG_LAST))


class ChunkOpener:
    """Authenticates and decrypts the chunks of one file (receiver side)."""

    def __init__(self, transfer_id: bytes, file_index: int, key: FileKey) -> None:
        self._transfer_id = transfer_id
        self._file_index = file_index
        self._aead = aes256gcm(key.key)
        self._prefix = key.nonce_prefix

    def open_into(self, frame: bytes | bytearray | memoryview, header: ChunkHeader,
                  out: memoryview) -> int:
        """Decrypt ``frame`` into ``out``; return the plaintext length. Raises TamperedChunk."""
        if header.transfer_id != self._transfer_id or header.file_index != self._file_index:
            raise TamperedChunk("chunk frame addressed to another file or transfer")
        view = memoryview(frame)
        length = len(view) - OVERHEAD_BYTES
        if length > len(out):
            raise MalformedFrame(f"chunk of {length} bytes is larger than the chunk size")
        try:
            self._aead.decrypt_into(nonce_for(self._prefix, header.chunk_index, header.last),
                                    view[HEADER_BYTES:], bytes(view[:HEADER_BYTES]),
                                    out[:length])
        except InvalidTag:
            raise TamperedChunk(
                f"chunk {header.chunk_index} of file #{header.file_index} failed authentication "
                "(modified, truncated, or sealed for another position, file or transfer)"
            ) from None
        return length
