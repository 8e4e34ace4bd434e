"""The one small interface every backend implements.

Keys travel as bytes. For ML-KEM the secret key is always the 64-byte FIPS 203
seed ``d || z``, whichever backend made it, so a key stored by one backend can be
used by the other. Other algorithms use their backend's native encoding.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass


@dataclass(frozen=True)
class KemSizes:
    public_key: int
    secret_key: int
    ciphertext: int
    shared_secret: int


@dataclass(frozen=True)
class SignatureSizes:
    public_key: int
    secret_key: int
    signature: int


@dataclass(frozen=True)
class KeyPair:
    public_key: bytes
    secret_key: bytes


class Kem(ABC):
    """A key-encapsulation mechanism of one backend."""

    name: str
    backend: str
    sizes: KemSizes

    @abstractmethod
    def generate_keypair(self) -> KeyPair:
        """Make a fresh key pair."""

    @abstractmethod
    def encapsulate(self, public_key: bytes) -> tuple[bytes, bytes]:
        """Return ``(ciphertext, shared_secret)`` for ``public_key``."""

    @abstractmethod
    def decapsulate(self, secret_key: bytes, ciphertext: bytes) -> bytes:
        """Return the shared secret of ``ciphertext`` (implicit rejection on tampering)."""

    def __repr__(self) -> str:
        return f"<Kem {self.name} via {self.backend}>"


class SignatureScheme(ABC):
    """A signature scheme of one backend."""

    name: str
    backend: str
    sizes: SignatureSizes

    @abstractmethod
    def generate_keypair(self) -> KeyPair:
        """Make a fresh key pair."""

    @abstractmethod
    def sign(self, secret_key: bytes, message: bytes) -> bytes:
        """Sign ``message``."""

    @abstractmethod
    def verify(self, public_key: bytes, message: bytes, signature: bytes) -> None:
        """Return if ``signature`` is valid, else raise :class:`InvalidSignature`."""

    def __repr__(self) -> str:
        return f"<SignatureScheme {self.name} via {self.backend}>"


def check_length(what: str, value: bytes, expected: int, error: type[Exception]) -> None:
    """Refuse a key or ciphertext of the wrong size with a message naming both sizes."""
    if len(value) != expected:
        raise error(f"{what} must be {expected} bytes, got {len(value)}")
