"""SFrame (RFC 9605): each media frame sealed end to end, sans-I/O.

A frame on the wire is ``header || AEAD(key, nonce, plaintext, aad = header || metadata)``.
The header names the key (KID) and the frame counter (CTR); the nonce is the key's salt
XOR the counter, so a (key, counter) pair is never used twice for different frames. Keys
come from a *base key* per KID (RFC 9605 §4.4.2): ``sframe_secret = HKDF-Extract("",
base_key)``, then ``sframe_key`` and ``sframe_salt`` by HKDF-Expand with labels that bind
the KID and the cipher suite.

Only the AES-GCM suites are offered (4: AES_128_GCM_SHA256_128, 5: AES_256_GCM_SHA512_128;
calls use 5): the AES-CTR-HMAC suites exist for tags shorter than 16 bytes, which calls
here do not need. tests/fixtures/sframe-rfc9605-vectors.json holds the RFC's test vectors.

:class:`Sender` numbers and seals frames under one KID. :class:`Receiver` holds the keys of
the KIDs it accepts and refuses, with a reason it counts, a frame that is malformed, under
an unknown or retired KID, fails authentication, or repeats a counter already opened
(replay window). A refused frame changes nothing: only an authentic frame moves the window.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF, HKDFExpand

MAX_VALUE = (1 << 64) - 1  # KID and CTR are at most 64 bits
REPLAY_WINDOW = 128  # counters this far below the newest are still accepted once


@dataclass(frozen=True)
class CipherSuite:
    """An SFrame cipher suite (RFC 9605 §4.5): its HKDF hash and AEAD sizes."""

    id: int
    name: str
    hash: type[hashes.HashAlgorithm]
    key_bytes: int  # Nk
    nonce_bytes: int = 12  # Nn
    tag_bytes: int = 16  # Nt


AES_128_GCM_SHA256_128 = CipherSuite(4, "AES_128_GCM_SHA256_128", hashes.SHA256, 16)
AES_256_GCM_SHA512_128 = CipherSuite(5, "AES_256_GCM_SHA512_128", hashes.SHA512, 32)
SUITES = {suite.id: suite for suite in (AES_128_GCM_SHA256_128, AES_256_GCM_SHA512_128)}
CALL_SUITE = AES_256_GCM_SHA512_128


class SFrameError(Exception):
    """A frame refused; ``reason`` is one of REASONS (what the receiver counts)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


REASONS = ("malformed", "unknown_kid", "auth_failed", "replayed", "too_old")


# ---------------------------------------------------------------- header (§4.3)


