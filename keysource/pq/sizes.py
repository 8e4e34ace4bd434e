"""Published sizes of every algorithm qsecret can use, in bytes, with no backend loaded.

Limits that must hold for every backend (the relay's frame and prekey limits) are
computed from this table, not from whatever backend happens to be installed: a
relay without liboqs must still accept a bundle made with liboqs's largest KEM.
Sizes are those of the standards (FIPS 203 / FIPS 204 / RFC 8032 / RFC 7748) and
of the FrodoKEM and Classic McEliece submissions as liboqs 0.16 implements them
(FrodoKEM with its salt, as in the ISO draft); a liboqs test checks every row
against what liboqs reports. Secret keys are the expanded encodings (an ML-KEM
key pair is *stored* by keysource.pq as its 64-byte seed, see ``interface``).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class KemSize:
    public_key: int
    secret_key: int
    ciphertext: int
    shared_secret: int


@dataclass(frozen=True)
class SignatureSize:
    public_key: int
    secret_key: int
    signature: int


KEM_SIZES: dict[str, KemSize] = {
    "X25519": KemSize(32, 32, 32, 32),  # the DH half of every hybrid, as a KEM would size it
    "ML-KEM-512": KemSize(800, 1632, 768, 32),
    "ML-KEM-768": KemSize(1184, 2400, 1088, 32),
    "ML-KEM-1024": KemSize(1568, 3168, 1568, 32),
    "FrodoKEM-976-AES": KemSize(15632, 31296, 15792, 24),
    "Classic-McEliece-348864": KemSize(261120, 6492, 96, 32),
    "Classic-McEliece-460896": KemSize(524160, 13608, 156, 32),
}

SIGNATURE_SIZES: dict[str, SignatureSize] = {
    "Ed25519": SignatureSize(32, 32, 64),
    "ML-DSA-44": SignatureSize(1312, 2560, 2420),
    "ML-DSA-65": SignatureSize(1952, 4032, 3309),
    "ML-DSA-87": SignatureSize(2592, 4896, 4627),
}

# What a prekey bundle may carry (client/protocol/bundle.py keeps its own names in step;
# a test checks they are listed here).
PREKEY_KEMS = ("ML-KEM-768", "ML-KEM-1024")  # signed and one-time ML-KEM prekeys
CONSERVATIVE_KEMS = ("FrodoKEM-976-AES", "Classic-McEliece-348864", "Classic-McEliece-460896")
HYBRID_SIGNATURE_PARTS = ("Ed25519", "ML-DSA-65")  # keysource.pq.hybrid


def hybrid_signature_size() -> SignatureSize:
    """The hybrid identity's sizes: the two halves side by side."""
    parts = [SIGNATURE_SIZES[name] for name in HYBRID_SIGNATURE_PARTS]
    return SignatureSize(sum(p.public_key for p in parts), sum(p.secret_key for p in parts),
                         sum(p.signature for p in parts))


def largest_public_key(names: tuple[str, ...]) -> int:
    """The largest KEM public key among ``names`` (the worst case a limit must admit)."""
    return max(KEM_SIZES[name].public_key for name in names)


__all__ = [
    "CONSERVATIVE_KEMS",
    "HYBRID_SIGNATURE_PARTS",
    "KEM_SIZES",
    "PREKEY_KEMS",
    "SIGNATURE_SIZES",
    "KemSize",
    "SignatureSize",
    "hybrid_signature_size",
    "largest_public_key",
]
