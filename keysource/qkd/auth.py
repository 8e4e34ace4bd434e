"""Authentication of the classical channel: Wegman-Carter with one-time keys.

Each tagged message uses a fresh 32-byte one-time key (r, s) taken from a per-direction key
stream: tag = (poly_r(m) + s) mod 2^128, i.e. Poly1305 (from `cryptography`) used as an
almost-delta-universal hash whose output is one-time padded with s. This is information-
theoretically secure: a forgery succeeds with probability at most 8 ceil(L/16) / 2^106 per tag,
whatever Eve's computing power. Nothing is reused: every key byte authenticates one message.

Delayed authentication for Cascade: the hundreds of Cascade question/answer messages of a block
are not tagged one by one (that would cost more key than the block yields). Instead each is
appended (length-prefixed) to a per-direction transcript, and the next tagged message in that
direction carries a tag over transcript + message. Nothing derived from a block is output before
both directions' transcripts are authenticated, so a tampered Cascade message is detected and
the block discarded, exactly as for a tagged one.

Key use is counted. Pads are addressed by absolute index, carried in the message header, so a
receiver that missed or rejected a message re-synchronises (within a small window) instead of
reusing key; a rejected message still burns its pad. The streams are refilled from the link's
own output by amounts Alice announces in an authenticated message, so both ends stay identical.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from cryptography.hazmat.primitives import constant_time
from cryptography.hazmat.primitives.poly1305 import Poly1305

PAD_BYTES = 32
TAG_BYTES = 16
RESYNC_WINDOW = 8


class AuthError(Exception):
    """A classical message failed authentication (tampered, replayed or out of window)."""


class AuthKeyExhausted(Exception):
    """Not enough authentication key left to run another block; re-provision the link."""


@dataclass
class KeyStream:
    """One direction's authentication key, consumed 32 bytes per tagged message."""

    data: bytearray
    base_index: int = 0  # pad index of data[0]
    next_index: int = 0
    consumed_bytes: int = 0
    added_bytes: int = 0

    def available_pads(self) -> int:
        return len(self.data) // PAD_BYTES - (self.next_index - self.base_index)

    def pad(self, index: int) -> bytes:
        offset = (index - self.base_index) * PAD_BYTES
        if index < self.base_index or offset + PAD_BYTES > len(self.data):
            raise AuthKeyExhausted("authentication key exhausted")
        return bytes(self.data[offset: offset + PAD_BYTES])

    def burn_through(self, index: int) -> None:
        """Mark pads up to and including ``index`` as used; forget their bytes."""
        if index + 1 > self.next_index:
            self.consumed_bytes += (index + 1 - self.next_index) * PAD_BYTES
            self.next_index = index + 1
        drop = self.next_index - self.base_index
        if drop > 64:
            # wipe and drop used key material
            del self.data[: drop * PAD_BYTES]
            self.base_index = self.next_index

    def refill(self, key: bytes) -> None:
        self.data.extend(key)
        self.added_bytes += len(key)

    def to_bytes(self) -> bytes:
        unused = self.data[(self.next_index - self.base_index) * PAD_BYTES:]
        return self.next_index.to_bytes(8, "big") + bytes(unused)

    @classmethod
    def from_bytes(cls, raw: bytes) -> KeyStream:
        index = int.from_bytes(raw[:8], "big")
        return cls(bytearray(raw[8:]), base_index=index, next_index=index)


def split_psk(psk: bytes) -> tuple[bytes, bytes]:
    """The pre-shared secret's halves: Alice->Bob key, Bob->Alice key."""
    if len(psk) < 4 * PAD_BYTES or len(psk) % 2:
        raise ValueError("pre-shared key must be an even number of bytes, at least 128")
    half = len(psk) // 2
    return psk[:half], psk[half:]


def make_psk(size: int = 16384) -> bytes:
    """Fresh initial authentication secret for a new link (share it with the peer securely)."""
    return os.urandom(size)


@dataclass
class ChannelAuth:
    """One endpoint's view: the stream it tags with, the stream it verifies with, transcripts."""

    send: KeyStream
    recv: KeyStream
    _send_deferred: list[bytes] = field(default_factory=list)
    _recv_deferred: list[bytes] = field(default_factory=list)

    @classmethod
    def from_psk(cls, psk: bytes, role: str) -> ChannelAuth:
        a_to_b, b_to_a = split_psk(psk)
        if role == "alice":
            return cls(KeyStream(bytearray(a_to_b)), KeyStream(bytearray(b_to_a)))
        return cls(KeyStream(bytearray(b_to_a)), KeyStream(bytearray(a_to_b)))

    @property
    def used_bits(self) -> int:
        return 8 * (self.send.consumed_bytes + self.recv.consumed_bytes)

    def reset_transcripts(self) -> None:
        self._send_deferred.clear()
        self._recv_deferred.clear()

    @staticmethod
    def _mac(key: bytes, deferred: list[bytes], message: bytes) -> bytes:
        mac = Poly1305(key)
        for chunk in deferred:
            mac.update(len(chunk).to_bytes(8, "big"))
            mac.update(chunk)
        mac.update(len(message).to_bytes(8, "big"))
        mac.update(message)
        return mac.finalize()

    def defer_send(self, message: bytes) -> None:
        self._send_deferred.append(message)

    def defer_recv(self, message: bytes) -> None:
        self._recv_deferred.append(message)

    def next_send_index(self) -> int:
        return self.send.next_index

    def tag(self, index: int, message: bytes) -> bytes:
        """Tag an outgoing message (covering the deferred transcript) with pad ``index``."""
        if index != self.send.next_index:
            raise ValueError("pads must be used in order")
        key = self.send.pad(index)
        self.send.burn_through(index)
        tag = self._mac(key, self._send_deferred, message)
        self._send_deferred.clear()
        return tag

    def skip(self, index: int) -> None:
        """Mark the pad of an ignored (stale) message as spent, if it is within the window."""
        if self.recv.next_index <= index <= self.recv.next_index + RESYNC_WINDOW:
            self._recv_deferred = []
            self.recv.burn_through(index)

    def verify(self, index: int, message: bytes, tag: bytes) -> None:
        """Check an incoming tag; raises AuthError. The pad is burnt either way."""
        deferred = self._recv_deferred
        self._recv_deferred = []
        if index < self.recv.next_index:
            raise AuthError("authentication failed: pad index already used (replay?)")
        if index > self.recv.next_index + RESYNC_WINDOW:
            raise AuthError("authentication failed: pad index out of window")
        key = self.recv.pad(index)
        self.recv.burn_through(index)
        expected = self._mac(key, deferred, message)
        if len(tag) != TAG_BYTES or not constant_time.bytes_eq(expected, tag):
            raise AuthError("authentication failed: tag mismatch")
