"""Long-term identity: hybrid signing keys (Ed25519 + ML-DSA-65) and an X25519 identity key.

The public identity is what peers pin; its fingerprint names it and the
safety number of two users lets them compare, by voice or QR code, that nobody
sits in between (order-independent, 60 digits in groups of 5, as in Signal).
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

from keysource import pq
from keysource.pq import hkdf_sha256, x25519_keypair, x25519_public

from .codec import Reader, Writer

if TYPE_CHECKING:  # segno is loaded when a QR code is made (not on every start)
    import segno
from .errors import BadSignature, MalformedMessage, UnsupportedVersion

IDENTITY_VERSION = 1
SAFETY_NUMBER_VERSION = 1
# Iterated hashing makes a brute-force search for a colliding identity costly
# (Signal uses the same count for its displayable fingerprints).
SAFETY_ITERATIONS = 5200
QR_PREFIX = b"QSN1"


@lru_cache(maxsize=1)
def _hybrid() -> pq.HybridSignature:
    return pq.hybrid_signature()


@dataclass(frozen=True)
class PublicIdentity:
    """What a peer knows of a user: the hybrid verification key and the X25519 identity key."""

    signing_key: bytes
    dh_key: bytes

    def encode(self) -> bytes:
        return Writer().u8(IDENTITY_VERSION).b16(self.signing_key).b8(self.dh_key).getvalue()

    @classmethod
    def decode(cls, data: bytes) -> PublicIdentity:
        reader = Reader(data, "public identity")
        version = reader.u8()
        if version != IDENTITY_VERSION:
            raise UnsupportedVersion(f"public identity version {version} is not supported")
        signing_key, dh_key = reader.b16(), reader.b8()
        reader.done()
        if len(signing_key) != _hybrid().public_key_size or len(dh_key) != 32:
            raise MalformedMessage("public identity has keys of the wrong size")
        return cls(signing_key, dh_key)

    @property
    def fingerprint(self) -> bytes:
        """SHA-256 of the encoding: a short, unique name of this identity."""
        return hashlib.sha256(self.encode()).digest()

    def fingerprint_hex(self) -> str:
        text = self.fingerprint.hex()
        return " ".join(text[i : i + 8] for i in range(0, 32, 8))

    def verify(self, message: bytes, signature: bytes) -> None:
        """Raise :class:`BadSignature` unless both halves of the hybrid signature verify."""
        try:
            _hybrid().verify(self.signing_key, message, signature)
        except (pq.InvalidSignature, pq.InvalidKey) as exc:
            raise BadSignature(str(exc)) from None


@dataclass(frozen=True)
class Identity:
    """A user's private identity; keep it in the sealed store only."""

    signing_secret: bytes
    signing_public: bytes
    dh_secret: bytes
    dh_public: bytes

    @classmethod
    def generate(cls) -> Identity:
        signing = _hybrid().generate_keypair()
        dh = x25519_keypair()
        return cls(signing.secret_key, signing.public_key, dh.secret_key, dh.public_key)

    @classmethod
    def from_seed(cls, seed: bytes) -> Identity:
        """Deterministic identity from a 32-byte seed (test vectors, reproducible demos)."""
        if len(seed) < 32:
            raise ValueError("identity seed must be at least 32 bytes")
        ed_seed = hkdf_sha256(seed, salt=None, info=b"qsecret/v1/identity/ed25519")
        mldsa_seed = hkdf_sha256(seed, salt=None, info=b"qsecret/v1/identity/ml-dsa-65")
        dh_secret = hkdf_sha256(seed, salt=None, info=b"qsecret/v1/identity/x25519")
        ed = pq.get_signature("Ed25519", "openssl").keypair_from_seed(ed_seed)  # type: ignore[attr-defined]
        mldsa = pq.get_signature("ML-DSA-65", "openssl").keypair_from_seed(mldsa_seed)  # type: ignore[attr-defined]
        return cls(
            ed.secret_key + mldsa.secret_key,
            ed.public_key + mldsa.public_key,
            dh_secret,
            x25519_public(dh_secret),
        )

    @property
    def public(self) -> PublicIdentity:
        return PublicIdentity(self.signing_public, self.dh_public)

    def sign(self, message: bytes) -> bytes:
        return _hybrid().sign(self.signing_secret, message)

    def encode_private(self) -> bytes:
        """Secret encoding for the sealed store."""
        return (
            Writer()
            .u8(IDENTITY_VERSION)
            .b16(self.signing_secret)
            .b16(self.signing_public)
            .b8(self.dh_secret)
            .b8(self.dh_public)
            .getvalue()
        )

    @classmethod
    def decode_private(cls, data: bytes) -> Identity:
        reader = Reader(data, "private identity")
        if reader.u8() != IDENTITY_VERSION:
            raise UnsupportedVersion("private identity version is not supported")
        identity = cls(reader.b16(), reader.b16(), reader.b8(), reader.b8())
        reader.done()
        return identity

    def __repr__(self) -> str:  # never print secrets
        return f"Identity(fingerprint={self.public.fingerprint_hex()!r})"


