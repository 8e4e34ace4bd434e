"""The combiner: one KDF over QKD, post-quantum and ECDH secrets, bound to a transcript.

    K = HKDF-SHA-512(salt = SHA-512(transcript),
                     ikm  = presence || lp(k_qkd) || lp(ss_pq1) || lp(ss_pq2) || lp(ss_ecdh),
                     info = "qsecret/v1/" + purpose, L)

``lp(x)`` is a 2-byte big-endian length then ``x``; an absent input is length 0.
``presence`` is one byte with a bit per slot (qkd=1, pq1=2, pq2=4, ecdh=8), so an
absent input never collides with a present-but-empty one. An attacker must know
every present secret to learn K. Which inputs were present is returned so the
session can record it and show it (``QKD+ML-KEM-768+X25519``).
"""

from __future__ import annotations

import enum
import hashlib
import struct
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

INFO_PREFIX = b"qsecret/v1/"
MAX_INPUT_BYTES = 0xFFFF
# HKDF-SHA-512 can expand to at most 255 hash lengths.
MAX_OUTPUT_BYTES = 255 * 64


class MixError(Exception):
    """The inputs cannot be combined (nothing present, oversized, bad purpose)."""


class QkdRequired(MixError):
    """Policy ``require`` and no QKD key material: refuse rather than degrade."""


class QkdPolicy(enum.Enum):
    """What to do when QKD key material is missing."""

    REQUIRE = "require"  # refuse (or wait), with a clear message
    PREFER = "prefer"  # continue on PQ + ECDH, flagged degraded, re-mix when keys return

    @classmethod
    def parse(cls, value: str) -> QkdPolicy:
        try:
            return cls(value)
        except ValueError:
            raise MixError(f"unknown QKD policy {value!r}: use 'require' or 'prefer'") from None


@dataclass(frozen=True)
class MixInputs:
    """The secrets to combine; ``None`` means the source was absent."""

    qkd: bytes | None = None
    pq: bytes | None = None
    pq2: bytes | None = None
    ecdh: bytes | None = None
    pq_alg: str = "ML-KEM-768"
    pq2_alg: str | None = None
    ecdh_alg: str = "X25519"

    def slots(self) -> tuple[tuple[str, bytes | None], ...]:
        return (
            ("QKD", self.qkd),
            (self.pq_alg, self.pq),
            (self.pq2_alg or "PQ2", self.pq2),
            (self.ecdh_alg, self.ecdh),
        )


@dataclass(frozen=True)
class MixedKey:
    key: bytes
    sources: tuple[str, ...]
    degraded: bool

    @property
    def label(self) -> str:
        """Human label of what fed this key, e.g. ``QKD+ML-KEM-768+X25519``."""
        text = "+".join(self.sources)
        return f"{text} (degraded: no QKD)" if self.degraded else text

    def __repr__(self) -> str:  # never print key material
        return f"MixedKey(sources={self.sources!r}, degraded={self.degraded})"


def length_prefixed(value: bytes | None) -> bytes:
    """``lp(x)``: 2-byte big-endian length then ``x``; ``None`` is length 0."""
    if value is None:
        return b"\x00\x00"
    if len(value) > MAX_INPUT_BYTES:
        raise MixError(f"combiner input of {len(value)} bytes exceeds {MAX_INPUT_BYTES}")
    return struct.pack(">H", len(value)) + value


def mix(
    inputs: MixInputs,
    *,
    transcript: bytes,
    purpose: str,
    length: int = 32,
    policy: QkdPolicy = QkdPolicy.PREFER,
) -> MixedKey:
    """Combine the present secrets into ``length`` bytes bound to ``transcript`` and ``purpose``."""
    if not purpose or not purpose.isascii():
        raise MixError("purpose must be a non-empty ASCII string")
    if not 1 <= length <= MAX_OUTPUT_BYTES:
        raise MixError(f"output length must be 1..{MAX_OUTPUT_BYTES} bytes, got {length}")
    if inputs.qkd is None and policy is QkdPolicy.REQUIRE:
        raise QkdRequired(
            "no QKD key material is available and the QKD policy is 'require': "
            "refusing to derive a key without it (wait for the QKD link, or use policy 'prefer')"
        )
    slots = inputs.slots()
    if all(value is None for _, value in slots):
        raise MixError("no key material to combine: every source is absent")
    presence = sum(1 << i for i, (_, value) in enumerate(slots) if value is not None)
    ikm = bytes([presence]) + b"".join(length_prefixed(value) for _, value in slots)
    salt = hashlib.sha512(transcript).digest()
    info = INFO_PREFIX + purpose.encode("ascii")
    key = HKDF(hashes.SHA512(), length, salt, info).derive(ikm)
    sources = tuple(name for name, value in slots if value is not None)
    return MixedKey(key=key, sources=sources, degraded=inputs.qkd is None)


class Transcript:
    """An append-only, unambiguous encoding of everything that went into a key.

    Each field is ``label || lp32(value)`` so no two different field sequences
    encode the same bytes. Add every public key, KEM ciphertext and QKD key_ID.
    """

    def __init__(self, context: str) -> None:
        self._parts: list[bytes] = []
        self.add("context", context.encode())

    def add(self, label: str, value: bytes) -> Transcript:
        name = label.encode("ascii")
        if not 0 < len(name) < 256:
            raise MixError("transcript labels are 1..255 ASCII bytes")
        self._parts.append(bytes([len(name)]) + name + struct.pack(">I", len(value)) + value)
        return self

    def to_bytes(self) -> bytes:
        return b"".join(self._parts)
