"""Classical primitives through pyca/cryptography: X25519, AEADs and HKDF."""

from __future__ import annotations

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .errors import InvalidKey
from .interface import KeyPair, check_length
from .recent import MADE

X25519_KEY_BYTES = 32


def x25519_keypair() -> KeyPair:
    private = x25519.X25519PrivateKey.generate()
    return KeyPair(private.public_key().public_bytes_raw(), private.private_bytes_raw())


def x25519_public(secret_key: bytes) -> bytes:
    check_length("X25519 secret key", secret_key, X25519_KEY_BYTES, InvalidKey)
    return x25519.X25519PrivateKey.from_private_bytes(secret_key).public_key().public_bytes_raw()


def x25519_shared(secret_key: bytes, peer_public_key: bytes) -> bytes:
    """X25519 agreement; refuses low-order peer keys (all-zero output)."""
    check_length("X25519 secret key", secret_key, X25519_KEY_BYTES, InvalidKey)
    private = MADE.take(x25519.X25519PrivateKey, bytes(secret_key))
    if private is None:
        private = x25519.X25519PrivateKey.from_private_bytes(secret_key)
    return _exchange(private, peer_public_key)


def x25519_ephemeral(peer_public_key: bytes) -> tuple[KeyPair, bytes]:
    """A fresh key pair and its agreement with ``peer_public_key`` (refused as in
    :func:`x25519_shared`).

    The same as ``x25519_keypair()`` then ``x25519_shared(pair.secret_key, peer)``, one
    scalar multiplication cheaper: loading a secret from bytes derives its public key
    again, and a ratchet turn makes a key only to use it at once. The key object is kept
    a while (:mod:`keysource.pq.recent`): the peer's next turn, which uses the secret
    again, then costs no reload either.
    """
    private = x25519.X25519PrivateKey.generate()
    shared = _exchange(private, peer_public_key)
    secret = private.private_bytes_raw()
    MADE.remember(x25519.X25519PrivateKey, secret, private)
    return KeyPair(private.public_key().public_bytes_raw(), secret), shared


def _exchange(private: x25519.X25519PrivateKey, peer_public_key: bytes) -> bytes:
    check_length("X25519 public key", peer_public_key, X25519_KEY_BYTES, InvalidKey)
    try:
        return private.exchange(x25519.X25519PublicKey.from_public_bytes(peer_public_key))
    except ValueError as exc:
        raise InvalidKey(f"X25519 public key rejected: {exc}") from None


def hkdf_sha256(ikm: bytes, *, salt: bytes | None, info: bytes, length: int = 32) -> bytes:
    return HKDF(hashes.SHA256(), length, salt, info).derive(ikm)


def hkdf_sha512(ikm: bytes, *, salt: bytes | None, info: bytes, length: int = 64) -> bytes:
    return HKDF(hashes.SHA512(), length, salt, info).derive(ikm)


def aes256gcm(key: bytes) -> AESGCM:
    check_length("AES-256-GCM key", key, 32, InvalidKey)
    return AESGCM(key)


def chacha20poly1305(key: bytes) -> ChaCha20Poly1305:
    check_length("ChaCha20-Poly1305 key", key, 32, InvalidKey)
    return ChaCha20Poly1305(key)