def _displayable_digits(handle: str, identity: PublicIdentity) -> str:
    """30 digits naming (handle, identity): iterated SHA-512, then 6 chunks of 5 digits."""
    key = identity.encode()
    digest = hashlib.sha512(
        SAFETY_NUMBER_VERSION.to_bytes(2, "big") + key + handle.encode("utf-8")
    ).digest()
    for _ in range(SAFETY_ITERATIONS):
        digest = hashlib.sha512(digest + key).digest()
    return "".join(
        f"{int.from_bytes(digest[i : i + 5], 'big') % 100000:05d}" for i in range(0, 30, 5)
    )


def safety_number(
    handle_a: str, identity_a: PublicIdentity, handle_b: str, identity_b: PublicIdentity
) -> str:
    """The pair's 60-digit safety number in groups of 5; the same whichever side computes it."""
    halves = sorted(
        (_displayable_digits(handle_a, identity_a), _displayable_digits(handle_b, identity_b))
    )
    digits = "".join(halves)
    return " ".join(digits[i : i + 5] for i in range(0, 60, 5))


def safety_qr_payload(
    handle_a: str, identity_a: PublicIdentity, handle_b: str, identity_b: PublicIdentity
) -> bytes:
    """What the QR code carries: a prefix and both (handle, fingerprint) digests, sorted."""
    parts = sorted(
        hashlib.sha256(h.encode("utf-8") + b"\x00" + i.fingerprint).digest()
        for h, i in ((handle_a, identity_a), (handle_b, identity_b))
    )
    return QR_PREFIX + parts[0] + parts[1]


def safety_qr(
    handle_a: str, identity_a: PublicIdentity, handle_b: str, identity_b: PublicIdentity
) -> segno.QRCode:
    import segno

    return segno.make(safety_qr_payload(handle_a, identity_a, handle_b, identity_b), error="m")


def qr_text(code: segno.QRCode, border: int = 2) -> str:
    """Render a QR code with half-block characters (two modules per character row)."""
    rows = [list(row) for row in code.matrix]
    size = len(rows)
    blank = [0] * (size + 2 * border)
    padded = [blank] * border + [[0] * border + r + [0] * border for r in rows] + [blank] * border
    if len(padded) % 2:
        padded.append(blank)
    chars = {(0, 0): "█", (1, 0): "▄", (0, 1): "▀", (1, 1): " "}  # dark modules print blank
    lines = []
    for top, bottom in zip(padded[0::2], padded[1::2], strict=True):
        lines.append("".join(chars[(bool(t), bool(b))] for t, b in zip(top, bottom, strict=True)))
    return "\n".join(lines)


def qr_svg(code: segno.QRCode, scale: int = 4) -> str:
    out = io.BytesIO()
    code.save(out, kind="svg", scale=scale, xmldecl=False)
    return out.getvalue().decode("utf-8")


def matches_scanned_qr(
    scanned: bytes,
    handle_a: str,
    identity_a: PublicIdentity,
    handle_b: str,
    identity_b: PublicIdentity,
) -> bool:
    """True when a scanned QR payload is the one both users should see."""
    expected = safety_qr_payload(handle_a, identity_a, handle_b, identity_b)
    return hashlib.sha256(scanned).digest() == hashlib.sha256(expected).digest()
