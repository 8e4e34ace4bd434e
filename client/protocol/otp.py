"""One-time-pad mode: messages XORed with QKD key bytes, authenticated by a one-time MAC.

Per message the sender takes ``32 + len(plaintext)`` unused pad bytes, in order,
from QKD keys it fetched with enc_keys: the first 32 are the one-time Poly1305
key, the rest are XORed with the plaintext. The header lists which bytes of
which key_IDs were used; the receiver fetches those keys with dec_keys. Both
sides record every consumed byte range, persisted with the session, so no pad
byte is ever used twice (a message reusing bytes is refused as a replay), and
the sender refuses clearly (:class:`OtpExhausted`) when its pad cannot cover a
message. Security is information-theoretic given the QKD keys are.

Wire: ver=1 | type=4 | u32 seq | u8 k | k x (u8 len | key_ID | u16 offset | u16 length)
      | ciphertext (len(plaintext)) | 16-byte Poly1305 tag over session_id || header || ct
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.poly1305 import Poly1305

from .errors import DecryptionFailed, MalformedMessage, OtpExhausted, QkdMissing, ReplayedMessage
from .exporter import message_secret
from .qkd import QkdKeys

VERSION = 1
T_OTP = 4
MAC_KEY_BYTES = 32
TAG_BYTES = 16
MAX_SEGMENTS = 255
_SEG = struct.Struct(">HH")


def _xor(a: bytes, b: bytes) -> bytes:
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).to_bytes(len(a), "big")


def _overlaps(ranges: list[list[int]], start: int, end: int) -> bool:
    return any(s < end and start < e for s, e in ranges)


@dataclass
class _Pool:
    """Keys of one direction and the byte ranges already used from each."""

    keys: dict[str, bytes] = field(default_factory=dict)
    used: dict[str, list[list[int]]] = field(default_factory=dict)
    spent: set[str] = field(default_factory=set)  # fully used keys: bytes erased

    def add(self, qkd: QkdKeys) -> None:
        for key_id, key in zip(qkd.key_ids, qkd.keys, strict=True):
            if key_id in self.spent or key_id in self.keys:
                raise ReplayedMessage(f"QKD key {key_id} was already added to the pad")
            if len(key) > 0xFFFF:
                raise ValueError(f"QKD key {key_id} is larger than a pad key may be")
            self.keys[key_id] = key
            self.used[key_id] = []

    def mark(self, key_id: str, start: int, end: int) -> None:
        ranges = self.used[key_id]
        ranges.append([start, end])
        ranges.sort()
        merged: list[list[int]] = []
        for s, e in ranges:
            if merged and s <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], e)
            else:
                merged.append([s, e])
        self.used[key_id] = merged
        if merged == [[0, len(self.keys[key_id])]]:
            del self.keys[key_id], self.used[key_id]
            self.spent.add(key_id)

    def free(self, key_id: str) -> list[tuple[int, int]]:
        size, cursor, gaps = len(self.keys[key_id]), 0, []
        for s, e in self.used[key_id]:
            if s > cursor:
                gaps.append((cursor, s))
            cursor = max(cursor, e)
        if cursor < size:
            gaps.append((cursor, size))
        return gaps

    def available(self) -> int:
        return sum(e - s for key_id in self.keys for s, e in self.free(key_id))

    def to_dict(self) -> dict:
        return {"keys": self.keys, "used": self.used, "spent": sorted(self.spent)}

    @classmethod
    def from_dict(cls, data: dict) -> _Pool:
        return cls(dict(data["keys"]), {k: [list(r) for r in v] for k, v in data["used"].items()},
                   set(data["spent"]))


class OtpPad:
    """The pad state of one conversation: send pool (enc_keys) and receive pool (dec_keys)."""

    def __init__(self) -> None:
        self.send = _Pool()
        self.recv = _Pool()
        self.send_seq = 0

    def shortfall(self, plaintext_length: int) -> int:
        """Pad bytes missing to send a message of this length (0: it can be sent)."""
        return max(0, MAC_KEY_BYTES + plaintext_length - self.send.available())

    def add_send_keys(self, qkd: QkdKeys) -> None:
        self.send.add(qkd)

    def add_recv_keys(self, qkd: QkdKeys) -> None:
        self.recv.add(qkd)

    def seal(self, plaintext: bytes, session_id: bytes) -> bytes:
        """Encrypt with fresh pad bytes; raises OtpExhausted (changing nothing) if short."""
        return self.seal_exporting(plaintext, session_id)[0]

    def seal_exporting(self, plaintext: bytes, session_id: bytes) -> tuple[bytes, bytes]:
        """:meth:`seal`, also returning the message's exporter secret (from its one-time
        MAC key: client.protocol.exporter)."""
        need = MAC_KEY_BYTES + len(plaintext)
        have = self.send.available()
        if have < need:
            raise OtpExhausted(
                f"one-time pad holds {have} unused bytes but this message needs {need} "
                f"({len(plaintext)} + {MAC_KEY_BYTES} for the MAC key): fetch at least "
                f"{need - have} more bytes of QKD keys (or wait for the QKD link)"
            )
        segments: list[tuple[str, int, int]] = []
        remaining = need
        for key_id in list(self.send.keys):
            for start, end in self.send.free(key_id):
                take = min(end - start, remaining)
                segments.append((key_id, start, take))
                remaining -= take
                if not remaining:
                    break
            if not remaining:
                break
        if len(segments) > MAX_SEGMENTS:
            raise OtpExhausted("the pad is too fragmented for this message (over 255 pieces)")
        pad = b"".join(self.send.keys[k][s : s + n] for k, s, n in segments)
        header = self._header(self.send_seq, segments)
        ciphertext = _xor(plaintext, pad[MAC_KEY_BYTES:])
        tag = Poly1305.generate_tag(pad[:MAC_KEY_BYTES], session_id + header + ciphertext)
        for key_id, start, length in segments:
            self.send.mark(key_id, start, start + length)
        self.send_seq += 1
        return header + ciphertext + tag, message_secret(pad[:MAC_KEY_BYTES])

    @staticmethod
    def _header(seq: int, segments: list[tuple[str, int, int]]) -> bytes:
        out = bytearray([VERSION, T_OTP]) + struct.pack(">I", seq) + bytes([len(segments)])
        for key_id, start, length in segments:
            raw = key_id.encode()
            out += bytes([len(raw)]) + raw + _SEG.pack(start, length)
        return bytes(out)

    @staticmethod
    def parse(wire: bytes) -> tuple[int, list[tuple[str, int, int]], int]:
        """``(seq, segments, header_length)`` of an OTP message."""
        try:
            if wire[0] != VERSION or wire[1] != T_OTP:
                raise MalformedMessage("not a version-1 one-time-pad message")
            (seq,) = struct.unpack_from(">I", wire, 2)
            count, pos = wire[6], 7
            segments = []
            for _ in range(count):
                size = wire[pos]
                key_id = wire[pos + 1 : pos + 1 + size].decode()
                pos += 1 + size
                start, length = _SEG.unpack_from(wire, pos)
                pos += _SEG.size
                if size == 0 or length == 0:
                    raise MalformedMessage("OTP segment with an empty key_ID or length")
                segments.append((key_id, start, length))
        except (IndexError, struct.error, UnicodeDecodeError):
            raise MalformedMessage("one-time-pad message header is truncated") from None
        return seq, segments, pos

    def missing_keys(self, wire: bytes) -> tuple[str, ...]:
        """key_IDs to fetch with dec_keys before :meth:`open` (already spent ones excluded)."""
        _, segments, _ = self.parse(wire)
        out: list[str] = []
        for key_id, _, _ in segments:
            if key_id not in self.recv.keys and key_id not in self.recv.spent and key_id not in out:
                out.append(key_id)
        return tuple(out)

    def open(self, wire: bytes, session_id: bytes) -> bytes:
        """Verify and decrypt; raises (changing nothing) on reuse, tampering or missing keys."""
        return self.open_exporting(wire, session_id)[0]

    def open_exporting(self, wire: bytes, session_id: bytes) -> tuple[bytes, bytes]:
        """:meth:`open`, also returning the message's exporter secret."""
        _, segments, header_end = self.parse(wire)
        total = sum(length for _, _, length in segments)
        body = wire[header_end:]
        if total < MAC_KEY_BYTES or len(body) != total - MAC_KEY_BYTES + TAG_BYTES:
            raise MalformedMessage("one-time-pad message length does not match its pad segments")
        pieces = []
        for key_id, start, length in segments:
            used = self.recv.used.get(key_id, [])
            if key_id in self.recv.spent or _overlaps(used, start, start + length):
                raise ReplayedMessage(f"pad bytes of QKD key {key_id} were already used: a replay")
            key = self.recv.keys.get(key_id)
            if key is None:
                raise QkdMissing(f"QKD key {key_id} not held: fetch it with dec_keys")
            if start + length > len(key):
                raise MalformedMessage(f"OTP segment runs past the end of QKD key {key_id}")
            pieces.append(key[start : start + length])
        pad = b"".join(pieces)
        for i, (key_id, start, length) in enumerate(segments):
            for other_id, other_start, other_length in segments[:i]:
                if other_id == key_id and _overlaps([[other_start, other_start + other_length]],
                                                    start, start + length):
                    raise MalformedMessage("OTP message lists the same pad bytes twice")
        ciphertext, tag = body[:-TAG_BYTES], body[-TAG_BYTES:]
        try:
            Poly1305.verify_tag(pad[:MAC_KEY_BYTES], session_id + wire[:header_end] + ciphertext,
                                tag)
        except InvalidSignature:
            raise DecryptionFailed("one-time-pad message failed authentication") from None
        for key_id, start, length in segments:
            self.recv.mark(key_id, start, start + length)
        return _xor(ciphertext, pad[MAC_KEY_BYTES:]), message_secret(pad[:MAC_KEY_BYTES])

    def to_dict(self) -> dict:
        return {"send": self.send.to_dict(), "recv": self.recv.to_dict(), "seq": self.send_seq}

    @classmethod
    def from_dict(cls, data: dict) -> OtpPad:
        pad = cls()
        pad.send, pad.recv = _Pool.from_dict(data["send"]), _Pool.from_dict(data["recv"])
        pad.send_seq = data["seq"]
        return pad