def _min_bytes(value: int) -> int:
    return max(1, (value.bit_length() + 7) // 8)


def encode_header(kid: int, ctr: int) -> bytes:
    """The header for ``kid`` and ``ctr``: values 0-7 inline, larger ones in the fewest bytes."""
    if not (0 <= kid <= MAX_VALUE and 0 <= ctr <= MAX_VALUE):
        raise ValueError("KID and CTR must be 0 .. 2^64-1")
    config, tail = 0, b""
    if kid < 8:
        config |= kid << 4
    else:
        size = _min_bytes(kid)
        config |= 0x80 | (size - 1) << 4
        tail += kid.to_bytes(size, "big")
    if ctr < 8:
        config |= ctr
    else:
        size = _min_bytes(ctr)
        config |= 0x08 | (size - 1)
        tail += ctr.to_bytes(size, "big")
    return bytes([config]) + tail


def decode_header(data: bytes) -> tuple[int, int, int]:
    """``(kid, ctr, header length)`` from the start of ``data``; SFrameError if it is cut."""
    if not data:
        raise SFrameError("malformed", "empty SFrame")
    config = data[0]
    pos = 1
    if config & 0x80:
        size = (config >> 4 & 0x07) + 1
        kid = int.from_bytes(data[pos:pos + size], "big")
        pos += size
    else:
        kid = config >> 4 & 0x07
    if config & 0x08:
        size = (config & 0x07) + 1
        ctr = int.from_bytes(data[pos:pos + size], "big")
        pos += size
    else:
        ctr = config & 0x07
    if pos > len(data):
        raise SFrameError("malformed", f"SFrame header cut short ({len(data)} bytes)")
    return kid, ctr, pos


# ---------------------------------------------------------------- keys (§4.4.2)


@dataclass(frozen=True, repr=False)
class FrameKey:
    """``sframe_key`` and ``sframe_salt`` of one KID (no repr: it would print the key)."""

    suite: CipherSuite
    kid: int
    key: bytes
    salt: bytes


def derive_frame_key(suite: CipherSuite, base_key: bytes, kid: int) -> FrameKey:
    """The key and salt SFrame uses for ``kid`` under ``base_key``."""
    label_tail = kid.to_bytes(8, "big") + suite.id.to_bytes(2, "big")
    secret = HKDF.extract(suite.hash(), None, base_key)  # no salt: HashLen zero bytes
    key = HKDFExpand(suite.hash(), suite.key_bytes,
                     b"SFrame 1.0 Secret key " + label_tail).derive(secret)
    salt = HKDFExpand(suite.hash(), suite.nonce_bytes,
                      b"SFrame 1.0 Secret salt " + label_tail).derive(secret)
    return FrameKey(suite, kid, key, salt)


def _nonce(key: FrameKey, ctr: int) -> bytes:
    size = key.suite.nonce_bytes
    return (int.from_bytes(key.salt, "big") ^ ctr).to_bytes(size, "big")


# ---------------------------------------------------------------- one frame (§4.4.3-4)


def seal(key: FrameKey, ctr: int, plaintext: bytes, metadata: bytes = b"") -> bytes:
    """One SFrame ciphertext: header, then the AEAD of ``plaintext`` (header and metadata
    authenticated). The caller never reuses ``ctr`` under ``key``."""
    header = encode_header(key.kid, ctr)
    return header + AESGCM(key.key).encrypt(_nonce(key, ctr), plaintext, header + metadata)


def open_frame(key: FrameKey, data: bytes, metadata: bytes = b"") -> tuple[int, bytes]:
    """``(ctr, plaintext)`` of a frame sealed under ``key``; SFrameError when it is not."""
    kid, ctr, size = decode_header(data)
    if kid != key.kid:
        raise SFrameError("unknown_kid", f"frame for KID {kid}, key is for KID {key.kid}")
    if len(data) - size < key.suite.tag_bytes:
        raise SFrameError("malformed", "SFrame shorter than its authentication tag")
    try:
        plaintext = AESGCM(key.key).decrypt(_nonce(key, ctr), data[size:],
                                            data[:size] + metadata)
    except InvalidTag:
        raise SFrameError("auth_failed", f"frame {ctr} of KID {kid} failed authentication") \
            from None
    return ctr, plaintext


# ---------------------------------------------------------------- the two ends


class Sender:
    """Seals frames under one KID, counting from 0 (a new KID for a new base key)."""

    def __init__(self, base_key: bytes, kid: int, suite: CipherSuite = CALL_SUITE) -> None:
        self.key = derive_frame_key(suite, base_key, kid)
        self.ctr = 0

    @property
    def kid(self) -> int:
        return self.key.kid

    def protect(self, plaintext: bytes, metadata: bytes = b"") -> bytes:
        if self.ctr > MAX_VALUE:
            raise SFrameError("malformed", "counter exhausted: rekey before sending more")
        frame = seal(self.key, self.ctr, plaintext, metadata)
        self.ctr += 1
        return frame


class ReplayWindow:
    """Counters already opened under one key: the newest, and a bitmap of the ones below."""

    def __init__(self, size: int = REPLAY_WINDOW) -> None:
        self.size = size
        self.newest = -1
        self.seen = 0  # bit i set: newest - i was opened

    def check(self, ctr: int) -> None:
        """SFrameError if ``ctr`` was opened already or is too old to tell."""
        if ctr > self.newest:
            return
        behind = self.newest - ctr
        if behind >= self.size:
            raise SFrameError("too_old", f"frame {ctr} is older than the replay window")
        if self.seen >> behind & 1:
            raise SFrameError("replayed", f"frame {ctr} was already received")

    def mark(self, ctr: int) -> None:
        if ctr > self.newest:
            shift = ctr - self.newest
            self.seen = (self.seen << shift | 1) & ((1 << self.size) - 1)
            self.newest = ctr
        else:
            self.seen |= 1 << (self.newest - ctr)


class Receiver:
    """Opens frames under the KIDs it holds; counts what it refuses, by reason."""

    def __init__(self, suite: CipherSuite = CALL_SUITE) -> None:
        self.suite = suite
        self._keys: dict[int, tuple[FrameKey, ReplayWindow]] = {}
        self.refused: Counter[str] = Counter()
        self.opened = 0

    def add_key(self, base_key: bytes, kid: int) -> None:
        """Accept frames under ``kid`` (a KID is never keyed twice: that would reuse nonces)."""
        if kid in self._keys:
            raise ValueError(f"KID {kid} already has a key")
        self._keys[kid] = (derive_frame_key(self.suite, base_key, kid), ReplayWindow())

    def retire(self, kid: int) -> None:
        """Forget ``kid``'s key (after a rekey's grace): its frames are refused from now on."""
        self._keys.pop(kid, None)

    @property
    def kids(self) -> tuple[int, ...]:
        return tuple(self._keys)

    def unprotect(self, data: bytes, metadata: bytes = b"") -> tuple[int, int, bytes]:
        """``(kid, ctr, plaintext)``; SFrameError (counted in ``refused``) otherwise."""
        try:
            kid, ctr, _ = decode_header(data)
            held = self._keys.get(kid)
            if held is None:
                raise SFrameError("unknown_kid", f"no key for KID {kid}")
            key, window = held
            window.check(ctr)
            _, plaintext = open_frame(key, data, metadata)
        except SFrameError as exc:
            self.refused[exc.reason] += 1
            raise
        window.mark(ctr)  # only an authentic frame moves the window
        self.opened += 1
        return kid, ctr, plaintext


__all__ = [
    "AES_128_GCM_SHA256_128", "AES_256_GCM_SHA512_128", "CALL_SUITE", "REASONS", "SUITES",
    "CipherSuite", "FrameKey", "Receiver", "ReplayWindow", "SFrameError", "Sender",
    "decode_header", "derive_frame_key", "encode_header", "open_frame", "seal",
]
