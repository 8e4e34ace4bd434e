"""Sealing at rest: a key from the user's passphrase (Argon2id) and XSalsa20-Poly1305 boxes.

Every sealed blob starts with the name of what it is (``context``), checked on
opening, so a blob copied into another row or table is refused.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

import nacl.exceptions
import nacl.pwhash
import nacl.secret
import nacl.utils

CHECK_PLAINTEXT = b"qsecret store v1: passphrase check"


class StoreError(Exception):
    """Base class of every client.store error."""


class WrongPassphrase(StoreError):
    """The passphrase does not open this store."""


class CorruptStore(StoreError):
    """A sealed blob does not open with the right key: damaged or tampered with."""


@dataclass(frozen=True)
class KdfParams:
    salt: bytes
    opslimit: int = nacl.pwhash.argon2id.OPSLIMIT_INTERACTIVE
    memlimit: int = nacl.pwhash.argon2id.MEMLIMIT_INTERACTIVE

    @classmethod
    def fresh(cls, opslimit: int | None = None, memlimit: int | None = None) -> KdfParams:
        return cls(
            nacl.utils.random(nacl.pwhash.argon2id.SALTBYTES),
            opslimit or nacl.pwhash.argon2id.OPSLIMIT_INTERACTIVE,
            memlimit or nacl.pwhash.argon2id.MEMLIMIT_INTERACTIVE,
        )


class Sealer:
    """Seals and opens blobs with the key derived from the passphrase."""

    def __init__(self, passphrase: str, params: KdfParams) -> None:
        if not passphrase:
            raise StoreError("the passphrase must not be empty")
        key = nacl.pwhash.argon2id.kdf(
            nacl.secret.SecretBox.KEY_SIZE, passphrase.encode("utf-8"), params.salt,
            opslimit=params.opslimit, memlimit=params.memlimit,
        )
        self._box = nacl.secret.SecretBox(key)
        # a separate key names rows (peer handles) without revealing them
        self._name_key = hashlib.sha256(b"qsecret/v1/store-names\x00" + key).digest()

    def seal(self, context: str, data: bytes) -> bytes:
        label = context.encode("utf-8")
        return bytes(self._box.encrypt(bytes([len(label)]) + label + data))

    def open(self, context: str, blob: bytes) -> bytes:
        try:
            plain = self._box.decrypt(blob)
        except nacl.exceptions.CryptoError:
            raise CorruptStore(f"sealed {context} does not open: damaged or tampered") from None
        label = context.encode("utf-8")
        if plain[: 1 + len(label)] != bytes([len(label)]) + label:
            raise CorruptStore(f"sealed blob is not a {context} (moved between rows?)")
        return plain[1 + len(label) :]

    def name(self, text: str) -> str:
        """A keyed, stable row name for ``text`` (hides handles in the database)."""
        return hmac.new(self._name_key, text.encode("utf-8"), "sha256").hexdigest()
