"""Verification of reconciled keys with a universal hash.

Bob sends h_k(key) for a fresh random key k; Alice compares with h_k(her key). The hash is
Poly1305 (from `cryptography`) used as a keyed polynomial universal hash: for two different
inputs of at most L bytes under a uniformly random key, a collision has probability at most
8 ceil(L/16) / 2^106 (Bernstein), below 2^-80 for any frame we handle. The 128 tag bits are
counted as leaked.
"""

from __future__ import annotations

import numpy as np
from cryptography.hazmat.primitives.poly1305 import Poly1305

HASH_KEY_BYTES = 32
TAG_BITS = 128


def key_hash(bits: np.ndarray, hash_key: bytes) -> bytes:
    """Universal hash of a bit string (its length is bound in)."""
    if len(hash_key) != HASH_KEY_BYTES:
        raise ValueError("verification hash key must be 32 bytes")
    mac = Poly1305(hash_key)
    mac.update(int(bits.size).to_bytes(8, "big"))
    mac.update(np.packbits(bits.astype(np.uint8)).tobytes())
    return mac.finalize()
