"""Sealing at rest: a key from the user's passphrase (Argon2id) and XSalsa20-Poly1305 boxes.

Every sealed blob starts with the name of what it is (``context``), checked on
opening, so a blob copied into another row or table is refused.

Telling a wrong passphrase from a damaged store. The store keeps, in its ``meta`` table, the
KDF parameters (``kdf``) and a check value (``check``: a known text sealed under the derived
key). A wrong passphrase and a damaged ``kdf`` or ``check`` look the same to the box: the
check does not open. So the store also keeps ``unlock_tag`` = SHA-256 over both records
(:func:`unlock_tag`), an *unkeyed* checksum that can be verified before any passphrase is
tried: when it does not match, the records were damaged and no passphrase can help; when it
matches and the check still does not open, the passphrase is wrong. The tag proves nothing
against an attacker (anyone can recompute it); authenticity still comes from the check
value's MAC under the passphrase key, exactly as before. It is a checksum against bit rot,
truncation and bad copies, which is what it is for. The parameters are also range-checked
before Argon2id runs, so a flipped bit cannot make the KDF ask for terabytes or run for hours.
Stores written before the tag existed get it on their next successful unlock (a new meta row,
no schema change: older qsecret ignores it); until then a failed check says that it may be
either cause.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from pathlib import Path

import nacl.exceptions
import nacl.pwhash
import nacl.secret
import nacl.utils

CHECK_PLAINTEXT = b"qsecret store v1: passphrase check"
# The sealed check value's exact length: nonce, MAC, label length byte, b"check", the text.
CHECK_SEALED_BYTES = (nacl.secret.SecretBox.NONCE_SIZE + nacl.secret.SecretBox.MACBYTES
                      + 1 + len(b"check") + len(CHECK_PLAINTEXT))
# What a store may ask of Argon2id: anything this code ever wrote, with room; outside it the
# record is damaged (never run a KDF a flipped bit asked for).
OPSLIMIT_RANGE = (nacl.pwhash.argon2id.OPSLIMIT_MIN, 4 * nacl.pwhash.argon2id.OPSLIMIT_SENSITIVE)
MEMLIMIT_RANGE = (nacl.pwhash.argon2id.MEMLIMIT_MIN, nacl.pwhash.argon2id.MEMLIMIT_SENSITIVE)


class StoreError(Exception):
    """Base class of every client.store error."""


class WrongPassphrase(StoreError):
    """The passphrase does not open this store."""


class CorruptStore(StoreError):
    """The store, or a part of it, is damaged: unreadable SQLite, or a sealed blob that does
    not open with the right key (bit rot, truncation, a bad copy, tampering).

    ``path`` names the file when known; the store never writes to a file it found damaged.
    """

    def __init__(self, message: str, path: Path | str | None = None) -> None:
        super().__init__(message)
        self.path = Path(path) if path is not None else None


class DamagedRow(CorruptStore):
    """One row's sealed blob does not open: only that row is lost (``table``, ``row``)."""

    def __init__(self, message: str, table: str, row: object,
                 path: Path | str | None = None) -> None:
        super().__init__(message, path)
        self.table, self.row = table, row


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

    def problem(self) -> str | None:
        """Why these parameters cannot be what this code wrote (damage), or None."""
        if not isinstance(self.salt, bytes) or len(self.salt) != nacl.pwhash.argon2id.SALTBYTES:
            return "the Argon2id salt has the wrong length"
        if not isinstance(self.opslimit, int) or not (
                OPSLIMIT_RANGE[0] <= self.opslimit <= OPSLIMIT_RANGE[1]):
            return f"the Argon2id opslimit {self.opslimit!r} is out of range"
        if not isinstance(self.memlimit, int) or not (
                MEMLIMIT_RANGE[0] <= self.memlimit <= MEMLIMIT_RANGE[1]):
            return f"the Argon2id memlimit {self.memlimit!r} is out of range"
        return None


def unlock_tag(kdf_record: bytes, check_record: bytes) -> bytes:
    """The unkeyed checksum over the KDF and check records (see the module docstring)."""
    digest = hashlib.sha256(b"qsecret/v1/store-unlock-records\x00")
    for record in (kdf_record, check_record):
        digest.update(len(record).to_bytes(4, "big") + record)
    return digest.digest()


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
        except (nacl.exceptions.CryptoError, TypeError, ValueError):
            raise CorruptStore(f"sealed {context} does not open: damaged or tampered") from None
        label = context.encode("utf-8")
        if plain[: 1 + len(label)] != bytes([len(label)]) + label:
            raise CorruptStore(f"sealed blob is not a {context} (moved between rows?)")
        return plain[1 + len(label) :]

    def name(self, text: str) -> str:
        """A keyed, stable row name for ``text`` (hides handles in the database)."""
        return hmac.new(self._name_key, text.encode("utf-8"), "sha256").hexdigest()
